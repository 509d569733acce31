"""Throughput, exactly-once and correctness: this project against the existing integrations.

Each scenario starts the bundled emulator in its own process (so this process's CPU
time is the client's alone), embeds the same corpus with every client, and reports:

* texts/s and the ratio to the physical limit the scenario allows
  (rows per request x allowed concurrency / latency, or rows per request x rate cap);
* requests, 4xx and 5xx replies, dropped connections, duplicate embeddings (finished
  work paid for twice);
* lost or misplaced vectors, checked against the emulator's deterministic vectors;
* client CPU milliseconds per 1,000 vectors.

Run: ``.venv/bin/python benchmarks/throughput.py [--texts 2000] [--latency 0.2]``
(needs the ``bench`` extra: ``pip install -e .[bench]``). Writes a Markdown table to
stdout and, with ``--readme``, into README.md between the benchmark markers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from dashscope_embed import DashScopeClient, RetryPolicy
from dashscope_embed.emulator.server import free_port

KEY = "sk-benchmark"
ROWS = 10  # text-embedding-v4's row limit
CONCURRENCY = 8  # the concurrency every client is allowed (where it can use any)
BEGIN, END = "<!-- benchmark:begin -->", "<!-- benchmark:end -->"


@dataclass(frozen=True)
class Scenario:
    name: str
    flags: tuple[str, ...]
    physical_limit: Callable[[float], float]  # texts/s, given the latency


def scenarios(latency: float) -> list[Scenario]:
    free = lambda lat: ROWS * CONCURRENCY / lat  # noqa: E731
    return [
        Scenario("latency only", (), free),
        Scenario(
            "5% 500s + 5% dropped connections",
            ("--error-rate", "0.05", "--drop-rate", "0.05"),
            free,
        ),
        Scenario(
            "hidden concurrency cap 4 (429)",
            ("--max-concurrency", "4", "--throttle-retry-after", "0.2"),
            lambda lat: ROWS * 4 / lat,
        ),
        Scenario("1,200 requests/min cap (429)", ("--rpm", "1200"), lambda lat: ROWS * 1200 / 60),
    ]


@contextlib.contextmanager
def emulator(latency: float, flags: tuple[str, ...]) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dashscope_embed.emulator",
            "--port",
            str(port),
            "--api-key",
            KEY,
            "--latency",
            str(latency),
            "--seed",
            "1",
            *flags,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(base + "/emulator/health", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


# --------------------------------------------------------------------------- clients
def ours_sync(base: str, texts: list[str], **extra: Any) -> list[Any]:
    client = DashScopeClient(api_key=KEY, base_url=base, max_concurrency=CONCURRENCY, **extra)
    return client.embed(texts, text_type="document").require_dense()


def ours_sync_told_rpm(base: str, texts: list[str]) -> list[Any]:
    return ours_sync(base, texts, requests_per_minute=1200)


def ours_async(base: str, texts: list[str]) -> list[Any]:
    client = DashScopeClient(api_key=KEY, base_url=base, max_concurrency=CONCURRENCY)
    result = asyncio.run(client.aembed(texts, text_type="document"))
    return result.require_dense()


def ours_llama_index(base: str, texts: list[str]) -> list[Any]:
    from llama_index_ext import DashScopeEmbedding

    model = DashScopeEmbedding(api_key=KEY, base_url=base, max_concurrency=CONCURRENCY)
    return list(model.get_text_embedding_batch(texts))


def ours_langchain_async(base: str, texts: list[str]) -> list[Any]:
    from langchain_ext import DashScopeEmbeddings

    model = DashScopeEmbeddings(api_key=KEY, base_url=base, max_concurrency=CONCURRENCY)
    return asyncio.run(model.aembed_documents(texts))


def llama_index_dashscope(base: str, texts: list[str]) -> list[Any]:
    import dashscope
    from llama_index.embeddings.dashscope import DashScopeEmbedding

    dashscope.base_http_api_url = base + "/api/v1"
    # Its default batch of 25 is refused by v4 (10 rows); 10 is the best case for it.
    model = DashScopeEmbedding(model_name="text-embedding-v4", api_key=KEY, embed_batch_size=10)
    return list(model.get_text_embedding_batch(texts))


def langchain_community_dashscope(base: str, texts: list[str]) -> list[Any]:
    import dashscope
    from langchain_community.embeddings import DashScopeEmbeddings

    dashscope.base_http_api_url = base + "/api/v1"
    model = DashScopeEmbeddings(model="text-embedding-v4", dashscope_api_key=KEY)
    return list(model.embed_documents(texts))


def langchain_openai_compatible(base: str, texts: list[str]) -> list[Any]:
    from langchain_openai import OpenAIEmbeddings

    model = OpenAIEmbeddings(
        model="text-embedding-v4",
        api_key=KEY,
        base_url=base + "/compatible-mode/v1",
        check_embedding_ctx_length=False,
        chunk_size=10,  # both needed for DashScope
    )
    return list(model.embed_documents(texts))


CLIENTS: dict[str, Callable[[str, list[str]], list[Any]]] = {
    "dashscope-embed (sync)": ours_sync,
    "dashscope-embed (async)": ours_async,
    "dashscope-embed LlamaIndex DashScopeEmbedding (sync)": ours_llama_index,
    "dashscope-embed LangChain DashScopeEmbeddings (async)": ours_langchain_async,
    "llama-index-embeddings-dashscope": llama_index_dashscope,
    "langchain-community DashScopeEmbeddings": langchain_community_dashscope,
    "langchain-openai OpenAIEmbeddings (compatible mode)": langchain_openai_compatible,
}


# --------------------------------------------------------------------------- measuring
def truth(base: str, texts: list[str]) -> np.ndarray:
    client = DashScopeClient(
        api_key=KEY,
        base_url=base,
        max_concurrency=CONCURRENCY,
        retry=RetryPolicy(max_retries=50, total_timeout=None),
    )
    return np.asarray(client.embed(texts, text_type="document").require_dense(), dtype=np.float32)


def lost_or_misplaced(vectors: list[Any], expected: np.ndarray) -> int:
    bad = abs(len(vectors) - len(expected))
    for got, want in zip(vectors, expected, strict=False):
        if got is None or len(got) != len(want) or not np.allclose(got, want, atol=1e-5):
            bad += 1
    return bad


def run_one(
    name: str,
    fn: Callable[[str, list[str]], list[Any]],
    scenario: Scenario,
    latency: float,
    texts: list[str],
    expected: np.ndarray,
) -> dict[str, Any]:
    with emulator(latency, scenario.flags) as base:
        cpu0, wall0 = time.process_time(), time.monotonic()
        error = ""
        try:
            vectors = fn(base, texts)
        except Exception as exc:  # a crash is a result here
            vectors, error = [], f"{type(exc).__name__}"
        wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
        stats = httpx.get(base + "/emulator/stats", timeout=10).json()
    statuses = {int(k): v for k, v in stats["by_status"].items()}
    done = len(texts) if not error else 0
    rate = done / wall if wall else 0.0
    ratio = rate / scenario.physical_limit(latency)
    # A dropped reply holds its slot for the whole latency, as a success does; refusals
    # (4xx) and 500s come at once. So no client can beat successes / (successes + drops).
    dropped = stats["dropped_connections"]
    succeeded = statuses.get(200, 0) - dropped  # a dropped reply was counted as a 200
    ceiling = succeeded / (succeeded + dropped) if succeeded else 0.0
    return {
        "scenario": scenario.name,
        "client": name,
        "texts_per_s": rate,
        "ratio": ratio,
        "of_ceiling": ratio / ceiling if ceiling and not error else None,
        "requests": stats["requests"],
        "4xx": sum(v for k, v in statuses.items() if 400 <= k < 500),
        "5xx": sum(v for k, v in statuses.items() if k >= 500),
        "dropped": stats["dropped_connections"],
        "duplicates": stats["duplicate_embeddings"],
        "lost": lost_or_misplaced(vectors, expected) if not error else len(texts),
        "cpu_ms_per_1k": cpu / max(1, len(texts)) * 1_000_000 if not error else None,
        "error": error,
    }


def table(rows: list[dict[str, Any]], texts: int, latency: float) -> str:
    lines = [
        f"{texts:,} texts, text-embedding-v4 (1,024 dims), {int(latency * 1000)} ms per request, "
        f"{CONCURRENCY} requests in flight allowed; emulator in its own process.",
        "",
        "| scenario | client | texts/s | of physical limit | of what drops leave | requests "
        "| 4xx | 5xx | dropped | paid twice | lost or misplaced | client CPU ms / 1k vectors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cpu = "-" if r["cpu_ms_per_1k"] is None else f"{r['cpu_ms_per_1k']:.0f}"
        left = "-" if r["of_ceiling"] is None or not r["dropped"] else f"{r['of_ceiling']:.2f}"
        outcome = f" (failed: {r['error']})" if r["error"] else ""
        lines.append(
            f"| {r['scenario']} | {r['client']}{outcome} | {r['texts_per_s']:.0f} "
            f"| {r['ratio']:.2f} | {left} | {r['requests']} | {r['4xx']} | {r['5xx']} "
            f"| {r['dropped']} | {r['duplicates']} | {r['lost']} | {cpu} |"
        )
    lines += [
        "",
        "*of what drops leave*: a dropped reply holds its slot for the full latency, so with",
        "D drops and S successes no client can pass S / (S + D) of the physical limit; this",
        "column is the ratio to that ceiling (500s and 429s are answered at once).",
    ]
    return "\n".join(lines)


def write_readme(markdown: str) -> None:
    path = Path(__file__).parents[1] / "README.md"
    text = path.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{markdown}\n{END}{tail}", encoding="utf-8")


def import_clients() -> None:
    """Import every client library up front: a first import (llama_index.core takes a
    second or two) must not be timed as part of whichever client happens to run first."""
    import dashscope  # noqa: F401
    import langchain_community.embeddings  # noqa: F401
    import langchain_openai  # noqa: F401
    import llama_index.embeddings.dashscope  # noqa: F401

    import langchain_ext  # noqa: F401
    import llama_index_ext  # noqa: F401


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--only", help="run only clients whose name contains this")
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    args = parser.parse_args()
    os.environ.pop("DASHSCOPE_API_KEY", None)
    import_clients()
    texts = [
        f"benchmark passage {i}: hybrid retrieval with dense and sparse vectors, topic {i % 37}"
        for i in range(args.texts)
    ]
    with emulator(0.0, ()) as base:
        expected = truth(base, texts)
    rows = []
    for scenario in scenarios(args.latency):
        clients = dict(CLIENTS)
        if scenario.name.startswith("1,200"):
            clients["dashscope-embed (sync, told the quota)"] = ours_sync_told_rpm
        for name, fn in clients.items():
            if args.only and args.only not in name:
                continue
            row = run_one(name, fn, scenario, args.latency, texts, expected)
            rows.append(row)
            print(
                f"{scenario.name:40} {name:55} {row['texts_per_s']:7.0f}/s "
                f"ratio {row['ratio']:.2f} dup {row['duplicates']} lost {row['lost']} "
                f"{row['error']}",
                file=sys.stderr,
                flush=True,
            )
    markdown = table(rows, args.texts, args.latency)
    print(markdown)
    if args.readme:
        write_readme(markdown)


if __name__ == "__main__":
    main()
