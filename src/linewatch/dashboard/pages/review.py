"""Review: the queue of kept frames awaiting an operator's label (flagged defects and sampled good frames).

Marking a frame good (a false alarm, or a confirmed good part) makes it training material for the trainer;
defect confirms the model. A frame the model scored more than ``trainer.second_opinion_above`` x its threshold
needs "good" from a second, different operator before it can train a model (``contracts.labels``): it stays
in the queue, marked, until then. A frame whose kept image is missing is never offered as good. Labels record
the operator and the time; undo takes back the operator's last action.
Keys: G good, D defect, U undo (on the frame shown first).
"""

from __future__ import annotations

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from linewatch.contracts.labels import awaiting_second_opinion, good_operator_names

from .. import auth, data, images, views
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
    try:
        with db.connect() as conn:
            confirmed_by = good_operator_names(conn, [r.id for r in page.rows])
    except SQLAlchemyError as exc:
        st.error(f"The review queue cannot be shown: {views.explain(exc)}")
        return
    blocked = {r.id: _why_not_good(r, operator, confirmed_by.get(r.id, []), s) for r in page.rows}
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
            note = _second_opinion_note(first, confirmed_by.get(first.id, []), s)
            if note:
                st.warning(note, icon=":material/group:")
            if operator is not None:
                a, b = st.columns(2)
                a.button("Good", key="lw_good_current", type="primary", shortcut="G", icon=":material/check:",
                         on_click=_label, args=([first.id], "good"), width="stretch",
                         disabled=blocked[first.id] is not None,
                         help=blocked[first.id] or "A false alarm, or a confirmed good part: the trainer may learn "
                                                   "from it.")
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
                note = _second_opinion_note(row, confirmed_by.get(row.id, []), s)
                if note:
                    st.caption(f":orange[{note}]")
                if operator is not None:
                    a, b = st.columns(2)
                    a.button("Good", key=f"lw_good_{row.id}", on_click=_label, args=([row.id], "good"),
                             width="stretch", disabled=blocked[row.id] is not None, help=blocked[row.id])
                    b.button("Defect", key=f"lw_defect_{row.id}", on_click=_label, args=([row.id], "defect"),
                             width="stretch")
                if st.button("Details", key=f"lw_review_details_{row.id}", type="tertiary"):
                    views.detail(row.id)
    if operator is not None:
        ids = [r.id for r in page.rows if blocked[r.id] is None]
        st.button(f"Confirm all {len(ids)} shown as good", key="lw_bulk_good", icon=":material/done_all:",
                  on_click=_label, args=(ids, "good"), disabled=not ids,
                  help="Labels every frame on this page good in one action (one undo takes it back); frames "
                       "that cannot be labelled good by you now are left out.")
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
    message = f"Labelled {what} **{label}** as {operator.name}. Undo with U."
    if label == "good":
        factor = data.settings().trainer.second_opinion_above
        try:
            with data.engine().connect() as conn:
                waiting = awaiting_second_opinion(conn, second_opinion_above=factor, inspection_ids=list(ids))
        except SQLAlchemyError:
            waiting = []  # the labels are stored; only this hint is lost
        if waiting:
            message += (f" {len(waiting)} of them scored above {factor:g} × threshold and train a model only once "
                        "a different operator confirms them good too.")
    st.session_state[_FLASH] = ("ok", message)


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


def _second_opinion_note(row, confirmed_by: list[str], s) -> str | None:
    """Why a frame scored far above the threshold needs a second operator, and who confirmed it so far."""
    factor = s.trainer.second_opinion_above
    if factor is None or row.normalized_score <= factor:
        return None
    text = (f"Scored {row.normalized_score:.2f} × threshold (above {factor:g} ×): a good label trains a model only "
            "once two different operators confirm it.")
    if confirmed_by:
        text += f" Confirmed good so far by {', '.join(confirmed_by)}; a different operator must confirm."
    return text


def _why_not_good(row, operator: auth.Operator | None, confirmed_by: list[str], s) -> str | None:
    """Why this operator cannot label the frame good now (None: they can)."""
    if operator is not None and operator.name in confirmed_by:
        return "You confirmed this frame good already; a different operator must confirm it."
    path = images.kept_file(row.image_uri, s.image_store_root) if row.image_uri else None
    if path is None or not path.is_file():
        return "Not offered as good: the kept image is missing from the image store."
    return None
