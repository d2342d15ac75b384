"""Who is at the dashboard, what they may do, and signing in and out.

Three modes, chosen by the settings:

- ``oidc`` (``dashboard.oidc``): Streamlit's built-in OpenID Connect login (``st.login``, which keeps its own
  cookie), configured in ``.streamlit/secrets.toml``; the operator is the identity token's email (or name, or
  subject); the role comes from ``dashboard.oidc_roles`` (email or group -> role, the highest match wins), else
  ``dashboard.oidc_default_role`` (viewer).
- ``accounts`` (``dashboard.accounts_file``): a sign-in form checked against the accounts file, which gives each
  person a role; the sign-in is kept in a signed, expiring cookie (:mod:`.session_cookie`), so it survives a
  reload. The role is read from the file on every page run.
- ``name``: neither is configured (the demo mode); operators type their name before they can label, and anyone
  who types one is an operator.

In the first two modes anonymous viewers can look at every page but cannot label. Signing out gives the
operator's open review frames back to the queue at once; in ``name`` mode, changing or clearing the typed name
does the same for the old name. In ``accounts`` mode a signed-in person can change their own password (sidebar);
a new password (there or by ``linewatch operator add``) signs out every other session of that account on its
next page run, and voids the cookies issued before.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Literal

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from linewatch.contracts.dashboard_settings import ROLES, Role
from linewatch.contracts.settings import Settings

from . import data, session_cookie
from .accounts import Account, AccountsError, check_login, load_accounts, set_password
from .review_queue import release

__all__ = ["ROLES", "Mode", "Operator", "Role", "current_operator", "may", "mode", "sidebar"]

Mode = Literal["oidc", "accounts", "name"]

# accounts mode: (name, signed in at in Unix seconds, digest of the password hash it was signed in with)
_SESSION_KEY = "lw_operator"
_SIGNED_OUT = "lw_signed_out"  # accounts mode: signed out in this session; the cookie sent with the page is void
_COOKIE_CHECKED = "lw_cookie_checked"
_COOKIE_WRITE = "lw_cookie_write"  # token to store in the browser on the next run ("" = delete the cookie)
_NOTICE = "lw_auth_notice"
_NAME_KEY = "lw_operator_name"
_NAME_HELD = "lw_operator_name_held"  # name mode: the name this session labelled under at its last run
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


def mode(settings: Settings) -> Mode:
    """The authentication mode the settings select (OIDC wins over an accounts file)."""
    if settings.dashboard.oidc:
        return "oidc"
    if settings.dashboard.accounts_file is not None:
        return "accounts"
    return "name"


def oidc_role(settings: Settings, user: Any) -> Role:
    """The role of the OIDC identity ``user`` (``st.user``: a mapping of the token's claims): the highest role
    ``dashboard.oidc_roles`` gives its email or one of its groups (claim ``dashboard.oidc_groups_claim``, a list
    or one string), matched case-insensitively; else ``dashboard.oidc_default_role``."""
    d = settings.dashboard
    table = {key.casefold(): role for key, role in d.oidc_roles.items()}
    groups = user.get(d.oidc_groups_claim) or []
    keys = [user.get("email") or "", *([groups] if isinstance(groups, str) else list(groups))]
    found = [table[str(k).casefold()] for k in keys if str(k).casefold() in table]
    return max(found, key=ROLES.index) if found else d.oidc_default_role


def current_operator(settings: Settings) -> Operator | None:
    """The operator of this browser session, or None for an anonymous viewer (who may not label)."""
    m = mode(settings)
    if m == "oidc":
        if not getattr(st.user, "is_logged_in", False):
            return None
        name = st.user.get("email") or st.user.get("name") or st.user.get("sub")
        return Operator(str(name)[:_MAX_NAME], True, oidc_role(settings, st.user)) if name else None
    if m == "accounts":
        return _account_operator(settings)
    typed = " ".join(str(st.session_state.get(_NAME_KEY) or "").split())[:_MAX_NAME]
    return Operator(typed, False, "operator") if typed else None


def _account_operator(settings: Settings) -> Operator | None:
    """The signed-in account of this session: signed in here, or by a valid cookie sent with the page; its role
    read from the accounts file now (an account removed since signs nobody in)."""
    try:
        accounts = load_accounts(settings.dashboard.accounts_file)
    except AccountsError:
        return None  # the sidebar says why nobody can sign in
    max_age_s = settings.dashboard.session_hours * 3600
    if _SESSION_KEY not in st.session_state and not st.session_state.get(_SIGNED_OUT) \
            and not st.session_state.get(_COOKIE_CHECKED):
        st.session_state[_COOKIE_CHECKED] = True
        token = st.context.cookies.get(session_cookie.COOKIE)
        if token:
            try:
                name, issued = session_cookie.verify(token, accounts, session_cookie.signing_key(settings), max_age_s)
                st.session_state[_SESSION_KEY] = (name, issued, _password_digest(accounts[name]))
            except ValueError as exc:  # CookieRefused, or an unusable key file
                st.session_state[_NOTICE] = f"Your earlier sign-in was not accepted ({exc}): sign in again."
                st.session_state[_COOKIE_WRITE] = ""
    held = st.session_state.get(_SESSION_KEY)
    if held is None:
        return None
    name, since, digest = held
    if time.time() - since > max_age_s:
        _sign_out(settings, f"Your sign-in expired after {settings.dashboard.session_hours:g} h: sign in again.")
        return None
    account = accounts.get(name)
    if account is None:
        _sign_out(settings, f"The account {name!r} was removed: you are signed out.")
        return None
    if _password_digest(account) != digest:  # changed in another browser or by `linewatch operator add`
        _sign_out(settings, "Your password was changed since you signed in: sign in again.")
        return None
    return Operator(name, True, account.role)


def _password_digest(account: Account) -> str:
    """Which password a session signed in with, kept in the session instead of the hash itself: a session whose
    account has a new password since is signed out on its next run."""
    return hashlib.sha256(account.password_hash.encode()).hexdigest()


def _release(settings: Settings, name: str) -> None:
    """Give ``name``'s open review frames back to the queue (a failure only leaves them to their claim's end)."""
    try:
        release(data.engine(), name)
    except SQLAlchemyError:
        st.session_state[_NOTICE] = (f"Your open review frames stay reserved for up to "
                                     f"{settings.dashboard.review_claim_s:g} s: the database did not answer.")


def _sign_out(settings: Settings, notice: str | None = None) -> None:
    held = st.session_state.pop(_SESSION_KEY, None)
    st.session_state[_SIGNED_OUT] = True
    st.session_state[_COOKIE_WRITE] = ""
    if notice:
        st.session_state[_NOTICE] = notice
    if held:
        _release(settings, held[0])


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
            typed = current_operator(settings)
            _release_changed_name(settings, typed.name if typed else None)
            if not typed:
                st.caption("Type your name to label frames. Labels record who made them.")
        operator = current_operator(settings)
        if operator and m != "name":
            st.caption(f"Signed in as **{operator.name}** ({operator.role})")
            if not may(operator, "operator"):
                st.caption("Viewers can look at every page; labelling needs the operator role.")
    return operator


def _release_changed_name(settings: Settings, name: str | None) -> None:
    """Name mode: when this session's name changed (or was cleared) since its last run, give the frames held
    under the old name back to the queue, as a sign-out does. Checked on each run rather than in an
    ``on_change`` callback, which runs before the page knows the new name."""
    held = st.session_state.get(_NAME_HELD)
    if held and held != name:
        _release(settings, held)
    st.session_state[_NAME_HELD] = name


def _oidc_controls(settings: Settings) -> None:
    provider = settings.dashboard.oidc_provider
    if getattr(st.user, "is_logged_in", False):
        if st.button("Sign out", key="lw_logout"):
            operator = current_operator(settings)
            if operator is not None:
                _release(settings, operator.name)
            st.logout()
        return
    st.caption("Sign in to label frames. Anyone may look.")
    if st.button("Sign in", key="lw_login", type="primary"):
        try:
            st.login(provider) if provider else st.login()
        except Exception as exc:  # noqa: BLE001 -- Streamlit raises several kinds for a bad auth set-up
            st.error(f"Sign-in is not configured correctly: {exc}")


def _accounts_controls(settings: Settings) -> None:
    signed_in = current_operator(settings) is not None  # also reads the cookie sent with the page
    write = st.session_state.pop(_COOKIE_WRITE, None)
    if write is not None:  # the browser stores (or deletes) the cookie: Streamlit cannot send Set-Cookie
        st.html(session_cookie.write_script(write, settings.dashboard.session_hours * 3600),
                unsafe_allow_javascript=True)
    notice = st.session_state.pop(_NOTICE, None)
    if notice:
        st.info(notice)
    if signed_in:
        st.button("Sign out", key="lw_logout", on_click=_sign_out, args=(settings,))
        _password_change(settings)
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
        key = session_cookie.signing_key(settings)
    except (AccountsError, ValueError) as exc:
        st.error(f"Sign-in is unavailable: {exc}")
        return
    name = name.strip()
    if check_login(accounts, name, password):
        now = time.time()
        st.session_state[_SESSION_KEY] = (name, now, _password_digest(accounts[name]))
        st.session_state[_SIGNED_OUT] = False
        st.session_state[_COOKIE_WRITE] = session_cookie.issue(name, accounts[name], key, now)
        st.rerun()
    time.sleep(1.0)  # slows down password guessing from one session
    st.error("Unknown operator or wrong password.")


def _password_change(settings: Settings) -> None:
    """The signed-in person changes their own password (the role stays). The new password voids every cookie
    issued for the old one (:mod:`.session_cookie`), so this browser gets a new cookie and the others sign in
    again."""
    held = st.session_state.get(_SESSION_KEY)
    if held is None:
        return
    with st.expander("Change password"), st.form("lw_password_form", clear_on_submit=True):
        old = st.text_input("Current password", type="password", key="lw_password_old")
        new = st.text_input("New password", type="password", key="lw_password_new")
        again = st.text_input("New password again", type="password", key="lw_password_again")
        if not st.form_submit_button("Change password"):
            return
        path = settings.dashboard.accounts_file
        try:
            accounts = load_accounts(path)
            if not check_login(accounts, held[0], old):
                time.sleep(1.0)  # as at sign-in: slows down guessing
                raise AccountsError("the current password is wrong")
            if new != again:
                raise AccountsError("the two new passwords differ")
            set_password(path, held[0], new)
            now = time.time()
            account = load_accounts(path)[held[0]]
            if not check_login({held[0]: account}, held[0], new):
                raise AccountsError("the accounts file was changed by someone else at the same moment: try again")
            token = session_cookie.issue(held[0], account, session_cookie.signing_key(settings), now)
        except (AccountsError, ValueError, OSError) as exc:
            st.error(f"Password not changed: {exc}")
            return
    st.session_state[_SESSION_KEY] = (held[0], now, _password_digest(account))
    st.session_state[_COOKIE_WRITE] = token
    st.session_state[_NOTICE] = "Password changed. Other browsers signed in as you must sign in again."
    st.rerun()
