#!/usr/bin/env bash
# One command on a fresh machine: set everything up, then run the whole system on embedded defaults
# (broker, Redis, SQLite, the default model trained on the bottle images the first time, one camera,
# the detector workers and the dashboard). Arguments go to `linewatch up`; by default it stops after
# 166 inspections (the 83 bottle test images, twice) and prints a JSON summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
if [[ $# -eq 0 ]]; then
  set -- --max-frames 166
fi
exec .venv/bin/linewatch up "$@"
