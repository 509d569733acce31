"""Print the lowest versions pyproject.toml allows, as pip/uv constraints (``name==floor``).

Every ``>=`` floor of the runtime dependencies and of the user-facing extras is pinned,
so the floors run tests exactly what the package declares: if a test tool needed a
newer release of one of them, resolution fails instead of quietly testing a newer one.
Where the ``test`` extra asks for a higher floor of the same package than a runtime
extra does (the SDK acting as a client in the tests), the test's floor is pinned, and
``--package NAME`` prints the runtime extra's own floor so the script can test it
separately.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: mypy (a test dependency) brings tomli
    import tomli as tomllib

RUNTIME_EXTRAS = ("llama-index", "langchain", "emulator", "tokenizer", "bulk")
FLOOR = re.compile(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*>=\s*([0-9][0-9A-Za-z.]*)")


def floors(requirements: list[str]) -> dict[str, str]:
    found = {}
    for requirement in requirements:
        match = FLOOR.match(requirement)
        if match:
            found[match[1].lower().replace("_", "-")] = match[2]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", help="print only this package's runtime floor")
    args = parser.parse_args()
    project = tomllib.loads(Path("pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    runtime = floors(project["dependencies"])
    for extra in RUNTIME_EXTRAS:
        runtime.update(floors(extras[extra]))
    if args.package:
        print(runtime[args.package])
        return
    pins = {**runtime, **{k: v for k, v in floors(extras["test"]).items() if k in runtime}}
    sys.stdout.write("".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))


if __name__ == "__main__":
    main()
