#!/usr/bin/env bash
# The whole test suite: lint, types, then unit and integration tests (against the
# bundled emulator; no network, no key needed). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
