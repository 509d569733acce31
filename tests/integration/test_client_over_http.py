"""The core client against the emulator over real loopback HTTP."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from dashscope_embed import (
    AuthenticationError,
    DashScopeClient,
    ModelSpec,
    NotFoundError,
    PartialEmbeddingError,
    RetryPolicy,
)
from dashscope_embed.emulator import Emulator

Factory = Callable[..., DashScopeClient]
EMBED_PATH = "/api/v1/services/embeddings/text-embedding/text-embedding"


def test_every_output_type_round_trips(make_client: Factory) -> None:
    client = make_client()
    texts = ["Hybrid search mixes dense and sparse vectors", "稀疏向量适合关键词匹配"]
    dense = client.embed(texts, dimension=512)
    assert dense.dimension == 512 and dense.sparse is None
    assert all(len(v) == 512 for v in dense.require_dense())
    sparse = client.embed(texts, output_type="sparse")
    assert sparse.dense is None and len(sparse.require_sparse()) == 2
    assert "sparse" in sparse.require_sparse()[0].tokens
    both = client.embed(texts, output_type="dense&sparse", dimension=64)
    assert len(both.require_dense()[1]) == 64
    assert both.require_sparse()[1].as_dict() == sparse.require_sparse()[1].as_dict()


def test_the_wire_carries_exactly_the_parameters_set(
    make_client: Factory, dashscope_emulator: Emulator
) -> None:
    client = make_client(workspace="llm-team-a")
    client.embed(
        [f"q{i}" for i in range(23)],
        text_type="query",
        instruct="Find code",
        dimension=256,
        output_type="dense&sparse",
    )
    sent = dashscope_emulator.requests(EMBED_PATH)
    # Requests run concurrently, so they may arrive in any order.
    assert sorted(len(r["json"]["input"]["texts"]) for r in sent) == [3, 10, 10]
    for request in sent:
        assert request["json"]["parameters"] == {
            "text_type": "query",
            "dimension": 256,
            "output_type": "dense&sparse",
            "instruct": "Find code",
        }
        assert request["headers"]["x-dashscope-workspace"] == "llm-team-a"
        assert "authorization" not in request["headers"]


def test_vectors_behave_like_embeddings(make_client: Factory) -> None:
    client = make_client()
    docs = ["The cat sat on the mat", "A cat is sitting on a mat", "Stock markets fell sharply"]
    d = np.array(client.embed(docs, text_type="document").require_dense())
    assert np.allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
    assert d[0] @ d[1] > d[0] @ d[2]
    q = np.array(client.embed(["cat on a mat"], text_type="query").require_dense()[0])
    assert int(np.argmax(d @ q)) in (0, 1)
    same_as_doc = np.array(client.embed([docs[0]], text_type="query").require_dense()[0])
    assert not np.allclose(same_as_doc, d[0])
    instructed = np.array(
        client.embed([docs[0]], text_type="query", instruct="Classify the topic").require_dense()[0]
    )
    assert not np.allclose(instructed, same_as_doc)
    again = np.array(client.embed(docs, text_type="document").require_dense())
    assert np.array_equal(again, d)  # deterministic


def test_matryoshka_prefix_property(make_client: Factory) -> None:
    client = make_client()
    full = np.array(client.embed(["matryoshka"], dimension=2048).require_dense()[0])
    small = np.array(client.embed(["matryoshka"], dimension=128).require_dense()[0])
    prefix = full[:128] / np.linalg.norm(full[:128])
    assert np.allclose(small, prefix, atol=1e-5)


def test_openai_compatible_protocol(make_client: Factory, dashscope_emulator: Emulator) -> None:
    client = make_client(protocol="openai-compatible")
    result = client.embed(["alpha", "beta", "alpha"], dimension=768)
    assert len(result) == 3 and len(result.require_dense()[0]) == 768
    assert result.require_dense()[0] == result.require_dense()[2]
    native = make_client().embed(["alpha"], dimension=768)
    assert np.allclose(result.require_dense()[0], native.require_dense()[0], atol=1e-6)
    sent = dashscope_emulator.requests("/compatible-mode/v1/embeddings")
    assert sent[0]["json"] == {
        "model": "text-embedding-v4",
        "input": ["alpha", "beta"],
        "encoding_format": "float",
        "dimensions": 768,
    }


def test_faults_are_retried_without_paying_twice(
    make_client: Factory, dashscope_emulator: Emulator
) -> None:
    # Jittered latency: replies come back out of order, and must still land in place.
    dashscope_emulator.configure(error_rate=0.25, drop_rate=0.15, seed=7, latency_jitter=0.02)
    client = make_client(
        max_concurrency=4,
        retry=RetryPolicy(max_retries=10, initial_delay=0.001, max_delay=0.01, total_timeout=30),
    )
    texts = [f"document number {i}" for i in range(300)]
    result = client.embed(texts, dimension=64)
    stats = dashscope_emulator.stats()
    assert stats["injected_errors"] > 0 and stats["dropped_connections"] > 0
    assert stats["duplicate_embeddings"] == 0
    assert stats["texts_delivered"] == 300
    dashscope_emulator.configure(error_rate=0.0, drop_rate=0.0)
    clean = make_client().embed(texts, dimension=64)
    assert result.require_dense() == clean.require_dense()  # nothing lost or misplaced


def test_throttling_with_retry_after_is_waited_out(
    make_client: Factory, dashscope_emulator: Emulator
) -> None:
    dashscope_emulator.configure(max_concurrency=1, latency=0.02, throttle_retry_after=0.05)
    result = make_client(max_concurrency=4).embed([f"t{i}" for i in range(60)])
    stats = dashscope_emulator.stats()
    assert len(result) == 60
    assert stats["throttled"] > 0 and stats["by_status"]["429"] == stats["throttled"]
    assert stats["peak_concurrency"] == 1 and stats["duplicate_embeddings"] == 0


def test_wrong_key_is_an_authentication_error_with_request_id(make_client: Factory) -> None:
    with pytest.raises(AuthenticationError) as info:
        make_client(api_key="sk-not-the-emulators").embed(["x"])
    assert info.value.status_code == 401 and info.value.code == "InvalidApiKey"
    assert info.value.request_id


def test_unknown_model_described_by_a_spec_reaches_the_service(make_client: Factory) -> None:
    spec = ModelSpec(
        name="text-embedding-v9",
        max_rows=4,
        max_tokens_per_row=100,
        dimensions=(256,),
        default_dimension=256,
    )
    with pytest.raises(NotFoundError, match="Model not exist"):
        make_client().embed(["x"], model=spec)


class UnderCounter:
    """A token counter that sees every text as one token (a bad estimate)."""

    exact = False

    def count(self, text: str) -> int:
        return 1

    def truncate(self, text: str, max_tokens: int) -> str:
        return text

    def split(self, text: str, max_tokens: int) -> list[str]:
        return [text]


def test_service_400_on_one_batch_leaves_the_others_done(
    make_client: Factory, dashscope_emulator: Emulator
) -> None:
    # When a too-long text slips past the client's count, the service's 400 fails its
    # request only; the other requests' work is kept.
    texts = [f"short {i}" for i in range(30)]
    texts[25] = "word " * 9000
    with pytest.raises(PartialEmbeddingError) as info:
        make_client(token_counter=UnderCounter()).embed(texts)
    assert info.value.failed_positions == list(range(20, 30))
    assert dashscope_emulator.stats()["texts_delivered"] == 20


async def test_async_is_concurrent_and_bounded(
    make_client: Factory, dashscope_emulator: Emulator
) -> None:
    dashscope_emulator.configure(latency=0.05)
    client = make_client(max_concurrency=3)
    texts = [f"async text {i}" for i in range(120)]
    result = await client.aembed(texts, text_type="document")
    stats = dashscope_emulator.stats()
    assert len(result) == 120
    assert stats["peak_concurrency"] == 3
    sync = make_client().embed(texts, text_type="document")
    assert result.require_dense() == sync.require_dense()


def test_async_client_survives_several_event_loops(make_client: Factory) -> None:
    client = make_client()
    first = asyncio.run(client.aembed(["loop one"]))
    second = asyncio.run(client.aembed(["loop two"]))
    assert len(first) == len(second) == 1


def test_unpickled_client_embeds_with_the_workers_key(
    make_client: Factory, dashscope_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pickle

    clone = pickle.loads(pickle.dumps(make_client()))
    monkeypatch.setenv("DASHSCOPE_API_KEY", dashscope_emulator.api_key)
    assert len(clone.embed(["from a worker"])) == 1


def test_adaptive_concurrency_finds_a_hidden_cap(
    make_client: Factory, dashscope_emulator: Emulator
) -> None:
    # The service allows 3 requests at once and does not say so; the client starts at 12.
    dashscope_emulator.configure(max_concurrency=3, latency=0.05, throttle_retry_after=0.05)
    client = make_client(max_concurrency=12)
    texts = [f"capped {i}" for i in range(600)]
    result = client.embed(texts)
    stats = dashscope_emulator.stats()
    assert len(result) == 600 and stats["duplicate_embeddings"] == 0
    # Refusals are a one-off cost of finding the cap (12 -> 8 -> 6 -> 4 -> 3: about 18,
    # measured 17-20), not a steady rate: a fixed 12 would get ~70 % 429s, ~140 here.
    assert stats["throttled"] <= 25
    assert 1 <= client.gate.limit <= 6 and client.gate.throttle_cuts >= 1


async def test_adaptive_concurrency_async(
    make_client: Factory, dashscope_emulator: Emulator
) -> None:
    dashscope_emulator.configure(max_concurrency=2, latency=0.03, throttle_retry_after=0.03)
    client = make_client(max_concurrency=10)
    result = await client.aembed([f"acapped {i}" for i in range(1000)])
    stats = dashscope_emulator.stats()
    assert len(result) == 1000 and stats["duplicate_embeddings"] == 0
    assert stats["throttled"] < 0.25 * stats["requests"]


@pytest.mark.parametrize("says_when", [True, False], ids=["retry-after", "no-retry-after"])
def test_untold_rate_cap_is_learned_without_cutting_concurrency(
    make_client: Factory, dashscope_emulator: Emulator, says_when: bool
) -> None:
    # 600 requests a minute is 10 a second; the client is not told. Whether the
    # service's refusals say when to come back is unconfirmed: both ways.
    dashscope_emulator.configure(rpm=600, latency=0.02, rate_retry_after=says_when)
    client = make_client(max_concurrency=8)
    result = client.embed([f"rate {i}" for i in range(400)])
    stats = dashscope_emulator.stats()
    assert len(result) == 400 and stats["duplicate_embeddings"] == 0
    # Only the burst that revealed the cap is refused (at most one per slot): after it
    # the client waits for the service's window to clear, then paces under the cap.
    assert stats["throttled"] <= 8
    assert client.pace is not None and client.pace.cuts >= 1
    assert client.pace.rate is not None and client.pace.rate <= 12
    # A rate cap is not a concurrency cap: no refusal cut the number in flight (on a
    # loaded machine rising latency may, as it should).
    assert client.gate.throttle_cuts == 0


def test_a_told_quota_is_a_ceiling_when_other_processes_spend_it_too(
    make_client: Factory, dashscope_emulator: Emulator
) -> None:
    """Three jobs on one account, each told the account's 1,200 requests a minute (other
    processes, a colleague, Ray actors): together they send three times that. Each must
    slow down on the refusals, not spend its retries at the told pace and fail. Two run
    sync on threads, one async, each at concurrency above one."""
    # Whether the service says when to come back is unconfirmed: here it does not.
    dashscope_emulator.configure(rpm=1200, latency=0.05, rate_retry_after=False)
    clients = [make_client(requests_per_minute=1200, max_concurrency=8) for _ in range(3)]
    texts = [f"shared quota {i}" for i in range(1200)]
    parts = [texts[:400], texts[400:800], texts[800:]]
    results: dict[int, Any] = {}
    workers = [
        threading.Thread(target=lambda i=i: results.update({i: clients[i].embed(parts[i])}))
        for i in (0, 1)
    ]
    for worker in workers:
        worker.start()
    results[2] = asyncio.run(clients[2].aembed(parts[2]))
    for worker in workers:
        worker.join()
    stats = dashscope_emulator.stats()
    assert stats["throttled"] > 0  # they did collide
    assert stats["duplicate_embeddings"] == 0 and stats["texts_delivered"] == 1200
    sample = [0, 399, 400, 1199]
    expected = make_client().embed([texts[i] for i in sample]).require_dense()
    got = [results[i // 400].require_dense()[i % 400] for i in sample]
    assert got == expected


def test_qwen3_vl_embedding_batches_contents_at_its_dimension(
    make_client: Factory, dashscope_emulator: Emulator
) -> None:
    from dashscope_embed.multimodal import Content

    contents = [Content.text(f"caption number {i}") for i in range(25)]
    contents.append(Content.image("https://example.com/photos/red_car.jpg"))
    result = make_client().embed_multimodal(contents, model="qwen3-vl-embedding", dimension=512)
    assert len(result.require_dense()) == 26 and result.dimension == 512
    sent = dashscope_emulator.requests("multimodal-embedding")
    assert sorted(len(r["json"]["input"]["contents"]) for r in sent) == [6, 20]
    assert all(r["json"]["parameters"] == {"dimension": 512} for r in sent)
