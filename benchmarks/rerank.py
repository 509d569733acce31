"""Rerank 2,000 documents for one query: this project against the existing integrations.

Every client runs with its **default settings** against the emulator (in its own
process, so this process's CPU time is the client's alone) at a fixed latency per
request. Reported per client:

* requests sent (2,000 documents need at least 4 requests to ``qwen3-rerank``: 500
  documents per request; ``gte-rerank-v2``'s 30,000 tokens per request may force more);
* wall time as a multiple of one request's latency: the splits run concurrently, so
  the goal is <= 1.3x;
* whether the ranking is right: the emulator's scores are deterministic, so the true
  order is computed here and every returned index is checked against it;
* client CPU milliseconds for the whole call.

The anchors (``llama-index-postprocessor-dashscope-rerank``, langchain-community's
``DashScopeRerank``) send one request whatever the list's length, so they are also run
on 300 documents (what fits one ``gte-rerank-v2`` request's 30,000 tokens here), with
this project's client on the same 300 for comparison.

Run: ``.venv/bin/python benchmarks/rerank.py [--documents 2000] [--latency 0.3]``
(needs the ``bench`` extra). ``--readme`` writes the table into README.md between the
rerank benchmark markers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from dashscope_embed import DashScopeClient
from dashscope_embed.emulator.vectors import rerank_scores

sys.path.insert(0, str(Path(__file__).parent))
from throughput import KEY, emulator, write_readme

QUERY = "How do I combine keyword matching with semantic search in one retriever?"
BEGIN, END = "<!-- rerank-benchmark:begin -->", "<!-- rerank-benchmark:end -->"
ANCHOR_DOCUMENTS = 300
TOP = 10  # hits each client returns and that are checked against the true order

Ranker = Callable[[str, list[Any]], list[int]]  # (base URL, documents) -> indices, best first


def corpus(count: int) -> list[str]:
    """Passages of 40-80 words about retrieval, some of which answer the query."""
    words = [
        "keyword",
        "semantic",
        "search",
        "hybrid",
        "dense",
        "sparse",
        "vector",
        "index",
        "retriever",
        "rerank",
        "query",
        "passage",
        "document",
        "embedding",
        "token",
        "limit",
        "batch",
        "latency",
        "throughput",
        "matching",
        "fusion",
        "rank",
        "score",
        "model",
        "service",
        "request",
        "cost",
        "region",
        "workspace",
        "quota",
        "chunk",
        "overlap",
    ]
    rng = random.Random(7)
    return [
        f"passage {i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(40, 80)))
        for i in range(count)
    ]


def truth(model: str, documents: list[str]) -> list[int]:
    scores = rerank_scores(model, QUERY, documents)
    return sorted(range(len(documents)), key=lambda i: (-scores[i], i))


# --------------------------------------------------------------------------- clients
# This project's classes, each with its defaults (top_n to return the same 10 hits).
def core_sync(base: str, documents: list[str]) -> list[int]:
    client = DashScopeClient(api_key=KEY, base_url=base)
    return client.rerank(QUERY, documents, top_n=TOP).indices


def core_async(base: str, documents: list[str]) -> list[int]:
    client = DashScopeClient(api_key=KEY, base_url=base)
    return asyncio.run(client.arerank(QUERY, documents, top_n=TOP)).indices


def core_gte(base: str, documents: list[str]) -> list[int]:
    client = DashScopeClient(api_key=KEY, base_url=base)
    return client.rerank(QUERY, documents, model="gte-rerank-v2", top_n=TOP).indices


def _nodes(documents: list[str]) -> list[Any]:
    from llama_index.core.schema import NodeWithScore, TextNode

    return [NodeWithScore(node=TextNode(text=d, id_=str(i))) for i, d in enumerate(documents)]


def llama_index_sync(base: str, documents: list[Any]) -> list[int]:
    from llama_index_ext import DashScopeRerank

    reranker = DashScopeRerank(api_key=KEY, base_url=base, top_n=TOP)
    best = reranker.postprocess_nodes(documents, query_str=QUERY)
    return [int(hit.node.node_id) for hit in best]


def llama_index_async(base: str, documents: list[Any]) -> list[int]:
    from llama_index_ext import DashScopeRerank

    reranker = DashScopeRerank(api_key=KEY, base_url=base, top_n=TOP)
    best = asyncio.run(reranker.apostprocess_nodes(documents, query_str=QUERY))
    return [int(hit.node.node_id) for hit in best]


def _documents(documents: list[str]) -> list[Any]:
    from langchain_core.documents import Document

    return [Document(page_content=d, metadata={"i": i}) for i, d in enumerate(documents)]


def langchain_sync(base: str, documents: list[Any]) -> list[int]:
    from langchain_ext import DashScopeRerank

    reranker = DashScopeRerank(api_key=KEY, base_url=base, top_n=TOP)
    return [d.metadata["i"] for d in reranker.compress_documents(documents, QUERY)]


def langchain_async(base: str, documents: list[Any]) -> list[int]:
    from langchain_ext import DashScopeRerank

    reranker = DashScopeRerank(api_key=KEY, base_url=base, top_n=TOP)
    kept = asyncio.run(reranker.acompress_documents(documents, QUERY))
    return [d.metadata["i"] for d in kept]


def _point_sdk_at(base: str) -> None:
    import dashscope

    dashscope.base_http_api_url = base + "/api/v1"
    # langchain-community's class fails validation when given api_key= (its validator
    # looks for the field's name, not its alias), so the anchors read the environment.
    os.environ["DASHSCOPE_API_KEY"] = KEY


def llama_index_anchor(base: str, documents: list[Any]) -> list[int]:
    """llama-index-postprocessor-dashscope-rerank as documented (default model)."""
    from llama_index.postprocessor.dashscope_rerank import DashScopeRerank

    _point_sdk_at(base)
    reranker = DashScopeRerank(api_key=KEY, top_n=TOP)
    best = reranker.postprocess_nodes(documents, query_str=QUERY)
    return [int(hit.node.node_id) for hit in best]


def llama_index_anchor_v2(base: str, documents: list[Any]) -> list[int]:
    """The same, told a model the service still serves."""
    from llama_index.postprocessor.dashscope_rerank import DashScopeRerank

    _point_sdk_at(base)
    reranker = DashScopeRerank(api_key=KEY, top_n=TOP, model="gte-rerank-v2")
    best = reranker.postprocess_nodes(documents, query_str=QUERY)
    return [int(hit.node.node_id) for hit in best]


def langchain_anchor(base: str, documents: list[Any]) -> list[int]:
    """langchain-community's DashScopeRerank as documented (it forces ``gte-rerank``)."""
    from langchain_community.document_compressors import DashScopeRerank

    _point_sdk_at(base)
    reranker = DashScopeRerank(top_n=TOP, model="gte-rerank-v2")  # key from the environment
    return [d.metadata["i"] for d in reranker.compress_documents(documents, QUERY)]


def langchain_anchor_v2(base: str, documents: list[Any]) -> list[int]:
    """The same with the workaround that keeps the model: pass ``client`` yourself."""
    import dashscope
    from langchain_community.document_compressors import DashScopeRerank

    _point_sdk_at(base)
    reranker = DashScopeRerank(
        client=dashscope.TextReRank, dashscope_api_key=KEY, top_n=TOP, model="gte-rerank-v2"
    )
    return [d.metadata["i"] for d in reranker.compress_documents(documents, QUERY)]


# Framework inputs (nodes, documents) are built before the clock starts: the table
# measures the rerank call, not the benchmark's own object construction.
PREPARE: dict[Ranker, Callable[[list[str]], list[Any]]] = {
    **dict.fromkeys(
        [llama_index_sync, llama_index_async, llama_index_anchor, llama_index_anchor_v2],
        _nodes,
    ),
    **dict.fromkeys(
        [langchain_sync, langchain_async, langchain_anchor, langchain_anchor_v2], _documents
    ),
}

CLIENTS: dict[str, tuple[Ranker, str]] = {
    "dashscope_embed core, sync": (core_sync, "qwen3-rerank"),
    "dashscope_embed core, async": (core_async, "qwen3-rerank"),
    "dashscope_embed core, gte-rerank-v2": (core_gte, "gte-rerank-v2"),
    "llama_index_ext.DashScopeRerank": (llama_index_sync, "qwen3-rerank"),
    "llama_index_ext.DashScopeRerank, async": (llama_index_async, "qwen3-rerank"),
    "langchain_ext.DashScopeRerank": (langchain_sync, "qwen3-rerank"),
    "langchain_ext.DashScopeRerank, async": (langchain_async, "qwen3-rerank"),
    "llama-index-postprocessor-dashscope-rerank (default model)": (
        llama_index_anchor,
        "gte-rerank",
    ),
    "llama-index-postprocessor-dashscope-rerank, model=gte-rerank-v2": (
        llama_index_anchor_v2,
        "gte-rerank-v2",
    ),
    "langchain-community DashScopeRerank (model forced to gte-rerank)": (
        langchain_anchor,
        "gte-rerank-v2",
    ),
    "langchain-community DashScopeRerank, client= workaround": (
        langchain_anchor_v2,
        "gte-rerank-v2",
    ),
}
ANCHORS = [name for name in CLIENTS if name.startswith(("llama-index-", "langchain-community"))]


def import_clients() -> None:
    """Import every framework before timing: a first import costs a second of CPU."""
    import dashscope  # noqa: F401
    import langchain_community.document_compressors  # noqa: F401
    import llama_index.postprocessor.dashscope_rerank  # noqa: F401
    from langchain_core.documents import Document  # noqa: F401
    from llama_index.core.schema import TextNode  # noqa: F401

    import langchain_ext
    import llama_index_ext

    # The first instance of a pydantic class builds its validators: not the call's cost.
    llama_index_ext.DashScopeRerank(api_key=KEY)
    langchain_ext.DashScopeRerank(api_key=KEY)


def requests_so_far(base: str) -> int:
    return int(httpx.get(base + "/emulator/stats", timeout=10).json()["requests"])


def measure(
    name: str, base: str, documents: list[str], latency: float, repeats: int
) -> dict[str, Any]:
    """The median of ``repeats`` runs (a run that fails is reported as the failure)."""
    ranker, model = CLIENTS[name]
    expected = truth(model, documents)[:TOP] if model != "gte-rerank" else []
    runs = []
    for _ in range(repeats):
        inputs = PREPARE.get(ranker, list)(documents)
        before = requests_so_far(base)
        cpu0, wall0 = time.process_time(), time.monotonic()
        error = ""
        try:
            got = ranker(base, inputs)
        except Exception as exc:  # a crash is a result here
            got, error = [], f"{type(exc).__name__}: {' '.join(str(exc).split())[:90]}"
        wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
        runs.append(
            {
                "client": name,
                "documents": len(documents),
                "requests": requests_so_far(base) - before,
                "wall": wall,
                "of_latency": wall / latency,
                "cpu_ms": cpu * 1000,
                "right": (got == expected) if not error else None,
                "error": error,
            }
        )
        if error:
            return runs[-1]
    middle = sorted(runs, key=lambda r: r["wall"])[len(runs) // 2]
    cpus = sorted(r["cpu_ms"] for r in runs)
    return {
        **middle,
        "cpu_ms": cpus[len(cpus) // 2],
        "right": all(r["right"] for r in runs),
    }


def table(rows: list[dict[str, Any]], latency: float) -> str:
    lines = [
        f"One query, {int(latency * 1000)} ms per request, every client with its default "
        f"settings; the top {TOP} hits checked against the emulator's true order; wall "
        "and CPU are the median of 5 runs.",
        "",
        "| client | documents | requests | wall, x one request | top 10 right "
        "| client CPU ms | failure |",
        "|---|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        right = "-" if r["right"] is None else ("yes" if r["right"] else "**no**")
        wall = "-" if r["error"] else f"{r['of_latency']:.2f}"
        cpu = "-" if r["error"] else f"{r['cpu_ms']:.0f}"
        lines.append(
            f"| {r['client']} | {r['documents']:,} | {r['requests']} | {wall} | {right} "
            f"| {cpu} | {r['error'].replace('|', '/')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=5, help="runs per client (median)")
    parser.add_argument("--readme", action="store_true")
    args = parser.parse_args()
    documents = corpus(args.documents)
    import_clients()
    rows = []
    with emulator(args.latency, ()) as base:
        # The emulator scores each distinct document once and keeps the result: one
        # untimed call per model, so the table shows the clients, not the emulator's CPU.
        DashScopeClient(api_key=KEY, base_url=base).rerank(QUERY, documents)
        DashScopeClient(api_key=KEY, base_url=base).rerank(QUERY, documents, model="gte-rerank-v2")
        for name in CLIENTS:
            rows.append(measure(name, base, documents, args.latency, args.repeats))
            print(rows[-1], file=sys.stderr)
        for name in ["dashscope_embed core, gte-rerank-v2", *ANCHORS]:
            rows.append(
                measure(name, base, documents[:ANCHOR_DOCUMENTS], args.latency, args.repeats)
            )
            print(rows[-1], file=sys.stderr)
    markdown = table(rows, args.latency)
    print(markdown)
    if args.readme:
        write_readme(markdown, BEGIN, END)


if __name__ == "__main__":
    main()
