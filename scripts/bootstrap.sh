#!/usr/bin/env bash
# Sets up a fresh machine for linewatch: system packages (Debian/Ubuntu), a virtual environment in
# .venv with linewatch, plus its test extras when LINEWATCH_WITH_TESTS=1 (scripts/test.sh sets it),
# and the embedded Apache Kafka's jars from Maven Central (into ~/.cache/linewatch; nothing is
# downloaded when linewatch runs).
# Idempotent and quick when everything is already there.
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
target="."
stamp=.venv/.linewatch-installed
if [[ "${LINEWATCH_WITH_TESTS:-0}" == "1" ]]; then
  target=".[test]"
  stamp=.venv/.linewatch-installed-test
fi
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet --editable "$target"
  touch "$stamp"
fi
# Java version check + Kafka's jars (a no-op when the jars of the pinned version are in place).
.venv/bin/python -m linewatch.cli.embedded_kafka
