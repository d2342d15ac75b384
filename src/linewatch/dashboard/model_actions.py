"""The Models page's decisions: activate a version, roll back, re-announce the active version; and the rollout
check that shows when the registry, the models topic and the workers disagree (:mod:`.model_review`).

Only an engineer (``auth.may(operator, "engineer")``) sees the buttons. Each asks for a confirmation; the action
runs in the confirmation's callback, which asks ``auth.may`` again with the operator of that moment (a callback
runs for a click on a button the page no longer draws, so the check there is the one that counts). The actions
are the registry's own (:class:`linewatch.trainer.registry.ModelRegistry`, the same as ``linewatch model
activate`` / ``rollback``), each acting on the product of the version it names and on no other (the page shows one
product's versions), recording the operator's name as who did it: an activation or rollback whose
announcement fails on every try is rolled back in SQL and shown as "Not done", with why; with no broker accepting a
connection (:func:`.alarm_watch.broker_problem`), no action is tried and "Not done" says so at once.
"""

from __future__ import annotations

import time

import streamlit as st
from kafka.errors import KafkaError
from sqlalchemy.exc import SQLAlchemyError

from linewatch.contracts.products import DEFAULT_PRODUCT
from linewatch.contracts.schema import ModelVersion
from linewatch.trainer.registry import ModelRegistry, RegistryError
from linewatch.trainer.rollout import current_announcement

from . import auth, data, views
from .alarm_watch import broker_problem
from .model_review import ROLLOUT_WINDOW_S, UNKNOWN, compared_workers, disagreements, product_of, unix_time

_CONFIRM = "lw_model_confirm"  # (action, version) waiting for "Yes"
_RESULT = "lw_model_result"  # (ok, message) of the last action, shown once
TOPIC_READ_S = 5.0  # at most this long for the models topic on each check


def _registry() -> ModelRegistry:
    return ModelRegistry.for_settings(data.settings(), data.engine())


def _ask(action: str, version: str) -> None:
    st.session_state[_CONFIRM] = (action, version)


def _cancel() -> None:
    st.session_state.pop(_CONFIRM, None)


def _run(action: str, version: str) -> None:
    """The confirmation's callback: check the role again, then act through the registry."""
    st.session_state.pop(_CONFIRM, None)
    operator = auth.current_operator(data.settings())
    if not auth.may(operator, "engineer"):
        who = f"{operator.name} is {operator.role}" if operator else "not signed in"
        st.session_state[_RESULT] = (False, f"Refused: only an engineer may {action.replace('_', ' ')} a model "
                                            f"({who}). Nothing was changed.")
        return
    # Each action announces on the models topic, and an announcement to a broker that is gone is tried for minutes
    # (trainer.announce_*) while the page waits: a broker that refuses the connection, or does not accept it within
    # alarm_watch.BROKER_CONNECT_TIMEOUT_S, is said at once instead.
    down = broker_problem(data.settings().kafka.bootstrap_servers)
    if down:
        st.session_state[_RESULT] = (False, f"Not done: the Kafka broker does not answer ({down}), so the workers "
                                            "could not be told. Nothing was changed; try again once it answers.")
        return
    registry = _registry()
    product = product_of(version)  # every action is on the product of the version it names, and on no other
    try:
        if action == "activate":
            row = registry.activate(version, operator.name, notes=f"activated from the dashboard by {operator.name}")
            done = f"{row.version} is active (activated by {operator.name}) and announced to the workers."
        elif action == "roll_back":
            row = registry.rollback(operator.name, to=version, product=product)
            done = f"Rolled back: {row.version} is active again (by {operator.name}) and announced to the workers."
        else:
            row = registry.reannounce(operator.name, product=product)
            done = f"{row.version} announced again by {operator.name}; workers switch between two batches."
    except RegistryError as exc:
        st.session_state[_RESULT] = (False, f"Not done: {exc}")
    except KafkaError as exc:  # re-announcing (an activation whose announcement fails is rolled back: RegistryError)
        st.session_state[_RESULT] = (False, f"Announcing {version} failed again ({type(exc).__name__}: {exc}); "
                                            "try Re-announce once the broker answers.")
    except SQLAlchemyError as exc:
        st.session_state[_RESULT] = (False, f"Not done: the registry cannot be written: {views.explain(exc)}")
    else:
        st.session_state[_RESULT] = (True, done)
    _announced.clear()  # the next check reads the topic again


def _previous(versions: list[ModelVersion], active: ModelVersion | None) -> ModelVersion | None:
    """The version a rollback returns to: the most recently activated retired one (as the registry picks it)."""
    retired = [v for v in versions if v.status == "retired" and v.activated_at is not None
               and (active is None or v.version != active.version)]
    return max(retired, key=lambda v: v.activated_at, default=None)


def actions(versions: list[ModelVersion], active: ModelVersion | None) -> None:
    """The engineer's buttons (nothing for anyone else but a caption), the confirmation and the last result;
    ``versions`` newest first."""
    operator = auth.current_operator(data.settings())
    result = st.session_state.pop(_RESULT, None)
    if result is not None:
        (st.success if result[0] else st.error)(result[1])
    if not auth.may(operator, "engineer"):
        st.caption("Activating, rolling back and re-announcing models needs an engineer's sign-in.")
        return
    with st.container(key="lw_model_actions"):
        pending = st.session_state.get(_CONFIRM)
        if pending is not None and pending[1] not in {v.version for v in versions}:
            st.session_state.pop(_CONFIRM)  # asked on another product's page: not this page's question
            pending = None
        if pending is not None:
            _confirmation(*pending, active)
            return
        left, middle, right = st.columns(3)
        others = [v.version for v in versions if active is None or v.version != active.version]
        with left:
            choice = st.selectbox("Version to activate", others, key="lw_model_choice") if others else None
            st.button(f"Activate {choice}…" if choice else "Activate…", key="lw_model_activate",
                      disabled=choice is None, on_click=_ask, args=("activate", choice))
        previous = _previous(versions, active)
        with middle:
            st.button(f"Roll back to {previous.version}…" if previous else "Roll back…", key="lw_model_roll_back",
                      disabled=previous is None, on_click=_ask, args=("roll_back", previous.version if previous
                                                                      else ""),
                      help=None if previous else "No earlier active version.")
        with right:
            st.button(f"Re-announce {active.version}…" if active else "Re-announce…", key="lw_model_reannounce",
                      disabled=active is None, on_click=_ask, args=("re_announce", active.version if active else ""))


def _confirmation(action: str, version: str, active: ModelVersion | None) -> None:
    now = active.version if active else "none"
    question = {"activate": f"Activate {version}? It replaces {now}; the workers switch between two batches.",
                "roll_back": f"Roll back from {now} to {version}? The workers switch between two batches.",
                "re_announce": f"Announce {version} to the workers again?"}[action]
    yes = {"activate": f"Yes, activate {version}", "roll_back": f"Yes, roll back to {version}",
           "re_announce": f"Yes, re-announce {version}"}[action]
    st.warning(question)
    left, right = st.columns(2)
    left.button(yes, key="lw_model_yes", type="primary", on_click=_run, args=(action, version))
    right.button("Cancel", key="lw_model_cancel", on_click=_cancel)


@st.cache_data(ttl=5, show_spinner=False)
def _announced(bootstrap: str, topic: str, product: str) -> str | None:
    ann = current_announcement(data.settings().kafka, timeout_s=TOPIC_READ_S, product=product)
    return ann.version if ann is not None else None


@st.cache_data(ttl=5, show_spinner=False)
def _broker_down(bootstrap: str) -> str | None:
    """:func:`.alarm_watch.broker_problem`, probed at most once in 5 s for all sessions (a TCP connect each)."""
    return broker_problem(bootstrap)


@st.fragment(run_every=5)
def rollout_check(product: str = DEFAULT_PRODUCT) -> None:
    """Registry, models topic and workers on ``product``'s active version (its key on the topic, what the workers
    report of that product): an alarm-coloured line per disagreement (after the rollout window), with "Re-announce
    vN" for an engineer where announcing again is the remedy (it opens the confirmation of :func:`actions`).
    Refreshes itself every 5 s."""
    s = data.settings()
    try:
        active = next((v for v in data.model_versions(data.engine(), product=product) if v.status == "active"), None)
    except SQLAlchemyError as exc:
        st.caption(f"The registry cannot be read: {views.explain(exc)}")
        return
    announced = UNKNOWN
    down = _broker_down(s.kafka.bootstrap_servers)  # a refused connection at once (reading waits for its timeout)
    if down:
        st.caption(f"The models topic cannot be read (the Kafka broker does not answer: {down}); the workers' "
                   "heartbeats are checked.")
    elif s.kafka.bootstrap_servers:
        try:
            announced = _announced(s.kafka.bootstrap_servers, s.kafka.models_topic, product)
        except Exception as exc:  # noqa: BLE001 -- KafkaError, TimeoutError: the check says what it could not read
            st.caption(f"The models topic cannot be read ({type(exc).__name__}); the workers' heartbeats are checked.")
    reader = data.live()
    try:
        workers = reader.workers() if reader is not None else []
    except Exception as exc:  # noqa: BLE001 -- redis.RedisError: no workers to compare
        st.caption(f"The workers' heartbeats cannot be read: {views.explain(exc)}")
        workers = []
    activated = unix_time(active.activated_at) if active is not None else None
    found = disagreements(active.version if active else None, activated, announced, workers, time.time())
    if not found:
        if active is not None and activated is not None and time.time() - activated <= ROLLOUT_WINDOW_S:
            st.caption(f"Rollout of {active.version} in progress: registry, models topic and workers are compared "
                       f"from {ROLLOUT_WINDOW_S:.0f} s after its activation (a normal rollout takes seconds).")
        elif active is not None:  # agreement is claimed only of the parties that were read
            parties = ["Registry", *(["models topic"] if announced is not UNKNOWN else []),
                       *(["workers"] if compared_workers(workers, product_of(active.version)) else [])]
            agree = (f"{', '.join(parties[:-1])} and {parties[-1]} agree on {active.version}" if len(parties) > 1
                     else f"Registry: {active.version} is active; nothing else to compare it with")
            st.caption(f"{agree} (checked {ROLLOUT_WINDOW_S:.0f} s after an activation: a normal rollout takes "
                       "seconds).")
        return
    with st.container(key="lw_model_disagreement"):
        for d in found:
            st.error(d.text, icon=":material/sync_problem:")
        if any(d.reannounce_fixes for d in found) and auth.may(auth.current_operator(s), "engineer"):
            if st.button(f"Re-announce {active.version}…", key="lw_model_fix", type="primary"):
                _ask("re_announce", active.version)
                st.rerun()  # the whole page: the confirmation is drawn with the other actions
