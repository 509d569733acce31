#!/usr/bin/env bash
# The package as a user installs it: build the wheel, install it bare (no extras) in a
# fresh virtual environment, and check that the core imports and works, that pytest
# runs in an empty folder (our pytest plugin loads on every install), that each
# framework package without its extra names the extra, and that the wheel carries
# its licence and type marker.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
PYTHON="${PYTHON:-python3}"
quietly() { "$@" > "$work/log" 2>&1 || { cat "$work/log" >&2; exit 1; }; }
quietly .venv/bin/python -m pip wheel --disable-pip-version-check --no-deps -w "$work/dist" .
wheel=$(ls "$work"/dist/dashscope_embed-*.whl)
quietly "$PYTHON" -m venv "$work/venv"
quietly "$work/venv/bin/python" -m pip install --disable-pip-version-check "$wheel" pytest
cd "$work"
mkdir empty
(cd empty && "$work/venv/bin/python" -m pytest --co -q -p no:cacheprovider) && status=0 || status=$?
if [ "$status" -ne 5 ]; then  # 5: nothing collected, and no error
  echo "pytest in an empty folder exited $status on a bare install" >&2
  exit 1
fi
"$work/venv/bin/python" - "$wheel" <<'PY'
import sys
import zipfile

import dashscope_embed
from dashscope_embed import DashScopeClient

client = DashScopeClient(api_key="sk-bare")
assert client.settings.root_url.startswith("https://")
names = zipfile.ZipFile(sys.argv[1]).namelist()
assert any(n.endswith("licenses/LICENSE") for n in names), "LICENSE missing from the wheel"
assert "dashscope_embed/py.typed" in names, "py.typed missing from the wheel"
for module, extra in [("llama_index_ext", "llama-index"), ("langchain_ext", "langchain")]:
    try:
        __import__(module)
    except ModuleNotFoundError as error:
        assert f"pip install 'dashscope-embed[{extra}]'" in str(error), error
    else:
        raise AssertionError(f"{module} imported without its extra")
try:
    from dashscope_embed.emulator import Emulator  # noqa: F401
except ModuleNotFoundError as error:
    assert "pip install 'dashscope-embed[emulator]'" in str(error), error
else:
    raise AssertionError("the emulator imported without its extra")
try:
    import dashscope_embed.raydata  # noqa: F401
except ModuleNotFoundError as error:
    assert "pip install 'dashscope-embed[ray]'" in str(error), error
else:
    raise AssertionError("dashscope_embed.raydata imported without its extra")
print(f"bare wheel OK: {sys.argv[1].rsplit('/', 1)[-1]}")
PY
