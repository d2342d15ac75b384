"""``linewatch operator ...``: the dashboard's operator accounts (the file of ``dashboard.accounts_file``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .errors import fail
from .options import load_settings

operator_app = typer.Typer(help="Dashboard operator accounts (the accounts file of dashboard.accounts_file).",
                           no_args_is_help=True)

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
) -> None:
    """Add an operator, or set a new password for one (asked for twice, hidden; at least 12 characters)."""
    from linewatch.dashboard.accounts import AccountsError, check_new_password, set_password, validate_name

    path = _accounts_file(accounts)
    try:
        validate_name(name)
    except AccountsError as exc:
        fail(str(exc))
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = _ask_password(name, check_new_password)
    try:
        new = set_password(path, name, password)
    except (AccountsError, ValueError, OSError) as exc:
        fail(str(exc))
    typer.echo(f"{'added' if new else 'updated'} operator {name} in {path}")


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
    """The operators in the accounts file."""
    from linewatch.dashboard.accounts import AccountsError, load_accounts

    path = _accounts_file(accounts)
    try:
        names = sorted(load_accounts(path))
    except AccountsError as exc:
        fail(str(exc))
    typer.echo("\n".join(names) if names else f"no operators in {path}")
