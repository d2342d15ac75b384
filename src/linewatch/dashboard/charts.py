"""Altair charts: the throughput and defect-rate trend of a line."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from zoneinfo import ZoneInfo

import altair as alt
import pandas as pd

from .data import Bucket
from .windows import Window


def trend_frame(buckets: Iterable[Bucket], window: Window, zone: str) -> pd.DataFrame:
    """Per-bucket totals over the whole window (empty buckets as zero inspected, no rate).

    Times are naive local times in ``zone``, so the chart shows them as the rest of the page does.
    """
    size = window.bucket_s
    first = int(window.start.timestamp()) // size * size
    last = int(window.end.timestamp()) // size * size
    inspected: dict[int, int] = {}
    defects: dict[int, int] = {}
    for b in buckets:
        key = int(b.start.timestamp()) // size * size
        inspected[key] = inspected.get(key, 0) + b.inspected
        defects[key] = defects.get(key, 0) + b.defects
    tz = ZoneInfo(zone)
    keys = range(first, last + 1, size)
    times = [dt.datetime.fromtimestamp(k, dt.UTC).astimezone(tz).replace(tzinfo=None) for k in keys]
    n = [inspected.get(k, 0) for k in keys]
    d = [defects.get(k, 0) for k in keys]
    return pd.DataFrame({
        "time": times,
        "inspected": n,
        "defects": d,
        "defect_rate": [dd / nn if nn else None for dd, nn in zip(d, n, strict=True)],
    })


def trend_chart(frame: pd.DataFrame, bucket_s: int) -> alt.LayerChart:
    """Bars of frames inspected per bucket (left axis) and the defect rate (right axis, line)."""
    per = f"{bucket_s // 60} min" if bucket_s < 3600 else f"{bucket_s // 3600} h"
    days = len(frame) > 1 and (frame["time"].iloc[-1] - frame["time"].iloc[0]) > pd.Timedelta(hours=20)
    axis = alt.Axis(format="%b %d %H:%M" if days else "%H:%M", labelOverlap=True)
    base = alt.Chart(frame).encode(x=alt.X("time:T", title=None, axis=axis))
    bars = base.mark_bar(color="#9db7d5", opacity=0.8).encode(
        y=alt.Y("inspected:Q", title=f"inspected per {per}"),
        tooltip=[alt.Tooltip("time:T", format="%Y-%m-%d %H:%M"), "inspected:Q", "defects:Q",
                 alt.Tooltip("defect_rate:Q", format=".1%", title="defect rate")],
    )
    rate = base.mark_line(color="#d62728", point=True, strokeWidth=2).encode(
        y=alt.Y("defect_rate:Q", title="defect rate", axis=alt.Axis(format="%", titleColor="#d62728"),
                scale=alt.Scale(domainMin=0)),
    ).transform_filter("isValid(datum.defect_rate)")
    return alt.layer(bars, rate).resolve_scale(y="independent").properties(height=220)
