"""The local accounts file: operator names, their roles and scrypt password hashes (no passwords are ever stored).

Format (TOML), written by ``linewatch operator add``::

    [operators."alice"]
    password_hash = "scrypt$16384$8$1$<salt, base64>$<hash, base64>"
    role = "engineer"        # viewer | operator | engineer; absent = operator (files written before roles)

This module has no Streamlit dependency, so the CLI can use it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import os
import re
import secrets
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from linewatch.contracts.dashboard_settings import ROLES, Role

SCHEME = "scrypt"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_KEY_BYTES = 32
_SALT_BYTES = 16
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
# Operator passwords: at least 12 characters (OWASP ASVS 4.0.3, V2.1.1), counted as Unicode code points.
MIN_PASSWORD_CHARS = 12

# The role of an account the file gives none: files written before roles existed keep labelling.
DEFAULT_ROLE: Role = "operator"
FIRST_ENGINEER = "admin"  # the account `linewatch operator init` creates in an empty accounts file

# Checked against when the name is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = None


class AccountsError(ValueError):
    """The accounts file is missing, unreadable or malformed, an account name or role is invalid, or a new
    password is too short."""


@dataclass(frozen=True)
class Account:
    """One account of the file: its scrypt hash (:func:`hash_password`) and its role (``ROLES``)."""

    password_hash: str
    role: Role = DEFAULT_ROLE


def validate_role(role: str) -> Role:
    """``role`` if it is one of ``ROLES``.

    Raises:
        AccountsError: it is not.
    """
    if role not in ROLES:
        raise AccountsError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    return role  # type: ignore[return-value]


def check_new_password(password: str) -> str:
    """``password`` if it may become an operator's password.

    Raises:
        AccountsError: it has fewer than :data:`MIN_PASSWORD_CHARS` characters.
    """
    if len(password) < MIN_PASSWORD_CHARS:
        raise AccountsError(f"the password has {len(password)} characters; operator passwords need at least "
                            f"{MIN_PASSWORD_CHARS} (a few words make a long one that is easy to remember)")
    return password


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, salt: bytes | None = None) -> str:
    """A self-describing scrypt hash of ``password``: ``scrypt$N$r$p$salt$hash``.

    Raises:
        ValueError: the password is empty.
    """
    if not password:
        raise ValueError("the password is empty")
    salt = salt if salt is not None else os.urandom(_SALT_BYTES)
    key = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=_KEY_BYTES)
    return f"{SCHEME}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a hash from :func:`hash_password` (constant-time comparison).

    A malformed hash never matches; it does not raise.
    """
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != SCHEME:
            return False
        expected = base64.b64decode(key, validate=True)
        actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt, validate=True), n=int(n),
                                r=int(r), p=int(p), dklen=len(expected), maxmem=256 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def check_login(accounts: dict[str, Account], name: str, password: str) -> bool:
    """Whether ``name`` is an account whose password is ``password``. Takes as long for an unknown name."""
    global _DUMMY_HASH
    account = accounts.get(name)
    if account is None:
        if _DUMMY_HASH is None:
            _DUMMY_HASH = hash_password("linewatch-dummy-password")
        verify_password(password, _DUMMY_HASH)
        return False
    return verify_password(password, account.password_hash)


def validate_name(name: str) -> str:
    """``name`` if it is a valid account name (letters, digits, ``. _ @ -``, at most 64).

    Raises:
        AccountsError: it is not.
    """
    if not NAME_PATTERN.fullmatch(name):
        raise AccountsError(f"invalid operator name {name!r}: use letters, digits and . _ @ - (at most 64)")
    return name


def load_accounts(path: Path) -> dict[str, Account]:
    """Operator name -> :class:`Account` from the accounts file (an entry without ``role`` is an operator).

    Raises:
        AccountsError: the file is missing, is not TOML, or has entries without a ``password_hash`` or with an
            unknown ``role``.
    """
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AccountsError(f"accounts file {path} does not exist (create it with `linewatch operator add`)") \
            from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AccountsError(f"accounts file {path} cannot be read: {exc}") from None
    operators = data.get("operators", {})
    if not isinstance(operators, dict):
        raise AccountsError(f"accounts file {path}: [operators] must be a table")
    out = {}
    for name, entry in operators.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("password_hash"), str):
            raise AccountsError(f"accounts file {path}: operator {name!r} has no password_hash")
        try:
            role = validate_role(entry.get("role", DEFAULT_ROLE))
        except AccountsError as exc:
            raise AccountsError(f"accounts file {path}: operator {name!r}: {exc}") from None
        out[name] = Account(entry["password_hash"], role)
    return out


def save_accounts(path: Path, accounts: dict[str, Account]) -> None:
    """Write the accounts file atomically, readable by its owner only.

    Raises:
        AccountsError: a name is invalid. OSError: the file cannot be written.
    """
    path = Path(path)
    os.replace(_written(path, _toml(accounts)), path)


def _toml(accounts: dict[str, Account]) -> str:
    lines = ["# linewatch operator accounts, written by `linewatch operator add`. Only scrypt hashes are stored.", ""]
    for name in sorted(accounts):
        validate_name(name)
        account = accounts[name]
        lines += [f'[operators."{name}"]', f'password_hash = "{account.password_hash}"',
                  f'role = "{validate_role(account.role)}"', ""]
    return "\n".join(lines)


def _written(path: Path, text: str) -> Path:
    """A new temporary file beside ``path`` (mode 0600, a name of its own: the dashboard's threads and the CLI
    may write at once) holding ``text``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


@contextlib.contextmanager
def _updating(path: Path) -> Iterator[None]:
    """Hold the accounts file's lock (``<file>.lock``, ``flock``) for one read-modify-write, so two changes at once
    (two browsers, or a browser and ``linewatch operator``) cannot drop one of them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def set_password(path: Path, name: str, password: str, role: str | None = None) -> bool:
    """Add an operator, or replace their password; True when the operator is new. ``role``: their role (None:
    unchanged for an existing account, :data:`DEFAULT_ROLE` for a new one).

    Raises:
        AccountsError: invalid name or role, a password shorter than :data:`MIN_PASSWORD_CHARS`, or a malformed
            existing file. OSError.
    """
    validate_name(name)
    check_new_password(password)
    if role is not None:
        validate_role(role)
    password_hash = hash_password(password)
    with _updating(path):
        accounts = load_accounts(path) if Path(path).exists() else {}
        old = accounts.get(name)
        accounts[name] = Account(password_hash, role or (old.role if old else DEFAULT_ROLE))
        save_accounts(path, accounts)
    return old is None


def set_role(path: Path, name: str, role: str) -> None:
    """Give the existing operator ``name`` the role ``role`` (their password stays). Takes effect on their next
    page run: the dashboard reads the role from the file each time.

    Raises:
        AccountsError: unknown role or operator, or a missing or malformed file. OSError.
    """
    validate_role(role)
    with _updating(path):
        accounts = load_accounts(path)
        if name not in accounts:
            raise AccountsError(f"no operator {name!r} in {path}")
        accounts[name] = Account(accounts[name].password_hash, role)  # type: ignore[arg-type]
        save_accounts(path, accounts)


def init_accounts(path: Path) -> str | None:
    """Create the accounts file with one engineer, :data:`FIRST_ENGINEER`, and a random password (20 characters
    from ``secrets``), returned to be shown once; None (nothing written) when the file already exists.

    The whole file is written under a temporary name, then linked into place, which fails when the file exists:
    two processes starting at once cannot both create it, and a start that fails half-way leaves no empty file.

    Raises:
        OSError: the file cannot be written.
    """
    path = Path(path)
    if path.exists():
        return None
    password = secrets.token_urlsafe(15)  # 20 characters, 120 random bits
    draft = _written(path, _toml({FIRST_ENGINEER: Account(hash_password(password), "engineer")}))
    try:
        os.link(draft, path)
    except FileExistsError:
        return None
    finally:
        draft.unlink(missing_ok=True)
    return password


def remove_account(path: Path, name: str) -> bool:
    """Remove an operator; False when there was none of that name.

    Raises:
        AccountsError: the file is missing or malformed. OSError.
    """
    with _updating(path):
        accounts = load_accounts(path)
        if accounts.pop(name, None) is None:
            return False
        save_accounts(path, accounts)
    return True
