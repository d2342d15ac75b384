#!/usr/bin/env bash
# One command on a fresh machine: set everything up, then run the whole test suite. The tests start
# the real services they need themselves (Apache Kafka in KRaft mode from Maven Central jars, Redis,
# PostgreSQL, headless Chromium) on free loopback ports, and stop them at the end.
# Arguments go to pytest (e.g. `scripts/test.sh -k pipeline`).
set -euo pipefail
cd "$(dirname "$0")/.."
LINEWATCH_WITH_BROWSER=1 LINEWATCH_WITH_TESTS=1 bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
