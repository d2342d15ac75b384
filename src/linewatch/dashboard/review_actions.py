"""What the Review page's buttons do: label, bulk "good" with its confirmation, undo; and the on-screen guard.

Every button carries the inspection ids of the frames it is drawn beside, never "whatever is first in the queue
at click time". A click labels a frame only once that frame has been in the clicked place on screen for
``dashboard.review_min_view_s``, counted from the end of the run that drew the whole page (a run cut short by
the next click records nothing): when the first of two quick clicks (field case c32: 150-250 ms apart) labels a
frame and the page puts the next frame where it was, the second click lands on a frame nobody has looked at, and
is refused. That guard runs on the server, which cannot see when the browser drew the frame: a server slowed
down by load can take a click that came 200 ms after the frame appeared for one that came after 0.5 s. So the
browser keeps its own guard as well (``arming_style``): a frame's buttons ignore the pointer for
``dashboard.review_min_view_s`` after they appear, counted by the browser from the moment it draws them. A
second click on the same frame is a no-op in the database (``contracts.labels.record_labels``). Messages go to
the next run of the page (``flash``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from linewatch.contracts.labels import awaiting_second_opinion

from . import auth, data, views

_FLASH = "lw_review_flash"
_SHOWN = "lw_review_shown"  # place -> (inspection id, time.monotonic() when it was drawn there)
_UNDONE = "lw_review_undone_at"  # time.monotonic() of this session's last undo
_PENDING = "lw_review_bulk_pending"  # (ids, time.monotonic() of the request) of a bulk "good" awaiting "yes"


def flash(kind: str, message: str) -> None:
    """Show ``message`` (kind: ok | warn | error) on the page's next run."""
    st.session_state[_FLASH] = (kind, message)


def take_flash() -> tuple[str, str] | None:
    return st.session_state.pop(_FLASH, None)


def shown(places: Sequence[tuple[str, int]]) -> None:
    """Record, for each place of the page drawn in this run, which frame is there and since when (a frame that
    leaves a place and comes back, e.g. after undo, starts again)."""
    seen: dict[str, tuple[int, float]] = st.session_state.setdefault(_SHOWN, {})
    now = time.monotonic()
    drawn = dict(places)
    for place in [p for p in seen if p not in drawn]:
        del seen[place]
    for place, inspection_id in drawn.items():
        if seen.get(place, (None,))[0] != inspection_id:
            seen[place] = (inspection_id, now)


def arming_style(ids: Sequence[int], min_view_s: float, bulk_asked_at: float | None = None) -> str:
    """CSS that keeps the label buttons of the frames ``ids`` (and the bulk "yes", asked at ``bulk_asked_at``,
    a ``time.monotonic()``) deaf to the pointer for ``min_view_s`` seconds from when the browser draws them.

    Each frame gets its own animation name, so the guard restarts whenever a button comes to show another frame,
    even when the browser re-uses the button's element (an animation restarts only when its name changes).
    Keyboard shortcuts are not covered here; the server's check in ``label`` covers every click."""
    if min_view_s <= 0:
        return ""
    ms = round(min_view_s * 1000)
    rules = []
    targets = [(f"lw-arm-{i}", [f".st-key-lw_good_{i}", f".st-key-lw_defect_{i}", f".st-key-lw_pick_{i}"])
               for i in ids]
    if bulk_asked_at is not None:
        targets.append((f"lw-arm-bulk-{round(bulk_asked_at * 1000)}", [".st-key-lw_bulk_yes"]))
    for name, selectors in targets:
        rules.append(f"@keyframes {name} {{from {{pointer-events: none;}} to {{pointer-events: none;}}}}")
        rules.append(", ".join(f"{sel}, {sel} *" for sel in selectors) + f" {{animation: {name} {ms}ms step-end;}}")
    return "<style>\n" + "\n".join(rules) + "\n</style>"


def _refusal(place: str, inspection_id: int, min_view_s: float) -> str | None:
    """Why a click at ``place`` on ``inspection_id`` labels nothing (None: it may label)."""
    entry = st.session_state.get(_SHOWN, {}).get(place)
    if entry is None or entry[0] != inspection_id:
        return (f"Nothing labelled: frame {inspection_id} was not settled in that place when the click came (the "
                "page was changing under the click).")
    seen_s = time.monotonic() - entry[1]
    if seen_s < min_view_s:
        return (f"Nothing labelled: frame {inspection_id} had been on screen there for only {seen_s * 1000:.0f} ms "
                "when the click came (a double click?). Look at it, then click again.")
    return None


def labeller(s) -> auth.Operator | None:
    """The operator of this session if they may label (role operator or above); else None, with the reason
    flashed. Every callback that stores or takes back a label asks this on the server, whatever the page drew."""
    operator = auth.current_operator(s)
    if operator is None:
        flash("error", "Sign in before labelling.")
        return None
    if not auth.may(operator, "operator"):
        flash("error", f"Nothing labelled: {operator.name} is a viewer, and viewers cannot label.")
        return None
    return operator


def label(ids: list[int], value: str, place: str) -> None:
    """Button callback: ``operator`` labels the frames ``ids`` drawn at ``place`` as ``value`` (good | defect).
    Refused (nothing stored) when the person may not label (:func:`labeller`) or the frame has not been in that
    place for ``dashboard.review_min_view_s``."""
    s = data.settings()
    operator = labeller(s)
    if operator is None:
        return
    for inspection_id in ids:
        refusal = _refusal(place, inspection_id, s.dashboard.review_min_view_s)
        if refusal:
            flash("warn", refusal)
            return
    _store(ids, value, operator)


def _store(ids: list[int], value: str, operator: auth.Operator) -> None:
    try:
        n = data.add_labels(data.engine(), ids, value, operator.name)
    except (SQLAlchemyError, ValueError) as exc:
        flash("error", f"The label was not stored: {views.explain(exc)}")
        return
    if n == 0:
        what = f"Frame {ids[0]} already carries" if len(ids) == 1 else "These frames already carry"
        flash("ok", f"{what} your label **{value}**: nothing changed.")
        return
    what = f"frame {ids[0]}" if len(ids) == 1 else f"{n} frames"
    message = f"Labelled {what} **{value}** as {operator.name}. Undo with U."
    if value == "good":
        factor = data.settings().trainer.second_opinion_above
        try:
            with data.engine().connect() as conn:
                waiting = awaiting_second_opinion(conn, second_opinion_above=factor, inspection_ids=list(ids))
        except SQLAlchemyError:
            waiting = []  # the labels are stored; only this hint is lost
        if waiting:
            message += (f" {len(waiting)} of them scored above {factor:g} × threshold and train a model only once "
                        "a different operator confirms them good too.")
    flash("ok", message)


def bulk_request(ids: list[int]) -> None:
    """First step of bulk "good": remember exactly which frames were listed; nothing is stored yet."""
    st.session_state[_PENDING] = (tuple(ids), time.monotonic())


def bulk_pending() -> tuple[int, ...] | None:
    pending = st.session_state.get(_PENDING)
    return pending[0] if pending else None


def bulk_asked_at() -> float | None:
    """``time.monotonic()`` of the pending bulk "good" request (None: none pending)."""
    pending = st.session_state.get(_PENDING)
    return pending[1] if pending else None


def bulk_cancel() -> None:
    st.session_state.pop(_PENDING, None)
    flash("ok", "Bulk label cancelled: nothing stored.")


def bulk_confirm(ids: list[int]) -> None:
    """Second step: label the listed frames that are still on the page good (one action, one undo), if the
    question was on screen long enough to be read (a double click on the first step does not answer it)."""
    s = data.settings()
    pending = st.session_state.get(_PENDING)
    operator = labeller(s)
    if operator is None:
        return
    if pending is None or tuple(ids) != pending[0]:
        flash("warn", "Nothing labelled: that confirmation is no longer current.")
        return
    if time.monotonic() - pending[1] < s.dashboard.review_min_view_s:
        flash("warn", "Nothing labelled: the confirmation was answered before it could be read. Read it, then "
                      "confirm again.")
        return
    st.session_state.pop(_PENDING, None)
    # Only frames still on the page: one labelled one by one since the question was asked keeps that label.
    drawn = {inspection_id for inspection_id, _ in st.session_state.get(_SHOWN, {}).values()}
    still = [i for i in ids if i in drawn]
    if not still:
        flash("warn", "Nothing labelled: none of those frames is on the page any more.")
        return
    _store(still, "good", operator)


def undo() -> None:
    """Take back the operator's last action; a second undo within ``dashboard.review_min_view_s`` of the first
    (a double click) is refused, so it never takes back an older action unseen."""
    s = data.settings()
    operator = labeller(s)
    if operator is None:
        return
    last = st.session_state.get(_UNDONE)
    if last is not None and time.monotonic() - last < s.dashboard.review_min_view_s:
        flash("warn", "Undo clicked twice in quick succession: only the first undo was done.")
        return
    st.session_state[_UNDONE] = time.monotonic()
    try:
        ids = data.undo_last(data.engine(), operator.name)
    except SQLAlchemyError as exc:
        flash("error", f"Undo failed: {views.explain(exc)}")
        return
    if ids:
        what = f"frame {ids[0]}" if len(ids) == 1 else f"{len(ids)} frames"
        flash("ok", f"Undone: the label of {what} is taken back; it is back in the queue.")
    else:
        flash("ok", "Nothing to undo.")
