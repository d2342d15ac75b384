"""Time windows the pages show (last 5 min, last hour, this shift, a custom range) and how times are written."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

PRESETS = ("Last 5 min", "Last 1 h", "This shift", "Custom range")
_BUCKETS_S = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 86400)
MAX_BUCKETS = 240
MAX_RANGE = dt.timedelta(days=92)


@dataclass(frozen=True)
class Window:
    """A half-open interval [start, end) of UTC-aware times, a label, and the trend chart's bucket size."""

    start: dt.datetime
    end: dt.datetime
    label: str
    bucket_s: int

    @property
    def minutes(self) -> float:
        return max((self.end - self.start).total_seconds() / 60, 1e-9)


def bucket_for(span: dt.timedelta) -> int:
    """The smallest bucket (seconds) that keeps a span within :data:`MAX_BUCKETS` buckets."""
    for size in _BUCKETS_S:
        if span.total_seconds() / size <= MAX_BUCKETS:
            return size
    return _BUCKETS_S[-1]


def shift_start(now: dt.datetime, shift_starts: list[str], zone: str) -> dt.datetime:
    """The start (UTC) of the shift running at ``now``; ``shift_starts`` are local HH:MM times in ``zone``."""
    tz = ZoneInfo(zone)
    local = now.astimezone(tz)
    candidates = []
    for day in (local.date() - dt.timedelta(days=1), local.date()):
        for item in shift_starts:
            hours, minutes = (int(x) for x in item.split(":"))
            candidates.append(dt.datetime.combine(day, dt.time(hours, minutes), tzinfo=tz))
    return max(c for c in candidates if c <= local).astimezone(dt.UTC)


def preset(name: str, now: dt.datetime, shift_starts: list[str], zone: str) -> Window:
    """One of the preset windows ending at ``now``.

    Raises:
        ValueError: ``name`` is not a preset with a fixed length ("Custom range" needs :func:`custom`).
    """
    if name == "Last 5 min":
        start = now - dt.timedelta(minutes=5)
    elif name == "Last 1 h":
        start = now - dt.timedelta(hours=1)
    elif name == "This shift":
        start = shift_start(now, shift_starts, zone)
    else:
        raise ValueError(f"not a preset window: {name!r}")
    return Window(start, now, name, bucket_for(now - start))


def custom(first_day: dt.date, last_day: dt.date, start_time: dt.time, end_time: dt.time, zone: str) -> Window:
    """A window from ``first_day start_time`` to ``last_day end_time`` local time in ``zone``.

    Raises:
        ValueError: the end is not after the start, or the range is longer than :data:`MAX_RANGE`.
    """
    tz = ZoneInfo(zone)
    start = dt.datetime.combine(first_day, start_time, tzinfo=tz).astimezone(dt.UTC)
    end = dt.datetime.combine(last_day, end_time, tzinfo=tz).astimezone(dt.UTC)
    if end <= start:
        raise ValueError("the end of the range must be after its start")
    if end - start > MAX_RANGE:
        raise ValueError(f"ranges are limited to {MAX_RANGE.days} days")
    return Window(start, end, "Custom range", bucket_for(end - start))


def fmt(moment: dt.datetime | None, zone: str, seconds: bool = True) -> str:
    """``moment`` as local time in ``zone`` (``YYYY-MM-DD HH:MM[:SS]``); an em dash for None."""
    if moment is None:
        return "—"
    return moment.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def duration(seconds: float) -> str:
    """A length of time in words: ``42 s``, ``12 min``, ``3.5 h``, ``2.0 days``."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def ago(moment: dt.datetime | float | None, now: dt.datetime | None = None) -> str:
    """How long ago ``moment`` (a datetime or Unix time) was, e.g. ``12 s ago``, ``3 min ago``."""
    if moment is None:
        return "never"
    now = now or dt.datetime.now(dt.UTC)
    then = dt.datetime.fromtimestamp(moment, dt.UTC) if isinstance(moment, int | float) else moment
    return f"{duration((now - then).total_seconds())} ago"
