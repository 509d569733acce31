"""The examples run as a newcomer runs them, and say what the README promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_quickstart_runs_offline_and_finds_the_right_documents() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASHSCOPE_")}
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert out.splitlines()[0].startswith("DASHSCOPE_API_KEY is not set: using the local emulator")
    assert "Indexed 30 documents (dense + sparse, 512 dimensions)." in out
    assert "Warning" not in run.stderr

    def top_hit(question: str) -> str:
        block = out.split(f"Q: {question}", 1)[1]
        match = re.search(r"1\. \[([\w-]+)\]", block)
        assert match, block
        return match.group(1)

    assert top_hit("Why does my Beijing key fail against the Singapore endpoint?") == "regions"
    assert top_hit("文本向量化是怎么计费的？") == "zh-cost"
    assert top_hit("How many texts can one text-embedding-v4 request carry?") == "row-limit"
