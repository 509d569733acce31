"""Self-hosted Qwen3 servers over loopback HTTP: the emulator answers as vLLM, SGLang,
TEI, Ollama and Infinity do. Instruction formatting by role, client-side Matryoshka equal
to the server's, sparse refused, rerank ordering and splitting, faults with nothing lost,
the key kept home, and both frameworks switching backends by settings alone."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from dashscope_embed import DashScopeClient, self_hosted_model
from dashscope_embed.emulator import Emulator
from dashscope_embed.errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidInputError,
    NotFoundError,
)
from dashscope_embed.protocol.selfhosted import DEFAULT_TASK
from dashscope_embed.retry import RetryPolicy

SERVERS = ["vllm", "sglang", "tei", "ollama", "infinity"]
RERANKING = ["vllm", "sglang", "tei", "infinity"]
EMBEDDER = "Qwen/Qwen3-Embedding-0.6B"
RERANKER = "Qwen/Qwen3-Reranker-0.6B"
FAST_RETRY = RetryPolicy(max_retries=8, initial_delay=0.01, max_delay=0.05)
TASK = "Given a question about code, retrieve the passage that answers it"


@pytest.fixture
def servers() -> Iterator[dict[str, Emulator]]:
    emulators = {name: Emulator(self_hosted=name) for name in SERVERS}
    for emulator in emulators.values():
        emulator.start()
    try:
        yield emulators
    finally:
        for emulator in emulators.values():
            emulator.stop()


def client_for(emulator: Emulator, server: str, **settings: Any) -> DashScopeClient:
    return DashScopeClient(base_url=emulator.base_url, server=server, retry=FAST_RETRY, **settings)


def inputs(emulator: Emulator) -> list[Any]:
    """Every text the server received, in arrival order."""
    sent = []
    for record in emulator.requests():
        body = record["json"] or {}
        value = body.get("input", body.get("inputs"))
        sent.extend([value] if isinstance(value, str) else value or [])
    return sent


# ---------------------------------------------------------------------- roles
@pytest.mark.parametrize("server", SERVERS)
def test_queries_carry_the_instruction_in_the_text_and_documents_none(
    server: str, servers: dict[str, Emulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = servers[server]
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-dashscope-only")  # must not travel
    client = client_for(emulator, server)
    client.embed(["how do I sort a list?"], model=EMBEDDER, text_type="query", instruct=TASK)
    client.embed(["what is BM25?"], model=EMBEDDER, text_type="query")
    client.embed(["sorted() returns a new list", "BM25 ranks by terms"], model=EMBEDDER)
    assert inputs(emulator) == [
        f"Instruct: {TASK}\nQuery:how do I sort a list?",
        f"Instruct: {DEFAULT_TASK}\nQuery:what is BM25?",
        "sorted() returns a new list",
        "BM25 ranks by terms",
    ]
    stats = emulator.stats()
    assert (stats["instructed_texts"], stats["plain_texts"]) == (2, 2)
    assert stats["ignored_fields"] == {}  # no text_type or instruct sent as a field
    assert stats["authorized_requests"] == 0  # DASHSCOPE_API_KEY stayed home


def test_a_query_vector_is_the_one_its_formatted_text_gets(servers: dict[str, Emulator]) -> None:
    """The query role is only a formatting: the same text formatted by hand as a document
    gets the same vector, and a query differs from the same words as a document."""
    client = client_for(servers["vllm"], "vllm")
    query = client.embed(["sort a list"], model=EMBEDDER, text_type="query", instruct=TASK)
    by_hand = client.embed([f"Instruct: {TASK}\nQuery:sort a list"], model=EMBEDDER)
    document = client.embed(["sort a list"], model=EMBEDDER, text_type="document")
    assert np.allclose(query.require_dense(), by_hand.require_dense())
    assert not np.allclose(query.require_dense(), document.require_dense())


# ---------------------------------------------------------------------- Matryoshka
def test_client_side_matryoshka_equals_the_servers(servers: dict[str, Emulator]) -> None:
    texts = ["alpha beta gamma", "a longer passage about vector search and ranking"]
    cut_here = client_for(servers["vllm"], "vllm").embed(texts, model=EMBEDDER, dimension=128)
    cut_there = client_for(servers["ollama"], "ollama").embed(texts, model=EMBEDDER, dimension=128)
    vllm_bodies = [r["json"] for r in servers["vllm"].requests()]
    ollama_bodies = [r["json"] for r in servers["ollama"].requests()]
    assert "dimensions" not in vllm_bodies[0] and ollama_bodies[0]["dimensions"] == 128
    assert np.allclose(cut_here.require_dense(), cut_there.require_dense(), atol=1e-6)
    for vector in cut_here.require_dense():
        assert len(vector) == 128 and abs(np.linalg.norm(vector) - 1) < 1e-6


def test_vllm_refuses_dimensions_unless_started_matryoshka_and_then_cuts_the_same() -> None:
    body = {"model": EMBEDDER, "input": ["alpha beta"], "dimensions": 64}
    with Emulator(self_hosted="vllm") as plain:
        refused = httpx.post(plain.base_url + "/v1/embeddings", json=body)
        client = DashScopeClient(base_url=plain.base_url, server="vllm")
        ours = client.embed(["alpha beta"], model=EMBEDDER, dimension=64).require_dense()[0]
    assert refused.status_code == 400
    assert "does not support matryoshka representation" in refused.json()["message"]
    with Emulator(self_hosted="vllm", matryoshka=True) as matryoshka:
        served = httpx.post(matryoshka.base_url + "/v1/embeddings", json=body).json()
    assert np.allclose(served["data"][0]["embedding"], ours, atol=1e-6)


# ---------------------------------------------------------------------- refusals
def test_what_the_open_model_cannot_do_is_refused_before_sending(
    servers: dict[str, Emulator],
) -> None:
    emulator = servers["vllm"]
    client = client_for(emulator, "vllm")
    with pytest.raises(InvalidInputError, match="the open Qwen3-Embedding has no sparse output"):
        client.embed(["x"], model=EMBEDDER, output_type="dense&sparse")
    with pytest.raises(InvalidInputError, match="'text-embedding-v4' is a DashScope model"):
        client.embed(["x"], model="text-embedding-v4")
    with pytest.raises(InvalidInputError, match="allowed: 32 to 1024"):
        client.embed(["x"], model=EMBEDDER, dimension=2048)
    with pytest.raises(InvalidInputError, match="takes no instruct"):
        client.rerank("q", ["d"], model=RERANKER, instruct="Judge relevance")
    with pytest.raises(InvalidInputError, match="'qwen3-rerank' is a DashScope rerank model"):
        client.rerank("q", ["d"], model="qwen3-rerank")
    assert emulator.stats()["requests"] == 0
    dashscope = DashScopeClient(api_key="sk-x", base_url="http://127.0.0.1:9")
    with pytest.raises(InvalidInputError, match="set server="):
        dashscope.embed(["x"], model=EMBEDDER)
    with pytest.raises(InvalidInputError, match="set server="):
        dashscope.rerank("q", ["d"], model=RERANKER)
    ollama = client_for(servers["ollama"], "ollama")
    with pytest.raises(InvalidInputError, match="not served over protocol='ollama'"):
        ollama.rerank("q", ["d"], model=RERANKER)


def test_settings_that_cannot_work_are_named() -> None:
    with pytest.raises(ConfigurationError, match="server='vllm' needs base_url"):
        DashScopeClient(server="vllm")
    with pytest.raises(ConfigurationError, match="plain http to a non-loopback host"):
        DashScopeClient(server="tei", base_url="http://gpu-box.internal:8080", api_key="t")
    DashScopeClient(server="tei", base_url="http://gpu-box.internal:8080", allow_insecure_http=True)
    with pytest.raises(ConfigurationError, match="server"):
        DashScopeClient(server="triton", base_url="http://127.0.0.1:1")


def test_a_served_model_name_and_the_servers_own_token() -> None:
    with Emulator(self_hosted="vllm", server_token="gpu-token") as emulator:
        alias = self_hosted_model("qwen3-embed", like=EMBEDDER)
        without = DashScopeClient(base_url=emulator.base_url, server="vllm", max_retries=0)
        with pytest.raises(AuthenticationError):
            without.embed(["x"], model=EMBEDDER)
        client = DashScopeClient(
            base_url=emulator.base_url, server="vllm", api_key="gpu-token", max_retries=0
        )
        assert len(client.embed(["x"], model=EMBEDDER).require_dense()[0]) == 1024
        with pytest.raises(NotFoundError, match="qwen3-embed"):  # this server serves no alias
            client.embed(["x"], model=alias)
        assert "gpu-token" not in repr(client) and "gpu-token" not in json.dumps(
            client.settings.model_dump(mode="json")
        )


# ---------------------------------------------------------------------- batching, rerank
def test_tei_gets_at_most_its_batch_limit(servers: dict[str, Emulator]) -> None:
    client = client_for(servers["tei"], "tei")
    vectors = client.embed([f"passage {i}" for i in range(100)], model=EMBEDDER)
    assert len(vectors.require_dense()) == 100
    stats = servers["tei"].stats()
    assert stats["max_rows_seen"] <= 32 and stats["requests"] == 4


@pytest.mark.parametrize("server", RERANKING)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_rerank_splits_orders_and_merges(
    server: str, mode: str, servers: dict[str, Emulator]
) -> None:
    emulator = servers[server]
    emulator.configure(latency=0.02)
    client = client_for(emulator, server)
    documents = [f"note {i} about cooking pasta" for i in range(2200)]
    documents[1717] = "how hybrid search fuses keyword and vector scores"
    documents[42] = "hybrid search"
    options: dict[str, Any] = {"instruct": "Find the passage"} if server == "sglang" else {}
    query = "how does hybrid search fuse keyword and vector scores"
    if mode == "async":
        result = asyncio.run(client.arerank(query, documents, model=RERANKER, top_n=3, **options))
    else:
        result = client.rerank(query, documents, model=RERANKER, top_n=3, **options)
    assert [hit.index for hit in result.hits][:2] == [1717, 42]
    assert len(result.hits) == 3
    assert emulator.stats()["requests"] == 3  # 1,000 documents a request
    alone = client.rerank(query, [documents[1717], documents[42]], model=RERANKER, **options)
    assert [round(h.relevance_score, 6) for h in alone.hits] == [
        round(h.relevance_score, 6) for h in result.hits[:2]
    ]


# ---------------------------------------------------------------------- faults
@pytest.mark.parametrize("server", ["vllm", "tei"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_faults_lose_nothing_and_pay_nothing_twice(
    server: str, mode: str, servers: dict[str, Emulator]
) -> None:
    emulator = servers[server]
    client = client_for(emulator, server)
    texts = [f"passage number {i} on topic {i % 7}" for i in range(300)]

    def run() -> list[list[float]]:
        call = client.aembed if mode == "async" else None
        if call is not None:
            return asyncio.run(call(texts, model=EMBEDDER, dimension=256)).require_dense()
        return client.embed(texts, model=EMBEDDER, dimension=256).require_dense()

    emulator.configure(latency=0.2)  # longer than the emulator's own work on 256 texts
    clean = run()
    assert emulator.stats()["peak_concurrency"] > 1
    emulator.reset()
    emulator.configure(error_rate=0.3, drop_rate=0.1, seed=3)
    faulty = run()
    assert np.allclose(faulty, clean)
    stats = emulator.stats()
    assert stats["injected_errors"] + stats["dropped_connections"] > 0
    assert stats["duplicate_embeddings"] == 0


def test_the_bulk_command_embeds_a_corpus_on_a_self_hosted_server(tmp_path: Path) -> None:
    corpus = [f"passage {i} about topic {i % 5}" for i in range(500)]
    source = tmp_path / "corpus.txt"
    source.write_text("\n".join(corpus) + "\n")
    with Emulator(self_hosted="tei") as emulator:
        env = {**os.environ, "DASHSCOPE_API_KEY": "sk-dashscope-only"}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "dashscope_embed.cli",
                "embed",
                str(source),
                "--out",
                str(tmp_path / "v.npy"),
                "--server",
                "tei",
                "--base-url",
                emulator.base_url,
                "--model",
                EMBEDDER,
                "--dimension",
                "128",
                "--quiet",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        stats = emulator.stats()
        sample = DashScopeClient(base_url=emulator.base_url, server="tei").embed(
            [corpus[499]], model=EMBEDDER, dimension=128
        )
    matrix = np.load(tmp_path / "v.npy")
    assert matrix.shape == (500, 128)
    assert np.allclose(matrix[499], sample.require_dense()[0], atol=1e-6)
    assert stats["max_rows_seen"] <= 32 and stats["authorized_requests"] == 0
