"""Defects: a gallery of recent defect frames of the product chosen in the sidebar, filtered by line, camera, time and
score, with a detail view."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from .. import data, products, views
from ..data import Cursor, GalleryFilter
from ..windows import fmt

COLUMNS = 4
PERIODS = {"Last 1 h": dt.timedelta(hours=1), "Last 24 h": dt.timedelta(days=1), "Last 7 days": dt.timedelta(days=7),
           "Last 30 days": dt.timedelta(days=30)}


@st.cache_data(ttl=30, show_spinner=False)
def _cameras(url: str) -> dict[str, str]:
    return data.sql_cameras(data.engine())


def render() -> None:
    """The Defects page."""
    s = data.settings()
    zone = s.dashboard.timezone
    st.title("Defects")
    st.caption(f"Defects of {products.label(products.selected())} (product: sidebar).")
    try:
        cameras = _cameras(s.database_url)
    except SQLAlchemyError as exc:
        st.error(views.explain(exc))
        return
    f = _filters(cameras, zone)
    if f is None:
        return
    chosen = tuple(str(st.session_state.get(k)) for k in ("lw_defects_line", "lw_defects_camera", "lw_defects_period",
                                                          "lw_defects_score", "lw_defects_days", products.KEY))
    if st.session_state.get("lw_defects_filter") != chosen:  # new filters start at the newest page
        st.session_state["lw_defects_filter"] = chosen
        st.session_state["lw_defects_pages"] = []
    pages: list[Cursor] = st.session_state["lw_defects_pages"]
    cursor = pages[-1] if pages else None
    with views.guarded("The gallery cannot be shown"):
        page = data.defect_gallery(data.engine(), f, cursor, s.dashboard.page_size)
        if not page.rows:
            if not cameras:
                st.info("No camera has reported yet, so there are no defects to show.")
            elif cursor is None:
                st.info("No defect matches these filters: none was found in this time range "
                        "(widen the range or lower the minimum score).")
            else:
                st.info("No older defects.")
        _gallery(page.rows, zone)
        views.pager(pages, page.next, "defects")


def _filters(cameras: dict[str, str], zone: str) -> GalleryFilter | None:
    lines = sorted(set(cameras.values()))
    c1, c2, c3 = st.columns(3)
    line = c1.selectbox("Line", ["All lines", *lines], key="lw_defects_line")
    choices = sorted(c for c, l_ in cameras.items() if line == "All lines" or l_ == line)
    camera = c2.selectbox("Camera", ["All cameras", *choices], key="lw_defects_camera")
    min_score = c3.number_input("Score at least (× threshold)", min_value=0.0, max_value=1000.0, value=1.0,
                                step=0.1, key="lw_defects_score")
    period = st.segmented_control("Time", [*PERIODS, "Custom range"], default="Last 24 h", key="lw_defects_period",
                                  required=True)
    now = dt.datetime.now(dt.UTC)
    if period == "Custom range":
        tz = ZoneInfo(zone)
        today = now.astimezone(tz).date()
        days = st.date_input("Days", value=(today - dt.timedelta(days=7), today), key="lw_defects_days")
        if not isinstance(days, tuple) or len(days) != 2:
            st.info("Pick the first and the last day of the range.")
            return None
        start = dt.datetime.combine(days[0], dt.time(0), tzinfo=tz).astimezone(dt.UTC)
        end = dt.datetime.combine(days[1] + dt.timedelta(days=1), dt.time(0), tzinfo=tz).astimezone(dt.UTC)
    else:
        # Whole minutes keep the filter (and the page cursor with it) stable across reruns.
        end = now.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        start = end - PERIODS[period or "Last 24 h"]
    return GalleryFilter(start=start, end=end, line_id=None if line == "All lines" else line,
                         camera_id=None if camera == "All cameras" else camera, min_score=float(min_score),
                         product=products.selected())


def _gallery(rows: list, zone: str) -> None:
    for start in range(0, len(rows), COLUMNS):
        for col, row in zip(st.columns(COLUMNS), rows[start:start + COLUMNS], strict=False):
            with col, st.container(border=True, key=f"lw_defect_{row.id}"):
                views.kept_image(row.heatmap_uri)
                st.markdown(f":red[**{views.score_text(row.normalized_score, row.verdict)}**]  \n"
                            f"{row.camera_id} · {fmt(row.captured_at, zone)}  \n"
                            f"score {row.image_score:.4g} / threshold {row.threshold:.4g} · model {row.model_version}")
                if st.button("Details", key=f"lw_details_{row.id}", icon=":material/zoom_in:"):
                    views.detail(row.id)
