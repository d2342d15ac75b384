"""Review: the queue of kept frames awaiting an operator's label (flagged defects and sampled good frames).

Marking a frame good (a false alarm, or a confirmed good part) makes it training material for the trainer;
defect confirms the model. Labels record the operator and the time; undo takes back the operator's last
action. Keys: G good, D defect, U undo (on the frame shown first).
"""

from __future__ import annotations

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from .. import auth, data, views
from ..data import Cursor
from ..windows import fmt

COLUMNS = 4
KINDS = {"All": "all", "Flagged defects": "defect", "Sampled good": "good"}
_FLASH = "lw_review_flash"


def render() -> None:
    """The Review page."""
    s = data.settings()
    zone = s.dashboard.timezone
    db = data.engine()
    operator = auth.current_operator(s)
    st.title("Review")
    choice = st.segmented_control("Show", list(KINDS), default="All", key="lw_review_kind", required=True)
    kind = KINDS[choice or "All"]
    if st.session_state.get("lw_review_kind_seen") != kind:
        st.session_state["lw_review_kind_seen"] = kind
        st.session_state["lw_review_pages"] = []
    pages: list[Cursor] = st.session_state.setdefault("lw_review_pages", [])
    try:
        waiting = data.review_queue_size(db, kind)
        ready = data.ready_for_retraining(db)
        page = data.review_queue(db, kind, pages[-1] if pages else None, s.dashboard.page_size)
    except SQLAlchemyError as exc:
        st.error(f"The review queue cannot be shown: {views.explain(exc)}")
        return
    c1, c2, c3 = st.columns([1, 1, 2])
    c1.metric("Awaiting review", f"{waiting:,}")
    c2.metric("Ready for retraining", f"{ready:,}",
              help=f"Confirmed-good images the trainer may learn from; it retrains after "
                   f"{s.trainer.min_new_good} new ones.")
    with c3:
        _operator_bar(operator, s)
    flash = st.session_state.pop(_FLASH, None)
    with st.container():  # a fixed slot, so the elements below keep their places across reruns
        if flash:
            (st.error if flash[0] == "error" else st.success)(flash[1])
    if not page.rows:
        if pages:
            st.info("No more frames on older pages.")
            views.pager(pages, None, "review")
        else:
            st.success("Nothing awaits review. Kept frames (defects and a sample of good parts) appear here "
                       "as the workers store them.")
        return
    first, rest = page.rows[0], page.rows[1:]
    with st.container(border=True, key="lw_review_current"):
        left, middle, right = st.columns([2, 2, 2])
        with left:
            views.kept_image(first.heatmap_uri, "heatmap overlay")
        with middle:
            views.kept_image(first.image_uri, "original")
        with right:
            verdict_colour = "red" if first.verdict == "defect" else "green"
            st.markdown(f"**Next to review** · model says :{verdict_colour}[**{first.verdict}**]")
            views.facts_table(first, zone)
            if operator is not None:
                a, b = st.columns(2)
                a.button("Good", key="lw_good_current", type="primary", shortcut="G", icon=":material/check:",
                         on_click=_label, args=([first.id], "good"), width="stretch",
                         help="A false alarm, or a confirmed good part: the trainer may learn from it.")
                b.button("Defect", key="lw_defect_current", shortcut="D", icon=":material/close:",
                         on_click=_label, args=([first.id], "defect"), width="stretch",
                         help="The part is defective: the model was right.")
    if rest:
        st.subheader("Also waiting")
    for start in range(0, len(rest), COLUMNS):
        for col, row in zip(st.columns(COLUMNS), rest[start:start + COLUMNS], strict=False):
            with col, st.container(border=True, key=f"lw_review_{row.id}"):
                views.kept_image(row.heatmap_uri)
                colour = "red" if row.verdict == "defect" else "green"
                st.markdown(f":{colour}[**{views.score_text(row.normalized_score, row.verdict)}**]  \n"
                            f"{row.camera_id} · frame {row.frame_id} · {fmt(row.captured_at, zone)}")
                if operator is not None:
                    a, b = st.columns(2)
                    a.button("Good", key=f"lw_good_{row.id}", on_click=_label, args=([row.id], "good"),
                             width="stretch")
                    b.button("Defect", key=f"lw_defect_{row.id}", on_click=_label, args=([row.id], "defect"),
                             width="stretch")
                if st.button("Details", key=f"lw_review_details_{row.id}", type="tertiary"):
                    views.detail(row.id)
    if operator is not None:
        ids = [r.id for r in page.rows]
        st.button(f"Confirm all {len(ids)} shown as good", key="lw_bulk_good", icon=":material/done_all:",
                  on_click=_label, args=(ids, "good"),
                  help="Labels every frame on this page good in one action (one undo takes it back).")
    views.pager(pages, page.next, "review")


def _operator_bar(operator: auth.Operator | None, s) -> None:
    if operator is None:
        if auth.mode(s) == "name":
            st.info("Type your name in the sidebar to label frames.")
        else:
            st.info("Sign in (sidebar) to label frames. Anyone may look.")
        return
    st.caption(f"Labelling as **{operator.name}**" + ("" if operator.verified else " (name typed, not signed in)"))
    st.button("Undo my last label", key="lw_undo", shortcut="U", icon=":material/undo:", on_click=_undo)


def _label(ids: list[int], label: str) -> None:
    """Button callback: store the labels (the operator is checked again, at the moment of the click)."""
    operator = auth.current_operator(data.settings())
    if operator is None:
        st.session_state[_FLASH] = ("error", "Sign in before labelling.")
        return
    try:
        n = data.add_labels(data.engine(), ids, label, operator.name)
    except (SQLAlchemyError, ValueError) as exc:
        st.session_state[_FLASH] = ("error", f"The label was not stored: {views.explain(exc)}")
        return
    what = f"frame {ids[0]}" if n == 1 else f"{n} frames"
    st.session_state[_FLASH] = ("ok", f"Labelled {what} **{label}** as {operator.name}. Undo with U.")


def _undo() -> None:
    operator = auth.current_operator(data.settings())
    if operator is None:
        return
    try:
        ids = data.undo_last(data.engine(), operator.name)
    except SQLAlchemyError as exc:
        st.session_state[_FLASH] = ("error", f"Undo failed: {views.explain(exc)}")
        return
    if ids:
        what = f"frame {ids[0]}" if len(ids) == 1 else f"{len(ids)} frames"
        st.session_state[_FLASH] = ("ok", f"Undone: the label of {what} is taken back; it is back in the queue.")
    else:
        st.session_state[_FLASH] = ("ok", "Nothing to undo.")
