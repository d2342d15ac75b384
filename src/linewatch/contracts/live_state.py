"""Live state in Redis: written by the detector workers, read by the dashboard and ``linewatch up``.

Key layout (``P`` = prefix, ``linewatch`` by default; minutes are Unix time // 60 of ``processed_at``, the
worker's clock, never the camera's: a camera whose clock is off neither freezes nor hides its frames):

=====================================  ======  ==========================================================
key                                    type    content, bound
=====================================  ======  ==========================================================
``P:cameras:seen``                     zset    camera_id, scored by last processing time  entries > 1 day trimmed
``P:camera:<camera_id>``               hash    ``line_id``, ``skew_ms``, ``skewed``      TTL 1 day
``P:latest:<camera_id>``               hash    ``result`` (JSON), ``overlay`` (JPEG)    TTL 1 day
``P:counts:camera:<camera_id>:<min>``  hash    ``inspected``, ``defects``               TTL counts_ttl_s
``P:counts:line:<line_id>:<min>``      hash    ``inspected``, ``defects``               TTL counts_ttl_s
``P:dlq:<min>``                        hash    reason -> dead-lettered frames           TTL counts_ttl_s
``P:recent``                           stream  field ``result`` (JSON)                  MAXLEN ~ cap
``P:workers``                          hash    worker_id -> heartbeat JSON              expire: WORKER_EXPIRE_S
``P:drift``                            hash    camera_id -> drift state JSON            entries > 1 day removed
``P:live:through``                     string  end of the last rebuild of counts (Unix s) (one)
``P:live:lock``                        string  the worker rebuilding counts now         TTL a few seconds
=====================================  ======  ==========================================================

SQL is the record and Redis a view of it: counts of minutes that closed more than ``settle_s`` ago are recounted from
SQL (:meth:`LiveStateWriter.overwrite_counts`; linewatch.detector.stream.live_rebuild says which minutes and when), so
what Redis lost (a restart without a snapshot, an outage, evicted keys) is counted again; the minutes since are
counted as results are stored. Every per-camera key expires a day after the camera's last frame, by the worker's
clock, so a camera that left (or whose clock runs a year ahead) holds nothing for good. ``skew_ms`` is the newest
frame's camera clock skew and ``skewed`` counts the frames whose skew was beyond the tolerance
(:mod:`linewatch.contracts.clock`).

Redeliveries (at-least-once) are not counted twice: the workers record only the results whose SQL row their
own insert created (``INSERT ... ON CONFLICT DO NOTHING RETURNING``), so the record decides what is new,
whatever Redis has kept or evicted. One Lua script per result updates counts, latest and the stream at once.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis

from .clock import DEFAULT_CLOCK, ClockRule
from .messages import InspectionResult
from .settings import RedisSettings

PREFIX = "linewatch"
LATEST_TTL_S = 24 * 3600
WORKER_STALE_S = 30.0  # a heartbeat older than this shows the worker as silent
# A heartbeat older than this is a dead worker's (killed before it could remove its entry): readers skip it
# and every heartbeat write removes such entries, since a hash field has no TTL of its own.
WORKER_EXPIRE_S = 300.0

_RECORD = """
local defect = tonumber(ARGV[1])
local ttl = tonumber(ARGV[6])
for i = 1, 2 do
  redis.call('HINCRBY', KEYS[i], 'inspected', 1)
  redis.call('HINCRBY', KEYS[i], 'defects', defect)
  redis.call('EXPIRE', KEYS[i], ttl)
end
redis.call('HSET', KEYS[3], 'result', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[3], 'overlay', ARGV[3]) else redis.call('HDEL', KEYS[3], 'overlay') end
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[7]))
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', 'result', ARGV[2])
local now = tonumber(ARGV[9])
redis.call('ZADD', KEYS[5], now, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - tonumber(ARGV[7]))
redis.call('HSET', KEYS[6], 'line_id', ARGV[5], 'skew_ms', ARGV[10])
redis.call('HINCRBY', KEYS[6], 'skewed', tonumber(ARGV[11]))
redis.call('EXPIRE', KEYS[6], tonumber(ARGV[7]))
return 1
"""


def minute_of(moment: dt.datetime) -> int:
    return int(moment.timestamp() // 60)


def connect(url: str, password: str | None = None) -> redis.Redis:
    """A Redis client with timeouts (a stalled Redis raises instead of hanging a worker or a page)."""
    return redis.Redis.from_url(url, password=password, socket_timeout=5, socket_connect_timeout=5,
                                health_check_interval=30)


def connect_settings(settings: RedisSettings) -> redis.Redis:
    """:func:`connect` with the URL and password (from a secret file, say) of the settings."""
    return connect(settings.url, settings.password.get_secret_value() if settings.password else None)


def eviction_warning(client: redis.Redis) -> str | None:
    """A warning when Redis may evict live-state keys under memory pressure, else None.

    Any policy but ``noeviction`` may drop keys linewatch never expires (worker heartbeats, the camera index,
    the rebuild mark) or counts before their minute is recounted (``volatile-*`` evicts keys with a TTL: every
    count). Counts are made whole from the SQL record (``settle_s`` later) either way, but in between the live
    view can run short; with ``noeviction`` a full Redis refuses writes instead, which the workers wait out
    and then rebuild. Read from ``INFO memory`` (``CONFIG GET`` is disabled on many managed Redis services).

    Raises:
        redis.RedisError: Redis unavailable.
    """
    info = client.info("memory")
    policy, limit = str(info.get("maxmemory_policy", "noeviction")), int(info.get("maxmemory", 0) or 0)
    if policy == "noeviction" or limit == 0:
        return None
    return (f"Redis evicts keys when full (maxmemory-policy {policy}, maxmemory {limit / 2**20:.0f} MiB): live "
            "counts, worker heartbeats and the camera list may vanish until the workers recount them from the "
            "SQL record; set maxmemory-policy noeviction for the live state")


class PartlyRecorded(redis.RedisError):
    """:meth:`LiveStateWriter.record` wrote only some results; ``done``: their indices."""

    def __init__(self, done: set[int], cause: BaseException):
        super().__init__(f"{len(done)} results recorded, the others refused: {cause}")
        self.done = done


class LiveStateWriter:
    """The workers' side. All methods raise ``redis.RedisError`` when Redis is unavailable (callers retry)."""

    def __init__(self, client: redis.Redis, prefix: str = PREFIX, counts_ttl_s: int = 8 * 24 * 3600,
                 recent_cap: int = 10_000, clock: ClockRule = DEFAULT_CLOCK):
        self.r = client
        self.clock = clock
        self.p = prefix
        self.counts_ttl_s = counts_ttl_s
        self.recent_cap = recent_cap
        self._record = client.register_script(_RECORD)

    def record(self, results: Sequence[InspectionResult], overlays: dict[int, bytes] | None = None) -> int:
        """Count new inspection results in the minute they were processed, make each the camera's latest and
        append it to the recent stream; returns how many were recorded.

        Args:
            results: results whose SQL rows were just created (the caller de-duplicates redeliveries: every
                result given here is counted).
            overlays: heatmap overlay JPEG bytes by index into ``results``.
        Raises:
            PartlyRecorded: Redis took some results and refused the others (out of memory, say); ``done`` holds
                the indices it took (each result is one script, so none is half recorded).
            redis.RedisError: Redis unavailable or refusing every result.
        """
        overlays = overlays or {}
        pipe = self.r.pipeline(transaction=False)
        for i, res in enumerate(results):
            f = res.frame
            minute = minute_of(res.processed_at)
            keys = [
                f"{self.p}:counts:camera:{f.camera_id}:{minute}",
                f"{self.p}:counts:line:{f.line_id}:{minute}",
                f"{self.p}:latest:{f.camera_id}",
                f"{self.p}:recent",
                f"{self.p}:cameras:seen",
                f"{self.p}:camera:{f.camera_id}",
            ]
            skew = res.latency.clock_skew_ms
            args = [int(res.verdict == "defect"), res.to_json(), overlays.get(i, b""), f.camera_id, f.line_id,
                    self.counts_ttl_s, LATEST_TTL_S, self.recent_cap, res.processed_at.timestamp(), repr(skew),
                    int(not self.clock.trusted(skew))]
            self._record(keys=keys, args=args, client=pipe)
        replies = pipe.execute(raise_on_error=False)
        failed = [x for x in replies if isinstance(x, Exception)]
        if failed and len(failed) < len(replies):
            raise PartlyRecorded({i for i, x in enumerate(replies) if not isinstance(x, Exception)}, failed[0])
        if failed:
            raise failed[0]
        return len(replies)

    def dead_lettered(self, reasons: Iterable[str], moment: dt.datetime | None = None) -> None:
        """Count dead-lettered frames by reason in the current minute."""
        reasons = list(reasons)
        if not reasons:
            return
        key = f"{self.p}:dlq:{minute_of(moment or dt.datetime.now(dt.UTC))}"
        pipe = self.r.pipeline(transaction=False)
        for reason in reasons:
            pipe.hincrby(key, reason, 1)
        pipe.expire(key, self.counts_ttl_s)
        pipe.execute()

    def overwrite_counts(self, counts: dict[tuple[str, str, int], tuple[int, int]]) -> None:
        """Set per-minute counts to exact values: ``(kind, ident, minute) -> (inspected, defects)``, ``kind``
        ``camera`` or ``line`` (a rebuild from the SQL record; a minute absent from ``counts`` is left alone).

        Raises:
            redis.RedisError: Redis unavailable.
        """
        pipe = self.r.pipeline(transaction=False)
        for (kind, ident, minute), (inspected, defects) in counts.items():
            key = f"{self.p}:counts:{kind}:{ident}:{minute}"
            pipe.hset(key, mapping={"inspected": inspected, "defects": defects})
            pipe.expire(key, self.counts_ttl_s)
        pipe.execute()

    def rebuilt_through(self) -> dt.datetime | None:
        """The end of the last rebuild of the counts that Redis took, or None when Redis has none (it restarted
        empty, or was flushed): then every count it holds may be short."""
        value = self.r.get(f"{self.p}:live:through")
        return dt.datetime.fromtimestamp(float(value), dt.UTC) if value is not None else None

    def mark_rebuilt_through(self, moment: dt.datetime) -> None:
        self.r.set(f"{self.p}:live:through", repr(moment.timestamp()))

    def try_lock(self, owner: str, ttl_s: float) -> bool:
        """Take the rebuild lock for ``ttl_s`` seconds (one worker rebuilds at a time); True when taken."""
        return bool(self.r.set(f"{self.p}:live:lock", owner, nx=True, px=int(ttl_s * 1000)))

    def heartbeat(self, worker_id: str, info: dict) -> None:
        """Publish a worker's heartbeat (model version, frames/s, ...); ``last_seen`` is added. Entries of
        other workers silent for more than ``WORKER_EXPIRE_S`` are removed."""
        now = time.time()
        key = f"{self.p}:workers"
        self.r.hset(key, worker_id, json.dumps({**info, "worker_id": worker_id, "last_seen": now}))
        if expired := [k for k, raw in self.r.hgetall(key).items()
                       if now - _time_in(raw, "last_seen") > WORKER_EXPIRE_S]:
            self.r.hdel(key, *expired)

    def drift(self, states: dict[str, dict]) -> None:
        """Set cameras' lighting / exposure drift states (camera_id -> ``DriftMonitor.state`` of
        linewatch.detector.drift, with ``at`` in Unix s); entries not updated for a day are removed."""
        if states:
            key, now = f"{self.p}:drift", time.time()
            self.r.hset(key, mapping={c: json.dumps(state) for c, state in states.items()})
            if old := [c for c, raw in self.r.hgetall(key).items() if now - _time_in(raw, "at") > LATEST_TTL_S]:
                self.r.hdel(key, *old)

    def worker_gone(self, worker_id: str) -> None:
        self.r.hdel(f"{self.p}:workers", worker_id)


@dataclass
class Counts:
    """Inspected frames and defects in a window."""

    inspected: int = 0
    defects: int = 0

    @property
    def defect_rate(self) -> float | None:
        return self.defects / self.inspected if self.inspected else None


class LiveStateReader:
    """The dashboard's side. Raises ``redis.RedisError`` when Redis is unavailable."""

    def __init__(self, client: redis.Redis, prefix: str = PREFIX):
        self.r = client
        self.p = prefix

    def cameras(self) -> dict[str, str]:
        """camera_id -> line_id of every camera that reported in the last day."""
        return {c: info["line_id"] for c, info in self.camera_states().items()}

    def camera_states(self) -> dict[str, dict]:
        """camera_id -> ``line_id``, ``seen`` (last processing time, Unix s), ``skew_ms`` (the newest frame's
        camera clock skew, ms) and ``skewed`` (frames whose skew was beyond the tolerance) of every camera that
        reported in the last day."""
        since = time.time() - LATEST_TTL_S
        seen = self.r.zrangebyscore(f"{self.p}:cameras:seen", since, "+inf", withscores=True)
        pipe = self.r.pipeline(transaction=False)
        for camera, _ in seen:
            pipe.hgetall(f"{self.p}:camera:{camera.decode()}")
        out = {}
        for (camera, at), h in zip(seen, pipe.execute(), strict=True):
            if h:  # expired between the two reads: gone
                out[camera.decode()] = {"line_id": h[b"line_id"].decode(), "seen": at,
                                        "skew_ms": float(h.get(b"skew_ms", 0)), "skewed": int(h.get(b"skewed", 0))}
        return out

    def counts_per_minute(self, kind: str, ident: str, start: dt.datetime, end: dt.datetime) -> dict[int, Counts]:
        """Per-minute counts of a ``camera`` or ``line`` between ``start`` and ``end`` (minute -> Counts)."""
        if kind not in ("camera", "line"):
            raise ValueError("kind must be 'camera' or 'line'")
        minutes = list(range(minute_of(start), minute_of(end) + 1))
        pipe = self.r.pipeline(transaction=False)
        for m in minutes:
            pipe.hgetall(f"{self.p}:counts:{kind}:{ident}:{m}")
        out = {}
        for m, h in zip(minutes, pipe.execute(), strict=True):
            if h:
                out[m] = Counts(int(h.get(b"inspected", 0)), int(h.get(b"defects", 0)))
        return out

    def totals(self, kind: str, ident: str, start: dt.datetime, end: dt.datetime) -> Counts:
        """Counts of a camera or line summed over a window."""
        total = Counts()
        for c in self.counts_per_minute(kind, ident, start, end).values():
            total.inspected += c.inspected
            total.defects += c.defects
        return total

    def latest(self, camera_id: str, overlay: bool = True) -> tuple[InspectionResult | None, bytes | None]:
        """The newest result of a camera and its heatmap overlay (JPEG bytes; None unless ``overlay``), if any."""
        values = self.r.hmget(f"{self.p}:latest:{camera_id}", ["result", "overlay"] if overlay else ["result"])
        result = None if values[0] is None else InspectionResult.from_json(values[0])
        return result, values[1] if overlay and result is not None else None

    def recent(self, count: int = 100) -> list[InspectionResult]:
        """The newest ``count`` results, newest first."""
        return [InspectionResult.from_json(fields[b"result"])
                for _, fields in self.r.xrevrange(f"{self.p}:recent", count=count)]

    def recent_since(self, seconds: float, cap: int = 20_000) -> list[InspectionResult]:
        """Results added to the recent stream in the last ``seconds`` (Redis's clock), newest first, at most ``cap``."""
        now_s, now_us = self.r.time()
        since_ms = int((now_s + now_us / 1e6 - seconds) * 1000)
        return [InspectionResult.from_json(fields[b"result"])
                for _, fields in self.r.xrevrange(f"{self.p}:recent", "+", str(since_ms), count=cap)]

    def dead_letters(self, start: dt.datetime, end: dt.datetime) -> dict[str, int]:
        """Dead-lettered frames by reason between ``start`` and ``end``."""
        pipe = self.r.pipeline(transaction=False)
        for m in range(minute_of(start), minute_of(end) + 1):
            pipe.hgetall(f"{self.p}:dlq:{m}")
        out: dict[str, int] = {}
        for h in pipe.execute():
            for k, v in h.items():
                out[k.decode()] = out.get(k.decode(), 0) + int(v)
        return out

    def drift(self) -> dict[str, dict]:
        """camera_id -> drift state (:meth:`LiveStateWriter.drift`) of the cameras whose state is under a day old."""
        now = time.time()
        return {c.decode(): json.loads(raw) for c, raw in self.r.hgetall(f"{self.p}:drift").items()
                if now - _time_in(raw, "at") <= LATEST_TTL_S}

    def workers(self) -> list[dict]:
        """Heartbeats of the workers seen in the last ``WORKER_EXPIRE_S``, each with ``alive`` (seen in the
        last ``WORKER_STALE_S``)."""
        now = time.time()
        out = []
        for raw in self.r.hvals(f"{self.p}:workers"):
            if now - _time_in(raw, "last_seen") > WORKER_EXPIRE_S:
                continue
            info = json.loads(raw)
            info["alive"] = now - float(info.get("last_seen", 0)) < WORKER_STALE_S
            out.append(info)
        return sorted(out, key=lambda w: w["worker_id"])


def _time_in(raw: bytes, name: str) -> float:
    """The time ``name`` (Unix s) in a JSON entry; 0 for an entry without one (it expires)."""
    try:
        return float(json.loads(raw).get(name, 0))
    except (ValueError, AttributeError, TypeError):
        return 0.0
