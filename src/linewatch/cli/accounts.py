"""``linewatch operator ...``: the dashboard's accounts and their roles (the file of ``dashboard.accounts_file``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .errors import fail
from .options import load_settings

operator_app = typer.Typer(help="Dashboard accounts and roles (the accounts file of dashboard.accounts_file).",
                           no_args_is_help=True)
ROLE_HELP = "viewer (looks), operator (also labels) or engineer (also retrains, activates, rolls back)"

AccountsOpt = Annotated[Path | None,
                        typer.Option("--accounts", help="accounts file [settings: dashboard.accounts_file]")]


def _accounts_file(accounts: Path | None) -> Path:
    path = accounts or load_settings().dashboard.accounts_file
    if path is None:
        fail("no accounts file: pass --accounts FILE or set LINEWATCH_DASHBOARD__ACCOUNTS_FILE")
    return path


def _ask_password(name: str, check) -> str:
    """Ask for a new password (hidden) until ``check`` accepts it, saying why it did not, then once more to
    confirm it (click's own prompt hides the reason a hidden value was refused)."""
    from linewatch.dashboard.accounts import AccountsError

    while True:
        password = typer.prompt(f"password for {name}", hide_input=True)
        try:
            check(password)
            break
        except AccountsError as exc:
            typer.echo(f"error: {exc}", err=True)
    if typer.prompt("Repeat for confirmation", hide_input=True) != password:
        fail("the two passwords differ; nothing changed")
    return password


@operator_app.command("add")
def operator_add(
    name: Annotated[str, typer.Argument(help="operator name (letters, digits, . _ @ -)")],
    accounts: AccountsOpt = None,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="read the password from stdin")] = False,
    role: Annotated[str | None, typer.Option(help=f"{ROLE_HELP}; default: unchanged, operator for a new account")]
    = None,
) -> None:
    """Add an operator, or set a new password for one (asked for twice, hidden; at least 12 characters)."""
    from linewatch.dashboard.accounts import (
        AccountsError,
        check_new_password,
        set_password,
        validate_name,
        validate_role,
    )

    path = _accounts_file(accounts)
    try:
        validate_name(name)
        if role is not None:
            validate_role(role)
    except AccountsError as exc:
        fail(str(exc))
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = _ask_password(name, check_new_password)
    try:
        new = set_password(path, name, password, role)
    except (AccountsError, ValueError, OSError) as exc:
        fail(str(exc))
    typer.echo(f"{'added' if new else 'updated'} operator {name} in {path}")


@operator_app.command("role")
def operator_role(
    name: str,
    role: Annotated[str, typer.Argument(help=ROLE_HELP)],
    accounts: AccountsOpt = None,
) -> None:
    """Give an operator another role (their password stays; applies on their next page view)."""
    from linewatch.dashboard.accounts import AccountsError, set_role

    path = _accounts_file(accounts)
    try:
        set_role(path, name, role)
    except (AccountsError, OSError) as exc:
        fail(str(exc))
    typer.echo(f"operator {name} is now {role} in {path}")


@operator_app.command("init")
def operator_init(accounts: AccountsOpt = None) -> None:
    """Create the accounts file with one engineer, admin, and a random password shown once; nothing when the file
    exists. Sign in as admin, add a named account per person, then remove admin."""
    init_accounts_file(_accounts_file(accounts))


def init_accounts_file(path: Path) -> None:
    """``linewatch operator init`` on ``path`` (also run by ``linewatch dashboard --init-accounts``)."""
    from linewatch.dashboard.accounts import FIRST_ENGINEER, init_accounts

    try:
        password = init_accounts(path)
    except OSError as exc:
        fail(f"cannot create the accounts file {path}: {exc}")
    if password is None:
        typer.echo(f"accounts file {path} exists: nothing changed")
        return
    typer.echo(f"created {path} with engineer {FIRST_ENGINEER!r}, password: {password}\n"
               f"This is the only time it is shown. Sign in as {FIRST_ENGINEER}, add an account per person "
               f"(`linewatch operator add NAME --role ...`), then `linewatch operator remove {FIRST_ENGINEER}`.")


@operator_app.command("remove")
def operator_remove(name: str, accounts: AccountsOpt = None) -> None:
    """Remove an operator."""
    from linewatch.dashboard.accounts import AccountsError, remove_account

    path = _accounts_file(accounts)
    try:
        removed = remove_account(path, name)
    except (AccountsError, OSError) as exc:
        fail(str(exc))
    if not removed:
        fail(f"no operator {name!r} in {path}", code=1)
    typer.echo(f"removed operator {name} from {path}")


@operator_app.command("list")
def operator_list(accounts: AccountsOpt = None) -> None:
    """The operators in the accounts file, with their roles."""
    from linewatch.dashboard.accounts import AccountsError, load_accounts

    path = _accounts_file(accounts)
    try:
        found = load_accounts(path)
    except AccountsError as exc:
        fail(str(exc))
    typer.echo("\n".join(f"{name}\t{found[name].role}" for name in sorted(found)) if found
               else f"no operators in {path}")
