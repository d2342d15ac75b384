"""Operator passwords have a minimum length (12 characters), refused with a clear error by the accounts module and
by ``linewatch operator add`` (from stdin, and at the hidden prompt, which asks again)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from linewatch.cli import app
from linewatch.dashboard.accounts import MIN_PASSWORD_CHARS, AccountsError, load_accounts, set_password

SHORT = "x" * (MIN_PASSWORD_CHARS - 1)


def test_a_password_shorter_than_12_characters_is_refused_and_nothing_is_written(tmp_path):
    assert MIN_PASSWORD_CHARS == 12
    path = tmp_path / "operators.toml"
    with pytest.raises(AccountsError, match="the password has 11 characters; operator passwords need at least 12"):
        set_password(path, "alice", SHORT)
    assert not path.exists()
    assert set_password(path, "alice", "x" * 12) and list(load_accounts(path)) == ["alice"]
    before = path.read_text()
    with pytest.raises(AccountsError, match="has 0 characters"):
        set_password(path, "alice", "")
    assert path.read_text() == before  # the old password stays


def test_operator_add_refuses_a_short_password_from_stdin_and_asks_again_at_the_prompt(tmp_path):
    path = tmp_path / "operators.toml"
    added = subprocess.run([sys.executable, "-m", "linewatch", "operator", "add", "bob", "--accounts", str(path),
                            "--password-stdin"], input="short\n", capture_output=True, text=True, timeout=60)
    assert added.returncode == 2
    assert added.stderr.strip() == ("error: the password has 5 characters; operator passwords need at least 12 "
                                    "(a few words make a long one that is easy to remember)")
    assert not path.exists()
    result = CliRunner().invoke(app, ["operator", "add", "bob", "--accounts", str(path)],
                                input="short\ncorrect horse\ncorrect horse\n")
    assert result.exit_code == 0, result.output
    assert "the password has 5 characters" in result.output and f"added operator bob in {path}" in result.output
    assert list(load_accounts(path)) == ["bob"]
