"""Live: per line and camera, throughput and defect rate over a window with a trend chart, of the product chosen in
the sidebar (counted from SQL when the record knows several: Redis counts every product); per camera an OK/NG lamp
for the latest part with its age, the rate, end-to-end latency p50/p99 and the backlog (consumer lag, age of
the oldest unprocessed frame), and the latest frame with its heatmap; worker health. Windows count frames by
processing time (a backlog shows what is inspected now; capture times are shown beside). The alarms are in the
banner above every page (:mod:`..banner`). The panel refreshes itself (a Streamlit fragment), so the rest of the
page, and the window chosen, stay put."""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import time
from zoneinfo import ZoneInfo

import redis
import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from linewatch.contracts.live_state import LiveStateReader
from linewatch.contracts.messages import InspectionResult

from .. import alarm_watch, charts, data, products, views, windows
from ..alarms import CameraView
from ..data import Bucket
from ..windows import Window, ago, fmt

CAMERAS_PER_ROW = 3
# The Live page is watched, not clicked: while a refresh runs (a slow store, a loaded machine) Streamlit fades the
# elements it is about to replace, and the whole panel would blink every dashboard.refresh_s. They stay as they
# are until the new ones arrive (the banner does the same for the alarms).
_STEADY = views.steady_style("[data-stale]", "[data-stale] *")


@st.cache_data(ttl=10, show_spinner=False)
def _sql_cameras(url: str) -> dict[str, str]:
    return data.sql_cameras(data.engine())


@st.cache_data(ttl=15, show_spinner=False)
def _sql_history(url: str, lines: tuple[str, ...], start: dt.datetime, end: dt.datetime,
                 bucket_s: int, product: str | None) -> list[Bucket]:
    return data.history(data.engine(), lines, start, end, bucket_s, product)


def render() -> None:
    """The Live page."""
    s = data.settings()
    st.html(_STEADY)
    st.title("Live")
    left, right = st.columns([3, 2])
    with left:
        choice = st.segmented_control("Window", windows.PRESETS, default="Last 1 h", key="lw_live_window",
                                      required=True)
    custom: Window | None = None
    if choice == "Custom range":
        custom = _custom_range(s.dashboard.timezone)
        if custom is None:
            return
    with right:
        wanted = st.multiselect("Lines", _known_lines(), key="lw_live_lines", placeholder="all lines")
    panel = st.fragment(run_every=s.dashboard.refresh_s)(_panel)
    panel(choice or "Last 1 h", custom, frozenset(wanted), products.selected())


def _known_lines() -> list[str]:
    """Lines of every camera known to Redis or SQL; empty when neither answers (the panel says why)."""
    s = data.settings()
    lines: set[str] = set()
    reader = data.live()
    if reader is not None:
        with contextlib.suppress(redis.RedisError):
            lines.update(reader.cameras().values())
    with contextlib.suppress(SQLAlchemyError):
        lines.update(_sql_cameras(s.database_url).values())
    return sorted(lines)


def _custom_range(zone: str) -> Window | None:
    today = dt.datetime.now(dt.UTC).astimezone(ZoneInfo(zone)).date()
    c1, c2, c3 = st.columns(3)
    days = c1.date_input("Days", value=(today - dt.timedelta(days=1), today), key="lw_live_days")
    start_time = c2.time_input("From", value=dt.time(0, 0), key="lw_live_from")
    end_time = c3.time_input("To", value=dt.time(23, 59), key="lw_live_to")
    if not isinstance(days, tuple) or len(days) != 2:
        st.info("Pick the first and the last day of the range.")
        return None
    try:
        return windows.custom(days[0], days[1], start_time, end_time, zone)
    except ValueError as exc:
        st.warning(str(exc))
        return None


def _panel(choice: str, custom: Window | None, wanted: frozenset[str], product: str | None) -> None:
    s = data.settings()
    zone = s.dashboard.timezone
    now = dt.datetime.now(dt.UTC)
    window = custom or windows.preset(choice, now, s.dashboard.shift_starts, zone)
    reader = data.live()
    live_ok, live_problem = reader is not None, "Live state unavailable: no Redis is configured (LINEWATCH_REDIS__URL)."

    cameras: dict[str, str] = {}
    if reader is not None:
        try:
            cameras.update(reader.cameras())
        except redis.RedisError as exc:
            live_ok, live_problem = False, views.explain(exc)
    try:
        for cam, line in _sql_cameras(s.database_url).items():
            cameras.setdefault(cam, line)
    except SQLAlchemyError as exc:
        st.error(f"The record: {views.explain(exc)}")
    if not live_ok:
        st.warning(f"{live_problem} Counts below come from the SQL record; latest frames and worker health "
                   "need Redis.")
    if wanted:
        cameras = {c: line for c, line in cameras.items() if line in wanted}
    # Redis counts every product's frames of a camera: a product chosen among several is counted from SQL.
    live_counts = live_ok and custom is None and not products.narrows(product)
    source = "live counts (Redis)" if live_counts else "counts from the SQL record"
    st.caption(f"{products.label(product).capitalize()} · "
               f"{window.label}: {fmt(window.start, zone, seconds=False)} to {fmt(window.end, zone, seconds=False)} "
               f"({zone}), frames counted when inspected · {source} · updated {fmt(now, zone)} · refreshes every "
               f"{s.dashboard.refresh_s:g} s")
    if not cameras:
        st.info("No camera has reported yet." + (" (No camera on the lines asked for.)" if wanted else
                " Start a camera (`linewatch ingest`) and a detector worker (`linewatch detect`); "
                "their results appear here within seconds."))
    else:
        buckets = _buckets(reader if live_counts else None, cameras, window, product)
        _, observed, _ = alarm_watch.watch(s).current()
        views_now = observed.cameras if observed is not None else {}
        if buckets is not None:
            for line in sorted(set(cameras.values())):
                _line_section(line, sorted(c for c, l_ in cameras.items() if l_ == line), buckets, window,
                              reader if live_ok else None, zone, views_now, product)
    st.subheader("Workers")
    if live_ok:
        _workers(reader, window)
    else:
        st.caption("Worker health needs the live state (Redis).")


def _buckets(reader: LiveStateReader | None, cameras: dict[str, str], window: Window,
             product: str | None) -> list[Bucket] | None:
    """Per-camera counts in the window's buckets: from Redis for the live windows (``reader``), else from SQL, of
    ``product``'s frames (None: every product's)."""
    s = data.settings()
    if reader is not None:
        try:
            out = []
            for cam, line in cameras.items():
                for minute, c in reader.counts_per_minute("camera", cam, window.start, window.end).items():
                    out.append(Bucket(dt.datetime.fromtimestamp(minute * 60, dt.UTC), line, cam, c.inspected,
                                      c.defects))
            return out
        except redis.RedisError as exc:
            st.warning(views.explain(exc) + " Counts come from the SQL record instead.")
    try:
        return _sql_history(s.database_url, tuple(sorted(set(cameras.values()))), window.start, window.end,
                            window.bucket_s, product)
    except SQLAlchemyError as exc:
        st.error(f"History: {views.explain(exc)}")
        return None


def _rate(inspected: int, defects: int) -> str:
    return f"{defects / inspected:.1%}" if inspected else "—"


def _line_section(line: str, cams: list[str], buckets: list[Bucket], window: Window,
                  reader: LiveStateReader | None, zone: str, views_now: dict[str, CameraView],
                  product: str | None) -> None:
    mine = [b for b in buckets if b.line_id == line]
    inspected, defects = sum(b.inspected for b in mine), sum(b.defects for b in mine)
    with st.container(border=True, key=f"lw_line_{line}"):
        st.subheader(f"Line {line}")
        c1, c2, c3, c4 = st.columns(4)
        c1.metric(f"{line} defect rate", _rate(inspected, defects))
        c2.metric(f"{line} inspected", f"{inspected:,}")
        c3.metric(f"{line} defects", f"{defects:,}")
        c4.metric(f"{line} throughput", f"{inspected / window.minutes:.1f}/min")
        if inspected:
            frame = charts.trend_frame(mine, window, zone)
            st.altair_chart(charts.trend_chart(frame, window.bucket_s), width="stretch")
        else:
            st.caption(f"No frames from line {line} in this window.")
        for start in range(0, len(cams), CAMERAS_PER_ROW):
            columns = st.columns(CAMERAS_PER_ROW)
            for col, cam in zip(columns, cams[start:start + CAMERAS_PER_ROW], strict=False):
                with col:
                    _camera_tile(cam, [b for b in mine if b.camera_id == cam], window, reader, zone,
                                 views_now.get(cam), product)


def _camera_tile(cam: str, buckets: list[Bucket], window: Window, reader: LiveStateReader | None,
                 zone: str, view: CameraView | None, product: str | None) -> None:
    inspected, defects = sum(b.inspected for b in buckets), sum(b.defects for b in buckets)
    result, overlay = None, None
    with st.container(border=True, key=f"lw_camera_{cam}"):
        st.markdown(f"**Camera {cam}**")
        if reader is None:
            st.caption("Latest frame: needs the live state (Redis).")
        else:
            try:
                result, overlay = reader.latest(cam)
            except redis.RedisError as exc:
                st.caption(views.explain(exc))
            if result is None:
                st.caption("No recent frame (the latest is kept for a day).")
            else:
                _lamp(cam, result, zone)
                if product is not None and result.product != product:
                    st.caption(f"The latest frame is of product {result.product}.")
        a, b = st.columns(2)
        a.metric(f"{cam} defect rate", _rate(inspected, defects))
        b.metric(f"{cam} inspected", f"{inspected:,}", help=f"{inspected / window.minutes:.1f} frames/min")
        _flow(cam, view)
        if result is not None:
            if overlay:
                st.image(overlay, width="stretch")
            else:
                st.caption("No heatmap for the latest frame.")
            drift = " (lighting drift)" if result.verdict_label != result.verdict else ""
            st.caption(f"{views.score_text(result.normalized_score, result.verdict)}{drift} · score "
                       f"{result.image_score:.4g} "
                       f"vs threshold {result.threshold:.4g} · model {result.model_version} · frame "
                       f"{result.frame.frame_id}")


def _lamp(cam: str, result: InspectionResult, zone: str) -> None:
    """The OK/NG lamp of the camera's latest part, its age by processing and by capture time."""
    ng = result.verdict == "defect"
    colour = "#b3261e" if ng else "#1e7d32"
    part = html.escape(result.frame.part_id or f"frame {result.frame.frame_id}")
    st.markdown(f"<div class='lw-lamp' data-camera='{html.escape(cam)}' data-verdict='{'NG' if ng else 'OK'}' "
                f"style='background:{colour};color:#fff;font-size:2.6em;font-weight:800;text-align:center;"
                f"border-radius:0.25em;line-height:1.5'>{'NG' if ng else 'OK'}</div>", unsafe_allow_html=True)
    st.caption(f"{part} · inspected {ago(result.processed_at)} · captured {ago(result.frame.captured_at)} "
               f"({fmt(result.frame.captured_at, zone)})")


def _flow(cam: str, view: CameraView | None) -> None:
    """Rate over the last minute, end-to-end latency p50/p99 and the backlog (from the alarm watch's snapshot), as
    one small table: three st.metric values do not fit a camera's column."""
    if view is None:
        st.caption("Rate, latency and backlog: waiting for the first evaluation of the live state.")
        return
    q = view.latency_quantiles_s()
    backlog = view.backlog_s(time.time())
    figures = [("rate", "rate", f"{view.rate_per_s():.1f}/s"),
               ("latency", "latency p50 / p99", f"{_seconds(q[0])} / {_seconds(q[1])}" if q else "—"),
               ("backlog", "backlog", "—" if backlog is None else windows.duration(backlog)),
               ("lag", "consumer lag", "unknown" if view.lag is None else f"{view.lag:,} frames")]
    cells = "".join(f"<div style='opacity:0.7;font-size:0.8em'>{label}</div>"
                    f"<div data-figure='{key}' style='font-weight:600;text-align:right'>{value}</div>"
                    for key, label, value in figures)
    st.markdown(f"<div class='lw-flow' data-camera='{html.escape(cam)}' style='display:grid;grid-template-columns:"
                f"auto auto;gap:0.1em 0.8em;align-items:baseline;margin-bottom:0.6em'>{cells}</div>",
                unsafe_allow_html=True)


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if value < 10 else windows.duration(value)


def _status(worker: dict, stale_s: float | None = None) -> str:
    """``silent`` (no heartbeat lately), ``stalled: no heartbeat for 14 s`` (older than ``stale_s``, the alarm's
    limit), the worker's own stall reason (e.g. ``stalled 45 s: oldest batch in flight``), the store it waits for
    (``waiting for sql 45 s``), or ``alive``."""
    if not worker["alive"]:
        return "silent"
    silent = time.time() - float(worker.get("last_seen") or 0)
    if stale_s is not None and silent > stale_s:
        return f"stalled: no heartbeat for {silent:.0f} s"
    if worker.get("waiting_on"):
        return f"waiting for {worker['waiting_on']}"
    return worker.get("stalled") or "alive"


def _workers(reader: LiveStateReader, window: Window) -> None:
    try:
        workers = reader.workers()
        dead = reader.dead_letters(window.start, window.end)
    except redis.RedisError as exc:
        st.warning(views.explain(exc))
        return
    if not workers:
        st.info("No detector worker has sent a heartbeat. Start one with `linewatch detect --model DIR`.")
    else:
        rows = []
        for w in workers:
            lag = w.get("lag")
            rows.append({
                "worker": w["worker_id"],
                "status": _status(w, data.settings().dashboard.alarms.heartbeat_stale_s),
                "model": w.get("model_behind") or w.get("model_version", "—"),
                "frames/s": f"{float(w.get('frames_per_s') or 0):.1f}",
                "inspected": f"{int(w.get('inspected') or 0):,}",
                "consumer lag": f"{sum(lag.values()):,}" if isinstance(lag, dict) and lag else "unknown",
                "device": w.get("device", "—"),
                "last heartbeat": ago(w.get("last_seen")),
            })
        st.table(rows, hide_index=True)
        for w in workers:  # a full image store, a stall: in the alarm banner
            if w.get("model_behind") and w["alive"]:
                why = f" Loading it failed: {w['model_load_error']}; retrying." if w.get("model_load_error") else ""
                st.warning(f"Worker {w['worker_id']} is {w['model_behind']}.{why}")
    if dead:
        st.caption("Dead-lettered in this window: " + ", ".join(f"{k} {v}" for k, v in sorted(dead.items())))
