#!/usr/bin/env bash
# The whole test suite: lint, types, then unit and integration tests (against the
# bundled emulator; no network, no key needed), then the built wheel installed bare in
# a fresh environment. Extra arguments go to pytest; naming test paths skips the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
# The whole suite (no test paths given) also checks the package as a user installs it.
for arg in "$@"; do
  case "$arg" in -*) ;; *) exit 0 ;; esac
done
bash scripts/check_wheel.sh
