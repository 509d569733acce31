"""Throughput, exactly-once and correctness: this project against the existing integrations.

Every client runs with its **default settings**: nothing is told about the service's
limits, which the emulator enforces as the service would (a concurrency cap answering
429, or queueing; a request-rate cap). Each scenario starts the emulator in its own
process (so this process's CPU time is the client's alone), embeds a corpus with every
client, and reports:

* texts/s and the ratio to the physical limit the scenario allows
  (rows per request x allowed concurrency / latency, or rows per request x rate cap);
* requests, 4xx and 5xx replies, dropped connections, duplicate embeddings (finished
  work paid for twice);
* lost or misplaced vectors, checked against the emulator's deterministic vectors;
* client CPU milliseconds per 1,000 vectors (each run starts after a full garbage
  collection, so one run's garbage is not charged to the next).

Run: ``.venv/bin/python benchmarks/throughput.py [--texts 2000] [--latency 0.3]``
(needs the ``bench`` extra: ``pip install -e .[bench]``). Writes a Markdown table to
stdout and, with ``--readme``, into README.md between the benchmark markers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from dashscope_embed import DashScopeClient, EmbeddingChunk, RetryPolicy
from dashscope_embed.emulator.server import free_port

KEY = "sk-benchmark"
ROWS = 10  # text-embedding-v4's row limit
BEGIN, END = "<!-- benchmark:begin -->", "<!-- benchmark:end -->"


@dataclass(frozen=True)
class Scenario:
    name: str
    flags: tuple[str, ...]
    physical_limit: Callable[[float], float]  # texts/s, given the latency
    texts_factor: float = 1.0  # of --texts, for runs that must be long to matter
    processes: int = 1  # clients sharing the service at once


def scenarios() -> list[Scenario]:
    cap = lambda n: lambda lat: ROWS * n / lat  # noqa: E731
    rpm = lambda n: lambda lat: ROWS * n / 60  # noqa: E731
    return [
        Scenario("16 concurrent, 429 beyond", ("--max-concurrency", "16"), cap(16)),
        Scenario(
            "16 concurrent, 429 beyond; 5% 500s + 3% drops",
            ("--max-concurrency", "16", "--error-rate", "0.05", "--drop-rate", "0.03"),
            cap(16),
        ),
        Scenario("1,200 requests/min", ("--rpm", "1200"), rpm(1200)),
        Scenario(
            "8 concurrent, excess queued", ("--max-concurrency", "8", "--queue-excess"), cap(8)
        ),
        Scenario("6,000 requests/min", ("--rpm", "6000"), rpm(6000), texts_factor=2.5),
        Scenario(
            "two processes sharing 16 concurrent",
            ("--max-concurrency", "16"),
            cap(16),
            processes=2,
        ),
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
# This project's classes, each with its defaults: no max_concurrency, no quota told.
def ours_sync(base: str, texts: list[str]) -> list[Any]:
    client = DashScopeClient(api_key=KEY, base_url=base)
    return client.embed(texts, text_type="document").require_dense()


def ours_async(base: str, texts: list[str]) -> list[Any]:
    client = DashScopeClient(api_key=KEY, base_url=base)
    result = asyncio.run(client.aembed(texts, text_type="document"))
    return result.require_dense()


def ours_numpy_stream(base: str, texts: list[str]) -> list[Any]:
    client = DashScopeClient(api_key=KEY, base_url=base)
    chunks = client.embed_stream(texts, text_type="document", as_numpy=True)
    return list(np.concatenate([chunk.array for chunk in chunks]))


def ours_numpy_stream_async(base: str, texts: list[str]) -> list[Any]:
    client = DashScopeClient(api_key=KEY, base_url=base)

    async def run() -> list[EmbeddingChunk]:
        # The chunks, not their arrays: Python 3.11's asyncio.run reprs the main task's
        # result when it restores the SIGINT handler, and a list of arrays costs ~12 ms.
        chunks = client.aembed_stream(texts, text_type="document", as_numpy=True)
        return [chunk async for chunk in chunks]

    return list(np.concatenate([chunk.array for chunk in asyncio.run(run())]))


def ours_llama_index(base: str, texts: list[str]) -> list[Any]:
    from llama_index_ext import DashScopeEmbedding

    model = DashScopeEmbedding(api_key=KEY, base_url=base)
    return list(model.get_text_embedding_batch(texts))


def ours_llama_index_async(base: str, texts: list[str]) -> list[Any]:
    from llama_index_ext import DashScopeEmbedding

    model = DashScopeEmbedding(api_key=KEY, base_url=base)
    return list(asyncio.run(model.aget_text_embedding_batch(texts)))


def ours_langchain(base: str, texts: list[str]) -> list[Any]:
    from langchain_ext import DashScopeEmbeddings

    return DashScopeEmbeddings(api_key=KEY, base_url=base).embed_documents(texts)


def ours_langchain_async(base: str, texts: list[str]) -> list[Any]:
    from langchain_ext import DashScopeEmbeddings

    model = DashScopeEmbeddings(api_key=KEY, base_url=base)
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


OURS: dict[str, Callable[[str, list[str]], list[Any]]] = {
    "dashscope-embed (sync)": ours_sync,
    "dashscope-embed (async)": ours_async,
    "dashscope-embed stream, as_numpy=True (sync)": ours_numpy_stream,
    "dashscope-embed stream, as_numpy=True (async)": ours_numpy_stream_async,
    "dashscope-embed LlamaIndex DashScopeEmbedding (sync)": ours_llama_index,
    "dashscope-embed LlamaIndex DashScopeEmbedding (async)": ours_llama_index_async,
    "dashscope-embed LangChain DashScopeEmbeddings (sync)": ours_langchain,
    "dashscope-embed LangChain DashScopeEmbeddings (async)": ours_langchain_async,
}
ANCHORS: dict[str, Callable[[str, list[str]], list[Any]]] = {
    "llama-index-embeddings-dashscope": llama_index_dashscope,
    "langchain-community DashScopeEmbeddings": langchain_community_dashscope,
    "langchain-openai OpenAIEmbeddings (compatible mode)": langchain_openai_compatible,
}
CLIENTS = {**OURS, **ANCHORS}


# --------------------------------------------------------------------------- measuring
def truth(base: str, texts: list[str]) -> np.ndarray:
    client = DashScopeClient(
        api_key=KEY, base_url=base, retry=RetryPolicy(max_retries=50, total_timeout=None)
    )
    return np.asarray(client.embed(texts, text_type="document").require_dense(), dtype=np.float32)


def lost_or_misplaced(vectors: list[Any], expected: np.ndarray) -> int:
    bad = abs(len(vectors) - len(expected))
    for got, want in zip(vectors, expected, strict=False):
        if got is None or len(got) != len(want) or not np.allclose(got, want, atol=1e-5):
            bad += 1
    return bad


def measure(
    fn: Callable[[str, list[str]], list[Any]], base: str, texts: list[str], expected: np.ndarray
) -> dict[str, Any]:
    """One client's run: wall and CPU time, and whether every vector is right."""
    # Every run starts after a full collection: the last run's garbage, and where the
    # collector's counts happen to stand, are not charged to this one.
    gc.collect()
    cpu0, wall0 = time.process_time(), time.monotonic()
    error = why = ""
    try:
        vectors = fn(base, texts)
    except Exception as exc:  # a crash is a result here
        vectors, error = [], f"{type(exc).__name__}"
        # What failed for good (a partial error's first request), kept in the run's log.
        first = getattr(exc, "errors", None)
        why = f"{first[0]!r:.300}" if first else f"{exc!s:.300}"
    wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    return {
        "wall": wall,
        "cpu": cpu,
        "error": error,
        "why": why,
        "done": len(texts) if not error else 0,
        "lost": lost_or_misplaced(vectors, expected) if not error else len(texts),
    }


def in_processes(
    name: str, base: str, texts: list[str], expected: np.ndarray, count: int
) -> list[dict[str, Any]]:
    """``count`` processes running client ``name`` at once, each on its own share of
    ``texts`` (the service sees the work of all of them)."""
    share = len(texts) // count
    with tempfile.TemporaryDirectory() as folder:
        children = []
        for number in range(count):
            start = number * share
            truth_file = Path(folder) / f"expected-{number}.npy"
            np.save(truth_file, expected[start : start + share])
            command = [
                sys.executable,
                __file__,
                "--child",
                base,
                name,
                str(start),
                str(share),
                str(truth_file),
            ]
            children.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
        return [json.loads(child.communicate(timeout=900)[0]) for child in children]


def run_one(
    name: str,
    fn: Callable[[str, list[str]], list[Any]],
    scenario: Scenario,
    latency: float,
    texts: list[str],
    expected: np.ndarray,
) -> list[dict[str, Any]]:
    with emulator(latency, scenario.flags) as base:
        if scenario.processes == 1:
            runs = [measure(fn, base, texts, expected)]
        else:
            runs = in_processes(name, base, texts, expected, scenario.processes)
        stats = httpx.get(base + "/emulator/stats", timeout=10).json()
    statuses = {int(k): v for k, v in stats["by_status"].items()}
    limit = scenario.physical_limit(latency)
    # A dropped reply holds its slot for the whole latency, as a success does; refusals
    # (4xx) and 500s come at once. So no client can beat successes / (successes + drops).
    dropped = stats["dropped_connections"]
    succeeded = statuses.get(200, 0) - dropped  # a dropped reply was counted as a 200
    ceiling = succeeded / (succeeded + dropped) if succeeded else 0.0
    shared = {
        "scenario": scenario.name,
        "requests": stats["requests"],
        "4xx": sum(v for k, v in statuses.items() if 400 <= k < 500),
        "5xx": sum(v for k, v in statuses.items() if k >= 500),
        "dropped": dropped,
        "duplicates": stats["duplicate_embeddings"],
        "peak": stats["peak_concurrency"],
    }
    rows = []
    for number, run in enumerate(runs):
        rate = run["done"] / run["wall"] if run["wall"] else 0.0
        label = name if len(runs) == 1 else f"{name}, process {number + 1} of {len(runs)}"
        rows.append(
            {
                **shared,
                "client": label,
                "texts_per_s": rate,
                "ratio": rate / limit,
                "of_ceiling": rate / limit / ceiling if ceiling and not run["error"] else None,
                "lost": run["lost"],
                "cpu_ms_per_1k": run["cpu"] / max(1, run["done"]) * 1e6
                if not run["error"]
                else None,
                "error": run["error"],
                "why": run["why"],
            }
        )
    if len(runs) > 1:
        total = sum(r["done"] for r in runs) / max(r["wall"] for r in runs)
        rows.append(
            {
                **shared,
                "client": f"{name}, all {len(runs)} processes together",
                "texts_per_s": total,
                "ratio": total / limit,
                "of_ceiling": None,
                "lost": sum(r["lost"] for r in runs),
                "cpu_ms_per_1k": None,
                "error": "",
                "why": "",
            }
        )
    return rows


def table(rows: list[dict[str, Any]], texts: int, latency: float) -> str:
    lines = [
        f"{texts:,} texts ({int(texts * 2.5):,} at 6,000 requests/min), text-embedding-v4 "
        f"(1,024 dims), {int(latency * 1000)} ms per request; every client with its default "
        "settings, told nothing about the limits; emulator in its own process.",
        "",
        "| scenario | client | texts/s | of physical limit | of what drops leave | requests "
        "| 429s | 5xx | dropped | peak in flight | paid twice | lost or misplaced "
        "| client CPU ms / 1k vectors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cpu = "-" if r["cpu_ms_per_1k"] is None else f"{r['cpu_ms_per_1k']:.0f}"
        left = "-" if r["of_ceiling"] is None or not r["dropped"] else f"{r['of_ceiling']:.2f}"
        outcome = f" (failed: {r['error']})" if r["error"] else ""
        share = f"{r['4xx']} ({r['4xx'] / max(1, r['requests']):.0%})"
        lines.append(
            f"| {r['scenario']} | {r['client']}{outcome} | {r['texts_per_s']:.0f} "
            f"| {r['ratio']:.2f} | {left} | {r['requests']} | {share} | {r['5xx']} "
            f"| {r['dropped']} | {r['peak']} | {r['duplicates']} | {r['lost']} | {cpu} |"
        )
    lines += [
        "",
        "*of physical limit*: rows per request x the concurrency the service admits /",
        "latency, or rows per request x its request rate. *of what drops leave*: a dropped",
        "reply holds its slot for the full latency, so with D drops and S successes no client",
        "can pass S / (S + D) of the physical limit; this column is the ratio to that",
        "ceiling. The existing integrations ran on 500 texts (they send one request at a",
        "time, so more would only take longer).",
    ]
    return "\n".join(lines)


def write_readme(markdown: str, begin: str = BEGIN, end: str = END) -> None:
    """Put ``markdown`` into README.md between the ``begin`` and ``end`` markers."""
    path = Path(__file__).parents[1] / "README.md"
    text = path.read_text(encoding="utf-8")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{markdown}\n{end}{tail}", encoding="utf-8")


def import_clients() -> None:
    """Import every client library up front: a first import (llama_index.core takes a
    second or two) must not be timed as part of whichever client happens to run first."""
    import dashscope  # noqa: F401
    import langchain_community.embeddings  # noqa: F401
    import langchain_openai  # noqa: F401
    import llama_index.embeddings.dashscope  # noqa: F401

    import langchain_ext  # noqa: F401
    import llama_index_ext  # noqa: F401


def corpus(count: int) -> list[str]:
    return [
        f"benchmark passage {i}: hybrid retrieval with dense and sparse vectors, topic {i % 37}"
        for i in range(count)
    ]


def child(base: str, name: str, start: int, count: int, truth_file: str) -> None:
    """One of several processes sharing the service: run, report as JSON."""
    texts = corpus(start + count)[start:]
    result = measure(CLIENTS[name], base, texts, np.load(truth_file))
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--anchor-texts", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--only", help="run only clients whose name contains this")
    parser.add_argument("--scenario", help="run only scenarios whose name contains this")
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.pop("DASHSCOPE_API_KEY", None)
    if args.child:
        base, name, start, count, truth_file = args.child
        child(base, name, int(start), int(count), truth_file)
        return
    import_clients()
    biggest = corpus(int(args.texts * max(max(s.texts_factor, s.processes) for s in scenarios())))
    with emulator(0.0, ()) as base:
        expected_all = truth(base, biggest)
    rows = []
    for scenario in scenarios():
        if args.scenario and args.scenario not in scenario.name:
            continue
        for name, fn in (OURS if scenario.processes > 1 else CLIENTS).items():
            if args.only and args.only not in name:
                continue
            count = args.anchor_texts if name in ANCHORS else args.texts
            count = int(count * max(scenario.texts_factor, scenario.processes))
            texts, expected = biggest[:count], expected_all[:count]
            for row in run_one(name, fn, scenario, args.latency, texts, expected):
                rows.append(row)
                print(
                    f"{scenario.name:45} {row['client']:62} {row['texts_per_s']:6.0f}/s "
                    f"ratio {row['ratio']:.2f} 429s {row['4xx']}/{row['requests']} "
                    f"dup {row['duplicates']} lost {row['lost']} {row['error']} {row['why']}",
                    file=sys.stderr,
                    flush=True,
                )
            if scenario.processes > 1:
                break  # one of our clients shows the sharing; more would repeat it
    markdown = table(rows, args.texts, args.latency)
    print(markdown)
    if args.readme:
        write_readme(markdown)


if __name__ == "__main__":
    main()
