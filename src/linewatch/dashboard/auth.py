"""Who is at the dashboard, and whether they may label.

Three modes, chosen by the settings:

- ``oidc`` (``dashboard.oidc``): Streamlit's built-in OpenID Connect login (``st.login``), configured in
  ``.streamlit/secrets.toml``; the operator is the identity token's email (or name, or subject).
- ``accounts`` (``dashboard.accounts_file``): a sign-in form checked against the accounts file.
- ``name``: neither is configured; operators type their name before they can label.

In the first two modes anonymous viewers can look at every page but cannot label.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import streamlit as st

from linewatch.contracts.settings import Settings

from .accounts import AccountsError, account_roles, check_login, load_accounts

Mode = Literal["oidc", "accounts", "name"]
# What a person may do, each role including the ones before it: a viewer looks; an operator also labels
# frames; an engineer also activates, rolls back and re-announces models.
Role = Literal["viewer", "operator", "engineer"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "engineer")

_SESSION_KEY = "lw_operator"
_NAME_KEY = "lw_operator_name"
_MAX_NAME = 128  # the width of labels.operator


@dataclass(frozen=True)
class Operator:
    """A person at the dashboard. ``verified``: signed in (OIDC or accounts file), not just a typed name;
    ``role``: what they may do (``ROLES``)."""

    name: str
    verified: bool
    role: Role = "operator"


def may(operator: Operator | None, needed: Role) -> bool:
    """Whether ``operator`` (None: an anonymous viewer) holds ``needed`` or a role above it."""
    have = operator.role if operator is not None else "viewer"
    return ROLES.index(have) >= ROLES.index(needed)


def _role(settings: Settings, name: str) -> Role:
    """``name``'s role in the accounts file, read at each run so that a changed role counts at the next click; an
    unreadable file or an unknown role gives the least: viewer."""
    try:
        role = account_roles(settings.dashboard.accounts_file).get(name, "viewer")
    except AccountsError:
        return "viewer"
    return role if role in ROLES else "viewer"


def mode(settings: Settings) -> Mode:
    """The authentication mode the settings select (OIDC wins over an accounts file)."""
    if settings.dashboard.oidc:
        return "oidc"
    if settings.dashboard.accounts_file is not None:
        return "accounts"
    return "name"


def current_operator(settings: Settings) -> Operator | None:
    """The operator of this browser session, or None for an anonymous viewer (who may not label)."""
    m = mode(settings)
    if m == "oidc":
        if not getattr(st.user, "is_logged_in", False):
            return None
        name = st.user.get("email") or st.user.get("name") or st.user.get("sub")
        return Operator(str(name)[:_MAX_NAME], True) if name else None
    if m == "accounts":
        name = st.session_state.get(_SESSION_KEY)
        return Operator(name, True, _role(settings, name)) if name else None
    typed = " ".join(str(st.session_state.get(_NAME_KEY) or "").split())[:_MAX_NAME]
    return Operator(typed, False) if typed else None


def sidebar(settings: Settings) -> Operator | None:
    """Render the sign-in (or name) controls in the sidebar; returns the current operator."""
    m = mode(settings)
    with st.sidebar:
        st.subheader("Operator")
        if m == "oidc":
            _oidc_controls(settings)
        elif m == "accounts":
            _accounts_controls(settings)
        else:
            st.text_input("Your name (needed to label)", key=_NAME_KEY, max_chars=_MAX_NAME,
                          placeholder="e.g. Maria Lopez")
            if not current_operator(settings):
                st.caption("Type your name to label frames. Labels record who made them.")
        operator = current_operator(settings)
        if operator and m != "name":
            st.caption(f"Signed in as **{operator.name}**")
    return operator


def _oidc_controls(settings: Settings) -> None:
    provider = settings.dashboard.oidc_provider
    if getattr(st.user, "is_logged_in", False):
        if st.button("Sign out", key="lw_logout"):
            st.logout()
        return
    st.caption("Sign in to label frames. Anyone may look.")
    if st.button("Sign in", key="lw_login", type="primary"):
        try:
            st.login(provider) if provider else st.login()
        except Exception as exc:  # noqa: BLE001 -- Streamlit raises several kinds for a bad auth set-up
            st.error(f"Sign-in is not configured correctly: {exc}")


def _accounts_controls(settings: Settings) -> None:
    if st.session_state.get(_SESSION_KEY):
        if st.button("Sign out", key="lw_logout"):
            del st.session_state[_SESSION_KEY]
            st.rerun()
        return
    st.caption("Sign in to label frames. Anyone may look.")
    with st.form("lw_login_form", clear_on_submit=True, enter_to_submit=True):
        name = st.text_input("Operator", key="lw_login_name")
        password = st.text_input("Password", type="password", key="lw_login_password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if not submitted:
        return
    try:
        accounts = load_accounts(settings.dashboard.accounts_file)
    except AccountsError as exc:
        st.error(f"Sign-in is unavailable: {exc}")
        return
    name = name.strip()
    if check_login(accounts, name, password):
        st.session_state[_SESSION_KEY] = name
        st.rerun()
    time.sleep(1.0)  # slows down password guessing from one session
    st.error("Unknown operator or wrong password.")
