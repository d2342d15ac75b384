#!/usr/bin/env bash
# Sets up a fresh machine for linewatch: system packages (Debian/Ubuntu), a virtual environment in
# .venv with linewatch and its test extras. Idempotent and quick when everything is already there.
# Python 3.11+ is required; torch is pinned (a large download the first time, then pip's cache).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-system-deps.sh

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "bootstrap: $python is $("$python" --version 2>&1); linewatch needs Python 3.11 or newer" >&2
  exit 1
fi
if [[ ! -x .venv/bin/python ]]; then
  "$python" -m venv .venv
fi
stamp=.venv/.linewatch-installed
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet --editable ".[test]"
  touch "$stamp"
fi
