#!/usr/bin/env bash
# The suite against the lowest versions pyproject.toml allows (scripts/floors.py pins
# each declared floor; uv's lowest-direct resolution takes the test tools' floors too),
# in its own environment, .venv-floors. Test tools that cannot be installed beside the
# floors are listed, with the reason, in scripts/floors-overrides.txt; only their tests
# skip. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
venv=.venv-floors
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
.venv/bin/python scripts/floors.py > "$constraints"
if [ ! -x "$venv/bin/python" ]; then
  .venv/bin/uv venv --quiet --python "$(.venv/bin/python -c 'import sys; print(sys.executable)')" "$venv"
fi
install() {
  VIRTUAL_ENV="$venv" .venv/bin/uv pip install --quiet --resolution lowest-direct \
    --constraint "$constraints" --override scripts/floors-overrides.txt "$@"
}
install -e ".[test]"
echo "floors: $(tr '\n' ' ' < "$constraints")"
export DASHSCOPE_EMBED_FLOORS=1
"$venv/bin/python" -m pytest -p no:cacheprovider "$@"
# The tests' own SDK floor is above the tokenizer extra's; count tokens with that too.
tokenizer_floor=$(.venv/bin/python scripts/floors.py --package dashscope)
VIRTUAL_ENV="$venv" .venv/bin/uv pip install --quiet "dashscope==$tokenizer_floor"
"$venv/bin/python" -m pytest -p no:cacheprovider -q tests/unit/test_tokens.py
