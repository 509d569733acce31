#!/usr/bin/env bash
# The main job: a hybrid (dense + sparse) RAG retrieval demo. Uses the real DashScope
# service when DASHSCOPE_API_KEY is set, the bundled emulator otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python examples/quickstart.py "$@"
