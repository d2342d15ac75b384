"""Pieces several pages share: frame tiles and the frame detail view, score wording, error explanations."""

from __future__ import annotations

import contextlib
import html
from collections.abc import Iterator

import redis
import streamlit as st
from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError

from linewatch.contracts.schema import Inspection

from . import data, images
from .data import Cursor
from .windows import ago, fmt


def steady_style(*selectors: str) -> str:
    """A ``<style>`` that keeps the elements ``selectors`` match as they are while a rerun replaces them (Streamlit
    marks those it is about to replace ``data-stale`` and fades them until the new ones arrive)."""
    return f"<style>{', '.join(selectors)} {{opacity: 1 !important; transition: none !important}}</style>"


def score_text(normalized: float, verdict: str) -> str:
    """``1.84 × threshold · DEFECT``: the score relative to the decision boundary, and the verdict."""
    return f"{normalized:.2f} × threshold · {'DEFECT' if verdict == 'defect' else 'good'}"


def skew_text(skew_ms: float) -> str:
    """A camera clock skew in words: ``'5 min ahead'``, ``'1.2 s behind'``, ``'3 days behind'``."""
    seconds = abs(skew_ms) / 1000
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size if unit == "days" else seconds >= size:
            amount = f"{seconds / size:.0f} {unit}"
            break
    else:
        amount = f"{seconds:.1f} s"
    return f"{amount} {'ahead' if skew_ms > 0 else 'behind'}"


def explain(exc: BaseException) -> str:
    """A sentence for an operator about why data could not be read."""
    if isinstance(exc, redis.RedisError):
        return f"Live state unavailable: Redis did not answer ({type(exc).__name__}: {exc})."
    text = str(getattr(exc, "orig", exc)).lower()
    if isinstance(exc, OperationalError | ProgrammingError) and ("no such table" in text or "does not exist" in text):
        return "The database has no linewatch schema yet. Run `linewatch db upgrade` (or start the workers)."
    if "interrupt" in text or "statement timeout" in text or "canceling statement" in text:
        return (f"The query took longer than {data.settings().dashboard.query_timeout_s:g} s and was stopped. "
                "Narrow the time range or filters.")
    if isinstance(exc, SQLAlchemyError):
        return f"The database is unavailable ({type(exc).__name__}: {str(exc).splitlines()[0]})."
    return f"{type(exc).__name__}: {exc}"


@contextlib.contextmanager
def guarded(what: str) -> Iterator[None]:
    """Show an explained error box instead of an exception when ``what`` cannot be read from SQL or Redis."""
    try:
        yield
    except (SQLAlchemyError, redis.RedisError) as exc:
        st.error(f"{what}: {explain(exc)}")


def kept_image(uri: str | None, caption: str | None = None) -> None:
    """Show a kept frame (original or overlay) or, when it cannot be read, a placeholder saying why."""
    content, why = images.read_kept(uri, data.settings().image_store_root)
    if content is None:
        st.markdown(f"<div style='padding:2.5em 0.5em;text-align:center;border:1px dashed #aaa;color:#777'>"
                    f"Image unavailable: {html.escape(why)}</div>", unsafe_allow_html=True)
        if caption:
            st.caption(caption)
        return
    st.image(content, caption=caption, width="stretch")


def facts(row: Inspection, zone: str) -> dict[str, str]:
    """The facts of one inspection, worded for people."""
    regions = row.regions or []
    return {
        "Camera": f"{row.camera_id} (line {row.line_id})",
        "Frame": f"{row.frame_id}" + (f" · part {row.part_id}" if row.part_id else ""),
        "Captured": f"{fmt(row.captured_at, zone)} ({ago(row.captured_at)})",
        "Verdict": ("DEFECT" if row.verdict == "defect" else "good") + (
            " (lighting drift)" if row.verdict == "defect" and (row.drift or {}).get("camera_drifting") else ""),
        "Score": f"{row.image_score:.5g} (threshold {row.threshold:.5g}) = {row.normalized_score:.2f} × threshold",
        "Model version": row.model_version,
        "Defect regions": ", ".join(f"{g['width']}×{g['height']} at ({g['x']}, {g['y']})" for g in regions[:6])
                          + (" …" if len(regions) > 6 else "") if regions else "none",
        "Worker": row.worker_id,
    }


def facts_table(row: Inspection, zone: str) -> None:
    """The facts of one inspection as a two-column table."""
    items = facts(row, zone)
    st.table({"": list(items), " ": list(items.values())}, hide_index=True, hide_header=True)


@st.dialog("Frame detail", width="large")
def detail(inspection_id: int) -> None:
    """The detail view of one frame: original and heatmap side by side, its facts and its label."""
    s = data.settings()
    with guarded("This frame cannot be shown"):
        row = data.frame(data.engine(), inspection_id)
        if row is None:
            st.info("This frame is no longer in the record.")
            return
        left, right = st.columns(2)
        with left:
            kept_image(row.image_uri, "original")
        with right:
            kept_image(row.heatmap_uri, "heatmap overlay")
        facts_table(row, s.dashboard.timezone)
        label = data.label_of(data.engine(), [row.id]).get(row.id)
        if label:
            st.caption(f"Labelled **{label[0]}** by {label[1]}, {fmt(label[2], s.dashboard.timezone)}")
        else:
            st.caption("Not labelled yet.")


def pager(pages: list[Cursor], next_cursor: Cursor | None, key: str) -> None:
    """Newer/older buttons over keyset pages: ``pages`` is the stack of cursors of the pages before this one
    (kept in session state); buttons are keyed ``lw_<key>_newer`` and ``lw_<key>_older``."""
    left, middle, right = st.columns([1, 2, 1])
    if left.button("← Newer", disabled=not pages, key=f"lw_{key}_newer"):
        pages.pop()
        st.rerun()
    middle.caption(f"Page {len(pages) + 1}")
    if right.button("Older →", disabled=next_cursor is None, key=f"lw_{key}_older"):
        pages.append(next_cursor)
        st.rerun()
