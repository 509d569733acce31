#!/usr/bin/env bash
# The whole test suite: lint, types, then unit and integration tests (against the
# bundled emulator; no network, no key needed) on the newest versions of everything.
# With no test paths given, also: the same suite on the lowest versions pyproject.toml
# allows (scripts/test_floors.sh, run alongside; its report follows), and the built wheel
# installed bare in a fresh environment (scripts/check_wheel.sh). Extra arguments go to
# pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
whole=1
for arg in "$@"; do
  case "$arg" in -*) ;; *) whole=0 ;; esac
done
if [ "$whole" = 1 ]; then
  floors_log=$(mktemp)
  bash scripts/test_floors.sh "$@" > "$floors_log" 2>&1 &
  floors=$!
  trap 'kill "$floors" 2>/dev/null || true; rm -f "$floors_log"' EXIT
fi
status=0
.venv/bin/python -m pytest "$@" || status=$?
[ "$whole" = 1 ] || exit "$status"
floors_status=0
wait "$floors" || floors_status=$?
echo "--- the same suite on the lowest allowed versions (scripts/test_floors.sh):"
cat "$floors_log"
[ "$status" = 0 ] || exit "$status"
[ "$floors_status" = 0 ] || exit "$floors_status"
bash scripts/check_wheel.sh
