"""The sign-in cookie of accounts mode: who signed in and when, signed so that the browser cannot change it.

Token (the cookie's value, ``[A-Za-z0-9_-.]`` only)::

    base64url(JSON {"n": operator name, "t": issued at (Unix seconds, int), "k": account key}) "." base64url(tag)

with ``tag = HMAC-SHA256(key, payload)`` (RFC 2104, stdlib ``hmac``) and ``k`` = the first 16 hex digits of
``HMAC-SHA256(key, the account's password hash)``, so a new password (``linewatch operator add``) or a removed
account refuses every cookie issued before. A token is refused when its tag does not match (tampered, or signed
with another key), when it is older than ``dashboard.session_hours`` or dated more than a minute ahead, and when
its account is gone or has a new password.

Limits, as far as Streamlit allows: Streamlit can read the cookies the browser sent with the page
(``st.context.cookies``) but cannot answer with a ``Set-Cookie`` header, so the browser writes the cookie itself
(:func:`write_script`, run by ``st.html``). A cookie written by script cannot be ``HttpOnly``: a script injected
into the page could read it. It is ``SameSite=Strict`` (never sent by another site's page), ``Secure`` when the
page came over HTTPS, and expires with the sign-in. Sign-out deletes it in that browser; a copy taken before stays
valid until it expires unless the password is changed or the account removed. The role is not in the cookie: it
is read from the accounts file on each page run, so a change of role applies at once.

The key: ``dashboard.cookie_secret`` (e.g. the secret file ``dashboard__cookie_secret``), else a random 32-byte
key kept in ``<accounts file>.cookie-key`` (created mode 0600 on first use), else, when that file cannot be
written, a random key of this process (sign-ins then last until the dashboard restarts; a warning is logged).
This module has no Streamlit dependency.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from pathlib import Path

from linewatch.contracts.settings import Settings

from .accounts import Account

COOKIE = "linewatch_session"
_FUTURE_SLACK_S = 60  # clocks of one machine: a token dated further ahead was not issued here
_KEY_BYTES = 32
_keys: dict[str, bytes] = {}
_keys_lock = threading.Lock()
log = logging.getLogger(__name__)


class CookieRefused(ValueError):
    """The sign-in cookie is malformed, tampered with, expired, or its account is gone or has a new password."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _tag(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _account_key(key: bytes, account: Account) -> str:
    return _tag(key, account.password_hash.encode()).hex()[:16]


def issue(name: str, account: Account, key: bytes, now: float | None = None) -> str:
    """The token that says ``name`` (holder of ``account``) signed in at ``now`` (Unix seconds; default: now)."""
    issued = int(time.time() if now is None else now)
    payload = _b64(json.dumps({"n": name, "t": issued, "k": _account_key(key, account)},
                              separators=(",", ":")).encode())
    return f"{payload}.{_b64(_tag(key, payload.encode()))}"


def verify(token: str, accounts: dict[str, Account], key: bytes, max_age_s: float,
           now: float | None = None) -> tuple[str, float]:
    """(operator name, issued at in Unix seconds) of a valid ``token``.

    Raises:
        CookieRefused: with the reason (malformed, bad signature, expired, dated ahead, unknown account, new
            password).
    """
    now = time.time() if now is None else now
    payload, _, tag = token.partition(".")
    try:
        good = hmac.compare_digest(_unb64(tag), _tag(key, payload.encode()))
    except ValueError:
        good = False
    if not good:
        raise CookieRefused("its signature does not match (changed, or signed with another key)")
    try:
        claims = json.loads(_unb64(payload))
        name, issued, account_key = str(claims["n"]), float(claims["t"]), str(claims["k"])
    except (ValueError, KeyError, TypeError):
        raise CookieRefused("it is malformed") from None
    if now - issued > max_age_s:
        raise CookieRefused(f"it expired {(now - issued - max_age_s) / 60:.0f} min ago")
    if issued - now > _FUTURE_SLACK_S:
        raise CookieRefused("it is dated in the future")
    account = accounts.get(name)
    if account is None:
        raise CookieRefused(f"operator {name!r} no longer has an account")
    if not hmac.compare_digest(account_key, _account_key(key, account)):
        raise CookieRefused(f"the password of {name!r} changed since")
    return name, issued


def write_script(token: str, max_age_s: float) -> str:
    """HTML with a script that stores ``token`` (from :func:`issue`: cookie-safe characters only) in the
    browser's cookie for ``max_age_s`` seconds; ``token`` = "" deletes the cookie."""
    if not all(c.isalnum() or c in "-_." for c in token):
        raise ValueError("a session token holds only base64url characters and '.'")
    age = max(0, int(max_age_s)) if token else 0
    return ("<script>document.cookie = " + json.dumps(f"{COOKIE}={token}; Path=/; Max-Age={age}; SameSite=Strict")
            + ' + (location.protocol === "https:" ? "; Secure" : "");</script>')


def signing_key(settings: Settings) -> bytes:
    """The key that signs the cookie (see the module's docstring for where it comes from).

    Raises:
        ValueError: a key file holds fewer than 32 bytes.
    """
    if settings.dashboard.cookie_secret is not None:
        return settings.dashboard.cookie_secret.get_secret_value().encode()
    accounts = settings.dashboard.accounts_file
    where = str(accounts.with_name(accounts.name + ".cookie-key")) if accounts is not None else ""
    with _keys_lock:
        if where not in _keys:
            _keys[where] = _key_file(Path(where)) if where else secrets.token_bytes(_KEY_BYTES)
        return _keys[where]


def _key_file(path: Path) -> bytes:
    try:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            key = path.read_bytes().strip()
            if len(key) < _KEY_BYTES:
                raise ValueError(f"the cookie key file {path} holds {len(key)} bytes, fewer than {_KEY_BYTES}: "
                                 "delete it (a new one is made; everybody signs in again)") from None
            return key
        key = secrets.token_hex(_KEY_BYTES).encode()
        with os.fdopen(fd, "wb") as out:
            out.write(key)
        return key
    except OSError as exc:
        log.warning("the sign-in cookie key cannot be kept in %s (%s): using a key of this process, so sign-ins "
                    "end when the dashboard restarts; set dashboard.cookie_secret to keep them", path, exc)
        return secrets.token_bytes(_KEY_BYTES)
