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

    def top_hits(question: str) -> tuple[str, str]:
        """The first document before and after the rerank stage."""
        block = out.split(f"Q: {question}", 1)[1].split("\nQ: ", 1)[0]
        retrieved, reranked = block.split("after qwen3-rerank:")
        first = [re.search(r"1\. \[([\w-]+)\]", part) for part in (retrieved, reranked)]
        assert all(first), block
        return first[0].group(1), first[1].group(1)  # type: ignore[union-attr]

    # The reranker puts the answer first for every question, including those where
    # hybrid retrieval alone ranked a neighbour above it.
    assert top_hits("How do I combine keyword matching with semantic search?")[1] == "hybrid-search"
    assert top_hits("What does parse_retry_after do?") == ("code-search", "retry-after")
    assert top_hits("Why does my Beijing key fail against the Singapore endpoint?")[1] == "regions"
    assert top_hits("文本向量化是怎么计费的？")[1] == "zh-cost"
    assert top_hits("How many texts can one text-embedding-v4 request carry?")[1] == "row-limit"


def test_the_ray_ingestion_example_writes_parquet_and_qdrant(tmp_path: Path) -> None:
    from tests.optional import require

    require("ray")
    import pyarrow as pa
    import pyarrow.parquet as pq

    env = {k: v for k, v in os.environ.items() if not k.startswith("DASHSCOPE_")}
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "ray_ingest.py"),
            str(ROOT / "examples" / "data" / "corpus.jsonl"),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("DASHSCOPE_API_KEY is not set: using the local emulator")
    match = re.search(r"Embedded (\d+) chunks of 30 documents", run.stdout)
    assert match, run.stdout
    table = pq.read_table(tmp_path / "vectors.parquet")
    assert table.num_rows == int(match[1]) >= 30
    vector_type = table.schema.field("embedding").type
    assert pa.types.is_fixed_size_list(vector_type) and vector_type.list_size == 512
    assert vector_type.value_type == pa.float32()
    assert f"Upserted {table.num_rows} points into Qdrant." in run.stdout
