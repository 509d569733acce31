"""What a NumPy caller pays: reply parsing, and the bulk command end to end.

Two measurements, both with default settings:

* **Parsing**: real replies of the emulator (10 texts x 1,024 floats, the service's
  float formatting) parsed the three ways the client can: to Python lists (``embed``),
  to float32 through the reference parser (NumPy streams without pysimdjson), and to
  float32 through pysimdjson (the ``bulk`` extra). CPU ms per 1,000 vectors, the best
  of five rounds (the least disturbed by the machine's other work).
* **The bulk command** (``dashscope-embed embed``) on a text file, into each output
  format, against the emulator in a process of its own at 300 ms latency: wall time
  and the command's own CPU per 1,000 vectors (process start and imports included).

Run: ``.venv/bin/python benchmarks/numpy_path.py [--texts 5000] [--readme]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from throughput import KEY, emulator, write_readme

from dashscope_embed.models import resolve_model
from dashscope_embed.options import TextEmbeddingOptions, text_params
from dashscope_embed.protocol import arrays, endpoint_for

BEGIN, END = "<!-- numpy-benchmark:begin -->", "<!-- numpy-benchmark:end -->"
ROWS, DIMENSION = 10, 1024


def replies(base: str, count: int) -> list[bytes]:
    """``count`` native replies of the emulator, 10 distinct texts each."""
    url = base + "/api/v1/services/embeddings/text-embedding/text-embedding"
    out = []
    with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as http:
        for i in range(count):
            texts = [f"reply {i} text {k} about parsing" for k in range(ROWS)]
            body = {"model": "text-embedding-v4", "input": {"texts": texts}}
            response = http.post(url, json=body)
            response.raise_for_status()
            out.append(response.content)
    return out


def parse_cost(contents: list[bytes]) -> dict[str, float]:
    """CPU ms per 1,000 vectors for each way of parsing, best of five rounds."""
    endpoint: Any = endpoint_for("text-embedding", "native", "text-embedding-v4")
    params = text_params(resolve_model("text-embedding-v4"), None, TextEmbeddingOptions())

    def lists() -> None:
        for content in contents:
            endpoint.parse(content, ROWS, params)

    def float32(fast: bool) -> None:
        saved = arrays.HAVE_SIMDJSON
        arrays.HAVE_SIMDJSON = fast and saved
        try:
            for content in contents:
                endpoint.parse_float32(content, ROWS, params)
        finally:
            arrays.HAVE_SIMDJSON = saved

    ways = {
        "Python lists (embed)": lists,
        "float32, reference parser (numpy without pysimdjson)": lambda: float32(False),
        "float32, pysimdjson (the bulk extra)": lambda: float32(True),
    }
    vectors = len(contents) * ROWS
    cost = {}
    for name, run in ways.items():
        best = float("inf")
        for _ in range(5):
            start = time.process_time()
            run()
            best = min(best, time.process_time() - start)
        cost[name] = best * 1000 / vectors * 1000
    return cost


def bulk_cost(base: str, texts: int, folder: Path) -> list[dict[str, Any]]:
    corpus = folder / "corpus.txt"
    corpus.write_text("".join(f"bulk text {i} on topic {i % 17}\n" for i in range(texts)))
    env = {**os.environ, "DASHSCOPE_API_KEY": KEY, "DASHSCOPE_BASE_URL": base}
    rows = []
    for suffix in ("npy", "parquet", "jsonl"):
        out = folder / f"out.{suffix}"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "dashscope_embed.cli", "embed", str(corpus), "--out", str(out)],
            env=env,
            cwd=folder,  # the installed package, not a checkout the working directory holds
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.monotonic() - wall
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise SystemExit(f"the bulk command failed: {done.stderr[-500:]}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        rows.append({"output": suffix, "wall": wall, "cpu_per_1k": cpu * 1000 / texts * 1000})
    return rows


def table(parse: dict[str, float], bulk: list[dict[str, Any]], texts: int) -> str:
    lines = [
        "| parsing a reply into | CPU ms / 1k vectors |",
        "|---|---:|",
        *(f"| {name} | {ms:.0f} |" for name, ms in parse.items()),
        "",
        f"| bulk command, {texts:,} texts, into | wall s | CPU ms / 1k vectors |",
        "|---|---:|---:|",
        *(f"| .{r['output']} | {r['wall']:.1f} | {r['cpu_per_1k']:.0f} |" for r in bulk),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=5000)
    parser.add_argument("--replies", type=int, default=200)
    parser.add_argument("--readme", action="store_true")
    args = parser.parse_args()
    if not arrays.HAVE_SIMDJSON:
        raise SystemExit("install the bulk extra first: pip install -e '.[bulk]'")
    with emulator(0.0, ()) as base:
        parse = parse_cost(replies(base, args.replies))
    with emulator(0.3, ()) as base, tempfile.TemporaryDirectory() as folder:
        bulk = bulk_cost(base, args.texts, Path(folder))
    markdown = table(parse, bulk, args.texts)
    print(markdown)
    if args.readme:
        write_readme(markdown, BEGIN, END)


if __name__ == "__main__":
    main()
