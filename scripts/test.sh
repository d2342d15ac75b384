#!/usr/bin/env bash
# One command on a fresh machine: set everything up, then run the whole test suite. The tests start
# the real services they need themselves (Apache Kafka in KRaft mode from Maven Central jars, Redis,
# PostgreSQL, headless Chromium) on free loopback ports, and stop them at the end.
# Arguments go to pytest (e.g. `scripts/test.sh -k pipeline`; `-n 0` runs in one process).
#
# Two test processes (pytest-xdist), each with its own services, a test file's tests in one of them: a test spends
# most of its time waiting on services, browsers and the subprocesses it starts (one process used 0.66 of the 2
# cores on average), so two finish the suite in about 21-26 minutes instead of 36. The longest files are handed out
# first (tests/conftest.py, LONGEST_FILES_FIRST; --no-loadscope-reorder keeps that order).
set -euo pipefail
cd "$(dirname "$0")/.."
LINEWATCH_WITH_BROWSER=1 LINEWATCH_WITH_TESTS=1 bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest -n "${LINEWATCH_TEST_PROCESSES:-2}" --dist loadfile --no-loadscope-reorder "$@"
