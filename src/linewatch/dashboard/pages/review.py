"""Review: the frames that need a person (``dashboard/review_queue.py``), opened for the operator who looks.

The queue holds kept frames of the product chosen in the sidebar (``dashboard/products.py``) scored in the
uncertain band around the threshold, a sample of confident ones, and good labels waiting for a second operator;
oldest first or most uncertain first. The frames on an operator's page
are claimed by them (nobody else is offered them) and stay in place until labelled. Marking a frame good (a false
alarm, or a confirmed good part) makes it training material; defect confirms the model. A frame the model scored
more than ``trainer.second_opinion_above`` x its threshold needs "good" from a second, different operator
(``contracts.labels``). A frame whose kept image is missing is never offered as good. Bulk "good" leaves out the
frames the model flagged unless each is ticked, and asks for confirmation. Each button carries its frame's id;
what a click may label is decided in ``dashboard/review_actions.py``. Keys: G good, D defect, U undo (on the
frame shown first). Defect is the red (primary) button; Good is green.
"""

from __future__ import annotations

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from linewatch.contracts.labels import good_operator_names

from .. import auth, data, images, products, review_actions, views
from ..review_queue import QueueRule, claim, waiting, waiting_count
from ..windows import fmt

COLUMNS = 4
KINDS = {"All": "all", "Flagged defects": "defect", "Sampled good": "good"}
ORDERS = {"Oldest first": "oldest", "Most uncertain first": "uncertain"}
# Good is never the red (primary) button: a neutral button with a green edge and text.
_STYLE = """<style>
[class*="st-key-lw_good_"] button {border-color: #1e8e3e; color: #1e6b34; background-color: #e6f4ea;}
[class*="st-key-lw_good_"] button:hover {border-color: #1e6b34; color: #124d24; background-color: #cfead7;}
/* At phone width the columns stack: the decision (buttons, then the facts) comes before the two images, so
   Good/Defect are reached without scrolling past them. */
@media (max-width: 640px) {
  .st-key-lw_review_current [data-testid="stColumn"]:has(.st-key-lw_review_decide) {order: -1;}
}
</style>"""


def render() -> None:
    """The Review page."""
    s = data.settings()
    zone = s.dashboard.timezone
    db = data.engine()
    person = auth.current_operator(s)
    # A viewer sees what an anonymous visitor sees: no label buttons, no frames held (review_actions refuses a
    # viewer's label on the server too).
    operator = person if auth.may(person, "operator") else None
    st.html(_STYLE)
    st.title("Review")
    product = products.selected()
    left, right = st.columns(2)
    kind = KINDS[left.segmented_control("Show", list(KINDS), default="All", key="lw_review_kind",
                                        required=True) or "All"]
    order = ORDERS[right.segmented_control("Order", list(ORDERS), default="Oldest first", key="lw_review_order",
                                           required=True) or "Oldest first"]
    rule = QueueRule.from_settings(s)
    name = operator.name if operator else None
    try:
        if name is None:
            rows = waiting(db, rule, None, kind, order, s.dashboard.page_size, product=product)
        else:
            rows = claim(db, rule, name, kind, order, s.dashboard.page_size, s.dashboard.review_claim_s,
                         product=product)
        waiting_n = waiting_count(db, rule, name, kind, product=product)
        ready = data.ready_for_retraining(db, product)
        with db.connect() as conn:
            confirmed_by = good_operator_names(conn, [r.id for r in rows]) if rows else {}
    except SQLAlchemyError as exc:
        st.error(f"The review queue cannot be shown: {views.explain(exc)}")
        return
    c1, c2, c3 = st.columns([1, 1, 2])
    c1.metric("Awaiting review", f"{waiting_n:,}",
              help=f"Kept frames of {products.label(product)} that need a person: scored between "
                   f"{rule.band[0]:g} and {rule.band[1]:g} × threshold, " +
                   (f"one in {rule.sample_every} of the confident ones, " if rule.sample_every else "") +
                   "and good labels waiting for a second operator; less those open on another operator's page.")
    c2.metric("Ready for retraining", f"{ready:,}",
              help=f"Confirmed-good images of {products.label(product)} the trainer may learn from; it retrains a "
                   f"product after {s.trainer.min_new_good} new ones of it.")
    with c3:
        _operator_bar(person, s)
    flash = review_actions.take_flash()
    with st.container():  # a fixed slot, so the elements below keep their places across reruns
        if flash:
            {"error": st.error, "warn": st.warning}.get(flash[0], st.success)(flash[1])
    if not rows:
        review_actions.shown([])  # nothing on screen: no earlier frame's place stands
        st.success("Nothing awaits review. Kept frames scored near the threshold, and a sample of the others, "
                   "appear here as the workers store them.")
        return
    first, rest = rows[0], rows[1:]
    guard = review_actions.arming_style([r.id for r in rows], s.dashboard.review_min_view_s,
                                        review_actions.bulk_asked_at())
    if operator is not None and guard:  # drawn before the buttons, so that they arrive guarded
        st.html(guard)
    blocked = {r.id: _why_not_good(r, s) for r in rows}
    with st.container(border=True, key="lw_review_current"):
        _current(first, operator, blocked[first.id], confirmed_by.get(first.id, []), s, zone)
    if rest:
        st.subheader("Also waiting")
    for start in range(0, len(rest), COLUMNS):
        for col, (i, row) in zip(st.columns(COLUMNS), list(enumerate(rest))[start:start + COLUMNS], strict=False):
            with col, st.container(border=True, key=f"lw_review_{row.id}"):
                _tile(row, f"tile{i}", operator, blocked[row.id], confirmed_by.get(row.id, []), s, zone)
    if operator is not None:
        _bulk(rows, blocked, operator)
    st.caption(f"Showing {len(rows)} of {waiting_n:,} waiting" + (
        f", open for you for {s.dashboard.review_claim_s:g} s: label them and the next ones follow."
        if operator else "."))
    # Last, once the whole page is drawn: a click counts the time a frame was on screen from here.
    review_actions.shown([("current", first.id)] + [(f"tile{i}", r.id) for i, r in enumerate(rest)])


def _current(row, operator, blocked: str | None, confirmed_by: list[str], s, zone: str) -> None:
    left, middle, right = st.columns([2, 2, 2])
    with left:
        views.kept_image(row.heatmap_uri, "heatmap overlay")
    with middle:
        views.kept_image(row.image_uri, "original")
    with right, st.container(key="lw_review_decide"):
        verdict_colour = "red" if row.verdict == "defect" else "green"
        st.markdown(f"**Next to review** · frame {row.id} · model says :{verdict_colour}[**{row.verdict}**]")
        if operator is not None:  # the buttons above the facts: always at the same place, near the top
            a, b = st.columns(2)
            a.button("Good", key=f"lw_good_{row.id}", shortcut="G", icon=":material/check:",
                     on_click=review_actions.label, args=([row.id], "good", "current"), width="stretch",
                     disabled=blocked is not None,
                     help=blocked or "A false alarm, or a confirmed good part: the trainer may learn from it.")
            b.button("Defect", key=f"lw_defect_{row.id}", type="primary", shortcut="D", icon=":material/close:",
                     on_click=review_actions.label, args=([row.id], "defect", "current"), width="stretch",
                     help="The part is defective: the model was right.")
            _pick(row, blocked)
        views.facts_table(row, zone)
        note = _second_opinion_note(row, confirmed_by, s)
        if note:
            st.warning(note, icon=":material/group:")


def _tile(row, place: str, operator, blocked: str | None, confirmed_by: list[str], s, zone: str) -> None:
    views.kept_image(row.heatmap_uri)
    colour = "red" if row.verdict == "defect" else "green"
    st.markdown(f":{colour}[**{views.score_text(row.normalized_score, row.verdict)}**]  \n"
                f"{row.camera_id} · frame {row.frame_id} · {fmt(row.captured_at, zone)}")
    note = _second_opinion_note(row, confirmed_by, s)
    if note:
        st.caption(f":orange[{note}]")
    if operator is not None:
        a, b = st.columns(2)
        a.button("Good", key=f"lw_good_{row.id}", on_click=review_actions.label, args=([row.id], "good", place),
                 width="stretch", disabled=blocked is not None, help=blocked)
        b.button("Defect", key=f"lw_defect_{row.id}", type="primary", on_click=review_actions.label,
                 args=([row.id], "defect", place), width="stretch")
        _pick(row, blocked)
    if st.button("Details", key=f"lw_review_details_{row.id}", type="tertiary"):
        views.detail(row.id)


def _pick(row, blocked: str | None) -> None:
    """A flagged frame joins bulk "good" only when ticked, one by one."""
    if row.verdict == "defect" and blocked is None:
        st.checkbox("Include in bulk good", key=f"lw_pick_{row.id}",
                    help="The model flagged this frame as a defect: bulk good leaves it out unless ticked.")


def _bulk(rows, blocked: dict[int, str | None], operator: auth.Operator) -> None:
    flagged = [r.id for r in rows if r.verdict == "defect" and blocked[r.id] is None]
    picked = [i for i in flagged if st.session_state.get(f"lw_pick_{i}")]
    ids = [r.id for r in rows if blocked[r.id] is None and (r.verdict != "defect" or r.id in picked)]
    pending = review_actions.bulk_pending()
    st.button(f"Label {len(ids)} shown as good…", key="lw_bulk_good", icon=":material/done_all:",
              on_click=review_actions.bulk_request, args=(ids,), disabled=not ids or pending is not None,
              help="Asks for confirmation, then labels these frames good in one action (one undo takes it back). "
                   "Frames the model flagged as defects are left out unless ticked one by one; frames that cannot "
                   "be labelled good now are left out.")
    if len(flagged) > len(picked):
        st.caption(f"{len(flagged) - len(picked)} frame(s) the model flagged are left out of bulk good; tick "
                   "\"Include in bulk good\" on each one to include it.")
    if pending is not None:
        with st.container(border=True, key="lw_bulk_confirm"):
            n = f"{len(pending)} frame" + ("s" if len(pending) != 1 else "")
            st.warning(f"Label {'these' if len(pending) != 1 else 'this'} {n} **good** as {operator.name}? "
                       f"Frame ids: {', '.join(str(i) for i in pending)}.", icon=":material/help:")
            yes, no = st.columns(2)
            yes.button(f"Yes, label {n} good", key="lw_bulk_yes",
                       on_click=review_actions.bulk_confirm, args=(list(pending),), width="stretch")
            no.button("Cancel", key="lw_bulk_cancel", on_click=review_actions.bulk_cancel, width="stretch")


def _operator_bar(operator: auth.Operator | None, s) -> None:
    if operator is None:
        if auth.mode(s) == "name":
            st.info("Type your name in the sidebar to label frames.")
        else:
            st.info("Sign in (sidebar) to label frames. Anyone may look.")
        return
    if not auth.may(operator, "operator"):
        st.info(f"Signed in as **{operator.name}**, a viewer: viewers may look but not label.")
        return
    st.caption(f"Labelling as **{operator.name}**" + ("" if operator.verified else " (name typed, not signed in)"))
    st.button("Undo my last label", key="lw_undo", shortcut="U", icon=":material/undo:", on_click=review_actions.undo)


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


def _why_not_good(row, s) -> str | None:
    """Why the frame cannot be labelled good now (None: it can). Frames an operator labelled are never on their
    page (``review_queue``), so a second good from the same operator cannot be offered."""
    path = images.kept_file(row.image_uri, s.image_store_root) if row.image_uri else None
    if path is None or not path.is_file():
        return "Not offered as good: the kept image is missing from the image store."
    return None
