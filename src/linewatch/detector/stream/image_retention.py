"""Image retention: kept frames are removed by age and when the disk runs short, never those an operator
labelled or a model trained on; a disk that stays full raises the alarm.

Which frames go, oldest processing time first:

* by age: kept longer than ``images.max_age_days`` (the worker's clock, not the camera's);
* by space: while the image store's file system has less than ``images.min_free_ratio`` free (or, after a
  refused write, less than that frame needs), the oldest kept frames, down to the newest if need be.

Protected: frames with an operator label in force (``labels`` rows not revoked) and files named in any model's
training manifest (``models.manifest``). A removed frame's row stays in the record with its image URIs cleared,
so the dashboard says "no image kept" instead of showing a broken file and the trainer never looks for it.

The image store is *full* when a kept frame could not be written for lack of space in the last
``FULL_HOLD_S`` seconds, or when the free space stays under the watermark with nothing left to remove: the
``linewatch_image_store_full`` gauge, the worker's readiness (``/readyz``) and its heartbeat (shown on the
dashboard) say so within one check period (``images.check_s``).
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.engine import Engine

from linewatch.contracts.files import path_of
from linewatch.contracts.schema import Inspection, Label, ModelVersion

from . import telemetry

log = logging.getLogger(__name__)

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
FULL_HOLD_S = 60.0  # a refused write keeps the alarm up this long (every later refusal renews it)
RETRY_S = 10.0  # a full store with nothing to remove is not searched again sooner (each refused frame asks)
BATCH = 200  # frames removed per statement
SWEEP_EVERY_S = 3600.0
TMP_STALE_S = 300.0  # a partial file older than this belongs to no write in progress (a crashed worker's)


@dataclass(frozen=True)
class RetentionRule:
    """``max_age_days``: kept frames older than this are removed (None: kept until space runs short).
    ``min_free_ratio``: the share of the file system kept free, 0-1."""

    max_age_days: float | None = 30.0
    min_free_ratio: float = 0.05


@dataclass
class RetentionReport:
    """One pass: frames removed by age and by space, bytes freed, the free share after, and whether full."""

    by_age: int = 0
    by_space: int = 0
    freed_bytes: int = 0
    free_ratio: float = 1.0
    full: bool = False


class ImageRetention:
    """Removes kept frames by :class:`RetentionRule` under ``root`` (the image store), safely from any thread
    (one pass at a time); several workers sharing one store may run it at once (removal is idempotent)."""

    def __init__(self, engine: Engine, root: Path, rule: RetentionRule):
        self.engine = engine
        self.root = Path(root)
        self.rule = rule
        self._lock = threading.Lock()
        self._refused_at: float | None = None
        self._stuck = False  # the last pass could not reach the watermark
        self._last_pass = 0.0
        self._swept_at: float | None = None
        self.last = RetentionReport()

    # ---- the alarm --------------------------------------------------------------------------------------

    def refused(self, exc: OSError) -> None:
        """Record a kept frame the disk refused; lack of space (ENOSPC, EDQUOT) raises the alarm."""
        if exc.errno in NO_SPACE:
            self._refused_at = time.monotonic()
            telemetry.IMAGE_STORE_FULL.set(1)

    @property
    def full(self) -> bool:
        recent = self._refused_at is not None and time.monotonic() - self._refused_at < FULL_HOLD_S
        return recent or self._stuck

    def _short(self, need_bytes: int) -> bool:
        """Whether the free space is under the watermark, or under ``need_bytes``."""
        try:
            usage = shutil.disk_usage(self.root)
        except OSError:
            return False
        return usage.free < max(self.rule.min_free_ratio * usage.total, need_bytes)

    def free_ratio(self) -> float:
        """The free share of the image store's file system, 0-1 (1.0 while the store does not exist yet)."""
        try:
            usage = shutil.disk_usage(self.root)
        except OSError:
            return 1.0
        return usage.free / usage.total if usage.total else 0.0

    def status(self) -> dict:
        """For the heartbeat: ``free_ratio`` and ``full``."""
        return {"free_ratio": round(self.free_ratio(), 4), "full": self.full}

    # ---- removal ----------------------------------------------------------------------------------------

    def run_once(self, now: dt.datetime | None = None, sweep: bool = True, need_bytes: int = 0) -> RetentionReport:
        """One pass: by age, then by space (until the watermark, and ``need_bytes``, are free), then (``sweep``)
        partial files a crashed worker left; updates the gauges. Raises what SQL raises (the caller logs it)."""
        with self._lock:
            self._last_pass = time.monotonic()
            now = now or dt.datetime.now(dt.UTC)
            report = RetentionReport()
            protected = self._manifest_paths()
            if self.rule.max_age_days is not None:
                cutoff = now - dt.timedelta(days=self.rule.max_age_days)
                after = None
                while after is not False:
                    after = self._remove_oldest(cutoff, protected, report, "age", after)
            after = None
            while self._short(need_bytes) and after is not False:
                after = self._remove_oldest(now, protected, report, "space", after)
            report.free_ratio = self.free_ratio()
            self._stuck = self._short(need_bytes)
            report.full = self.full
            if sweep and (self._swept_at is None or time.monotonic() - self._swept_at > SWEEP_EVERY_S):
                self._swept_at = time.monotonic()  # a walk of the whole store: at start, then hourly
                self._sweep_partial_files()
            telemetry.IMAGE_STORE_FREE_RATIO.set(report.free_ratio)
            telemetry.IMAGE_STORE_FULL.set(int(report.full))
            if report.by_age or report.by_space:
                log.info("image retention removed %d frames by age and %d for space (%.1f MB); %.1f%% free",
                         report.by_age, report.by_space, report.freed_bytes / 1e6, 100 * report.free_ratio)
            if self._stuck:
                log.error("image store %s is full: %.1f%% free, nothing left to remove (labelled or trained-on "
                          "frames only); frames are stored without their images", self.root, 100 * report.free_ratio)
            self.last = report
            return report

    def make_room(self, need_bytes: int) -> bool:
        """After a write of ``need_bytes`` refused for lack of space: one pass now (none when a pass found
        nothing to remove in the last ``RETRY_S`` seconds); True if the watermark and ``need_bytes`` are free."""
        if self._stuck and time.monotonic() - self._last_pass < RETRY_S:
            return False
        try:
            self.run_once(sweep=False, need_bytes=need_bytes)
        except Exception as exc:  # noqa: BLE001 -- the record goes on without the image either way
            log.warning("image retention failed: %s: %s", type(exc).__name__, exc)
            return False
        if not self._stuck:
            self._refused_at = None  # room was made: the refusal is answered (a new one raises it again)
            self.last.full = False
            telemetry.IMAGE_STORE_FULL.set(0)
        return not self._stuck

    def _remove_oldest(self, before: dt.datetime, protected: set[Path], report: RetentionReport, reason: str,
                       after: tuple[dt.datetime, int] | None) -> tuple[dt.datetime, int] | bool:
        """Remove up to BATCH unprotected kept frames processed before ``before``, oldest first, after the
        position ``after`` (keyset: files a manifest protects are passed over, not looked at again).
        Returns the position of the last row looked at, or False when there was none."""
        labelled = exists().where(Label.inspection_id == Inspection.id, Label.revoked_at.is_(None))
        query = (select(Inspection.id, Inspection.processed_at, Inspection.image_uri, Inspection.heatmap_uri)
                 .where(Inspection.image_uri.is_not(None), Inspection.processed_at < before, ~labelled))
        if after is not None:
            query = query.where(or_(Inspection.processed_at > after[0],
                                    and_(Inspection.processed_at == after[0], Inspection.id > after[1])))
        query = query.order_by(Inspection.processed_at, Inspection.id).limit(BATCH)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return False
        candidates = {}
        for row in rows:
            paths = [path_of(u).resolve() for u in (row.image_uri, row.heatmap_uri) if u]
            if not any(p in protected for p in paths):
                candidates[row.id] = paths
        if candidates:
            # The record first: clear the URIs of the frames still unlabelled (a label given since the SELECT
            # keeps its image), then remove the files of exactly those. A failure in between leaves a file no
            # row names, never a row naming a removed file.
            with self.engine.begin() as conn:
                cleared = conn.execute(update(Inspection).where(Inspection.id.in_(list(candidates)), ~labelled)
                                       .values(image_uri=None, heatmap_uri=None)
                                       .returning(Inspection.id)).scalars().all()
            for row_id in cleared:
                for p in candidates[row_id]:
                    try:
                        size = p.stat().st_size
                        p.unlink()
                        report.freed_bytes += size
                    except FileNotFoundError:
                        pass  # removed already (another worker, or by hand)
            if cleared:
                telemetry.IMAGES_REMOVED.labels(reason=reason).inc(len(cleared))
                if reason == "space":
                    report.by_space += len(cleared)
                else:
                    report.by_age += len(cleared)
        return rows[-1].processed_at, rows[-1].id

    def _manifest_paths(self) -> set[Path]:
        """Every file a model's training manifest names (models are few; their manifests are read whole)."""
        with self.engine.connect() as conn:
            manifests = conn.execute(select(ModelVersion.manifest)).scalars().all()
        return {Path(item["path"]).resolve() for m in manifests for item in (m or [])
                if isinstance(item, dict) and item.get("path")}

    def _sweep_partial_files(self) -> None:
        """Remove partial files (``.<name>.<pid>.tmp``) that a crashed worker left behind."""
        if not self.root.is_dir():
            return
        stale = time.time() - TMP_STALE_S
        for tmp in self.root.rglob(".*.tmp"):
            try:
                if tmp.stat().st_mtime < stale:
                    tmp.unlink()
            except OSError:
                pass


def keep_image_store(retention: ImageRetention, stop: threading.Event, period_s: float) -> None:
    """Run a retention pass every ``period_s`` seconds until ``stop`` is set (a thread's loop)."""
    while not stop.is_set():
        try:
            retention.run_once()
        except Exception as exc:  # noqa: BLE001 -- the database away, say: next period
            log.warning("image retention failed: %s: %s", type(exc).__name__, exc)
        stop.wait(period_s)
