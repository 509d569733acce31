#!/usr/bin/env bash
# Create .venv and install the project with everything the tests and demos need.
# Idempotent: reinstalls only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-from
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # uv installs the test set in ~10 s where pip takes ~65 s (warm caches, this 2-core
  # machine), and only uv resolves the floors environment (lowest versions allowed).
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "uv>=0.5,<1"
  .venv/bin/uv pip install --quiet --python .venv/bin/python -e ".[test]"
  echo "$want" > "$stamp"
fi
