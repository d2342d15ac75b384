"""Cameras: which product each camera shows now and since when, its changeover history (``camera_products``, read
and written only through :mod:`linewatch.contracts.changeovers`), and for an engineer a form to record a changeover
now, as ``linewatch camera product CAM PRODUCT`` does.

Recording a changeover is an engineer's action (``auth.may(operator, "engineer")``, checked again when the form is
sent): it decides which product's model inspects a camera's frames, as activating a model decides which model
inspects a product's. Frames carrying their own ``product`` header keep it whatever the changeovers say.
"""

from __future__ import annotations

import datetime as dt

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from linewatch.contracts.changeovers import CameraProducts, Changeover, ChangeoverError, changeovers, record_changeover

from .. import auth, data, products, views
from ..windows import fmt

_RESULT = "lw_changeover_result"  # (ok, message) of the last changeover sent, shown once


@st.cache_data(ttl=10, show_spinner=False)
def _cameras(url: str) -> dict[str, str]:
    return data.sql_cameras(data.engine())


def render() -> None:
    """The Cameras page."""
    s = data.settings()
    zone = s.dashboard.timezone
    st.title("Cameras")
    try:
        lines = _cameras(s.database_url)
        history = changeovers(data.engine())
    except SQLAlchemyError as exc:
        st.error(f"The cameras and their changeovers cannot be read: {views.explain(exc)}")
        return
    fallback = s.products.cameras
    cams = sorted({*lines, *(c.camera_id for c in history), *fallback})
    now = dt.datetime.now(dt.UTC)
    routes = CameraProducts(history, fallback)
    st.subheader("Product now")
    if not cams:
        st.info("No camera has reported and no changeover is recorded yet.")
    else:
        st.table([{"camera": cam, "line": lines.get(cam, "—"), "product now": routes.product_at(cam, now),
                   "because": _because(cam, history, fallback, now, zone),
                   "next changeover": _next(cam, history, now, zone)} for cam in cams], hide_index=True)
    _form(cams, history)
    st.subheader("Changeover history")
    st.caption("Frames are routed by the changeover in force at their capture time; a frame's own product header "
               "wins over it.")
    for cam in cams:
        mine = [c for c in history if c.camera_id == cam]
        with st.container(border=True, key=f"lw_changeovers_{cam}"):
            st.markdown(f"**Camera {cam}**")
            if mine:
                st.table([{"from": fmt(c.since, zone), "product": c.product, "set by": c.set_by}
                          for c in reversed(mine)], hide_index=True)
            else:
                st.caption("No changeover recorded: " + (f"the settings map it to {fallback[cam]}." if cam in fallback
                                                          else "it shows the product default."))


def _because(cam: str, history: list[Changeover], fallback: dict[str, str], now: dt.datetime, zone: str) -> str:
    """Why a camera shows its product now: the changeover in force, else the settings, else the default."""
    past = [c for c in history if c.camera_id == cam and c.since <= now]
    if past:
        return f"changeover {fmt(past[-1].since, zone)} by {past[-1].set_by}"
    return "settings ([products] cameras)" if cam in fallback else "no changeover: default"


def _next(cam: str, history: list[Changeover], now: dt.datetime, zone: str) -> str:
    ahead = [c for c in history if c.camera_id == cam and c.since > now]
    return f"{ahead[0].product} from {fmt(ahead[0].since, zone)}" if ahead else "—"


def _form(cams: list[str], history: list[Changeover]) -> None:
    """An engineer's changeover, now: camera and product chosen from those known, or typed (a new camera, a new
    product); written through :func:`~linewatch.contracts.changeovers.record_changeover`."""
    s = data.settings()
    st.subheader("Record a changeover")
    result = st.session_state.pop(_RESULT, None)
    if result is not None:
        (st.success if result[0] else st.error)(result[1])
    if not auth.may(auth.current_operator(s), "engineer"):
        st.caption("Recording a changeover needs an engineer's sign-in: it decides which product's model inspects "
                   "the camera. (Or run `linewatch camera product CAM PRODUCT`.)")
        return
    try:
        known = products.known_products(data.engine())
    except SQLAlchemyError:
        known = []
    known = sorted({*known, *(c.product for c in history)})
    with st.container(key="lw_changeover"), st.form("lw_changeover_form", clear_on_submit=True, border=True):
        left, right = st.columns(2)
        cam = left.selectbox("Camera", cams, index=None, key="lw_changeover_camera", accept_new_options=True,
                             placeholder="choose or type a camera id")
        product = right.selectbox("Product from now on", known, index=None, key="lw_changeover_product",
                                  accept_new_options=True, placeholder="choose or type a product")
        sent = st.form_submit_button("Record changeover", type="primary")
    if sent:
        _record(cam, product)


def _record(cam: str | None, product: str | None) -> None:
    operator = auth.current_operator(data.settings())
    if not auth.may(operator, "engineer"):  # the role of this moment, not of when the form was drawn
        who = f"{operator.name} is {operator.role}" if operator else "not signed in"
        st.session_state[_RESULT] = (False, f"Refused: only an engineer may record a changeover ({who}). Nothing "
                                            "was recorded.")
    elif not cam or not product:
        st.session_state[_RESULT] = (False, "Choose a camera and a product. Nothing was recorded.")
    else:
        try:
            row = record_changeover(data.engine(), cam, product, operator.name)
            st.session_state[_RESULT] = (True, f"Camera {row.camera_id} shows {row.product} from "
                                               f"{fmt(row.since, data.settings().dashboard.timezone)} on (set by "
                                               f"{row.set_by}).")
        except ChangeoverError as exc:
            st.session_state[_RESULT] = (False, f"Not recorded: {exc}")
        except SQLAlchemyError as exc:
            st.session_state[_RESULT] = (False, f"Not recorded: the record cannot be written: {views.explain(exc)}")
    st.rerun()
