"""Rerank over real loopback HTTP: both endpoints, splitting and merging past the
limits, faults, bad input, and both framework classes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from dashscope_embed import (
    BadResponseError,
    DashScopeClient,
    InvalidInputError,
    PartialRerankError,
    RetryPolicy,
)
from dashscope_embed.emulator import Emulator
from dashscope_embed.emulator.vectors import rerank_score
from dashscope_embed.models import RerankSpec
from dashscope_embed.multimodal import Content
from tests.integration.hostile import Conn, RawRequest, hostile, response_bytes
from tests.optional import require

OPENAI_PATH = "/compatible-api/v1/reranks"


def skip_without_async_postprocessing() -> None:
    from llama_index.core.postprocessor.types import BaseNodePostprocessor

    if not hasattr(BaseNodePostprocessor, "apostprocess_nodes"):
        pytest.skip("llama-index-core < 0.12.31 has no async node postprocessing")


NATIVE_PATH = "/api/v1/services/rerank/text-rerank/text-rerank"
QUERY = "How do I combine keyword matching with semantic search?"
FAST = RetryPolicy(max_retries=8, initial_delay=0.01, max_delay=0.05, total_timeout=60)


def documents(count: int) -> list[str]:
    topics = [
        "hybrid search fuses keyword and semantic matching",
        "billing per token",
        "rate limits and throttling",
        "keyword search with BM25",
        "semantic vectors",
    ]
    return [
        f"note {i}: {topics[i % len(topics)]} (variant {i // len(topics)})" for i in range(count)
    ]


def expected_order(
    model: str, query: str, docs: list[str], instruct: str | None = None
) -> list[int]:
    """The ranking the emulator's scores give, computed directly (the truth)."""
    scores = [rerank_score(model, query, d, instruct) for d in docs]
    return sorted(range(len(docs)), key=lambda i: (-scores[i], i))


@pytest.fixture
def client(dashscope_emulator: Emulator) -> DashScopeClient:
    return DashScopeClient(
        api_key=dashscope_emulator.api_key, base_url=dashscope_emulator.base_url, retry=FAST
    )


# ----------------------------------------------------------------- the wire
def test_qwen3_rerank_uses_the_openai_style_endpoint(
    client: DashScopeClient, dashscope_emulator: Emulator
) -> None:
    docs = documents(5)
    result = client.rerank(QUERY, docs, task="web_search")
    (sent,) = dashscope_emulator.requests("/reranks")
    assert sent["path"] == OPENAI_PATH
    body = sent["json"]
    assert body["model"] == "qwen3-rerank" and body["query"] == QUERY
    assert body["documents"] == docs and body["top_n"] == 5
    assert body["instruct"].startswith("Given a web search query")
    assert result.indices == expected_order("qwen3-rerank", QUERY, docs, body["instruct"])
    assert all(0 < s < 1 for s in result.scores) and result.usage.total_tokens > 0


def test_gte_rerank_v2_uses_the_native_endpoint(
    client: DashScopeClient, dashscope_emulator: Emulator
) -> None:
    docs = documents(4)
    result = client.rerank(QUERY, docs, model="gte-rerank-v2", top_n=2)
    (sent,) = dashscope_emulator.requests("text-rerank")
    assert sent["path"] == NATIVE_PATH
    assert sent["json"] == {
        "model": "gte-rerank-v2",
        "input": {"query": QUERY, "documents": docs},
        "parameters": {"top_n": 4, "return_documents": False},
    }
    assert result.indices == expected_order("gte-rerank-v2", QUERY, docs)[:2]
    assert [h.document for h in result] == [docs[i] for i in result.indices]


# ----------------------------------------------------------------- splitting and merging
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_list_past_500_documents_is_split_and_merged_with_global_indices(
    client: DashScopeClient, dashscope_emulator: Emulator, mode: str
) -> None:
    docs = documents(1200)
    if mode == "sync":
        result = client.rerank(QUERY, docs, top_n=50)
    else:
        result = asyncio.run(client.arerank(QUERY, docs, top_n=50))
    sent = dashscope_emulator.requests("/reranks")
    assert sorted(len(r["json"]["documents"]) for r in sent) == [200, 500, 500]
    assert result.count == 1200 and len(result) == 50
    assert result.indices == expected_order("qwen3-rerank", QUERY, docs)[:50]
    assert [h.document for h in result] == [docs[i] for i in result.indices]


def test_the_token_limit_per_request_splits_too(
    client: DashScopeClient, dashscope_emulator: Emulator
) -> None:
    # gte-rerank-v2 bills query tokens x documents + documents' tokens, at most 30,000.
    long_docs = [f"document {i}: " + "rerank tokens " * 120 for i in range(120)]
    result = client.rerank(QUERY, long_docs, model="gte-rerank-v2")
    sent = dashscope_emulator.requests("text-rerank")
    assert len(sent) >= 2 and dashscope_emulator.stats()["by_status"] == {"200": len(sent)}
    assert result.count == 120
    assert result.indices == expected_order("gte-rerank-v2", QUERY, long_docs)


def test_a_reply_echoing_long_documents_back_is_read(
    client: DashScopeClient, dashscope_emulator: Emulator
) -> None:
    # The compatible endpoint returns each document's text with its score: the reply
    # grows with the documents, and the client's reply-size guard must allow for it.
    docs = [f"{i} " + "混合检索同时使用稠密向量和稀疏向量。" * 20 for i in range(300)]
    result = client.rerank(QUERY, docs, top_n=3)
    assert result.count == 300 and len(dashscope_emulator.requests("/reranks")) == 1


def test_hits_carry_the_callers_documents_unless_told_not_to(
    client: DashScopeClient, dashscope_emulator: Emulator
) -> None:
    docs = documents(6)
    kept = client.rerank(QUERY, docs)
    assert [h.document for h in kept] == [docs[i] for i in kept.indices]
    bare = client.rerank(QUERY, docs, return_documents=False)
    assert bare.indices == kept.indices and all(h.document is None for h in bare)


def test_a_model_the_table_does_not_know_works_through_a_spec() -> None:
    """A new rerank model: its limits come from the caller's RerankSpec, and the split
    follows them (3 documents per request here)."""
    seen: list[dict[str, Any]] = []

    def server(request: RawRequest, conn: Conn) -> None:
        body = json.loads(request.body)
        seen.append(body)
        results = [
            {"index": i, "relevance_score": 1.0 / (1 + int(d.split()[1]))}
            for i, d in enumerate(body["documents"])
        ]
        conn.send(response_bytes(200, json.dumps({"results": results, "usage": {}}).encode()))

    spec = RerankSpec(
        name="qwen4-rerank",
        family="rerank-openai",
        max_documents=3,
        max_tokens_per_document=4000,
        max_tokens_per_request=120_000,
        supports_instruct=True,
    )
    docs = [f"doc {i}" for i in range(8)]
    with hostile(server) as host:
        client = DashScopeClient(api_key="sk-x", base_url=host.base_url, retry=FAST)
        result = client.rerank("q", docs, model=spec)
    assert sorted(len(b["documents"]) for b in seen) == [2, 3, 3]
    assert {b["model"] for b in seen} == {"qwen4-rerank"}
    assert result.indices == list(range(8))


def test_qwen3_vl_rerank_splits_to_its_per_modality_limits(
    client: DashScopeClient, dashscope_emulator: Emulator
) -> None:
    # 40 images per request at most (the emulator refuses more): 90 images need three.
    images = [Content.image(f"https://example.com/photo_{i}_red_car.jpg") for i in range(90)]
    texts = [Content.text(f"a note about cars {i}") for i in range(10)]
    result = client.rerank("red car", [*images, *texts], model="qwen3-vl-rerank")
    sent = dashscope_emulator.requests("text-rerank")
    per_request = [
        sum(1 for d in r["json"]["input"]["documents"] if isinstance(d, dict) and "image" in d)
        for r in sent
    ]
    assert len(sent) >= 3 and max(per_request) <= 40 and sum(per_request) == 90
    assert result.count == 100 and sorted(result.indices) == list(range(100))
    assert dashscope_emulator.stats()["by_status"] == {"200": len(sent)}


def test_identical_documents_are_scored_once_and_each_ranked(
    client: DashScopeClient, dashscope_emulator: Emulator
) -> None:
    docs = ["same text"] * 3 + ["hybrid search fuses keyword and semantic matching"]
    result = client.rerank(QUERY, docs)
    (sent,) = dashscope_emulator.requests("/reranks")
    assert sent["json"]["documents"] == ["same text", docs[3]]
    assert result.indices == [3, 0, 1, 2]  # equal scores keep the caller's order


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_under_500s_drops_and_429s_nothing_is_lost_or_paid_twice(
    client: DashScopeClient, dashscope_emulator: Emulator, mode: str
) -> None:
    dashscope_emulator.configure(error_rate=0.2, drop_rate=0.2, max_concurrency=2, latency=0.02)
    docs = documents(2600)
    if mode == "sync":
        result = client.rerank(QUERY, docs)
    else:
        result = asyncio.run(client.arerank(QUERY, docs))
    assert result.indices == expected_order("qwen3-rerank", QUERY, docs)
    assert dashscope_emulator.stats()["duplicate_embeddings"] == 0


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("query", "docs", "options", "complaint"),
    [
        ("", ["a"], {}, "query is empty"),
        (QUERY, [], {}, "documents is empty"),
        (QUERY, ["a", 3], {}, "documents[1]"),
        (QUERY, ["a", "  "], {}, "whitespace"),
        (QUERY, {"k": "v"}, {}, "keys would be used"),
        (QUERY, {"a", "b"}, {}, "no order"),
        (QUERY, ["a"], {"top_n": 0}, "top_n"),
        (QUERY, ["a"], {"top_k": 3}, "did you mean 'top_n'"),
        (QUERY, ["a"], {"return_documents": "yes"}, "return_documents"),
        (QUERY, ["a"], {"model": "gte-rerank-v2", "instruct": "x"}, "does not take an instruct"),
        (QUERY, ["a"], {"model": "gte-rerank"}, "unknown model 'gte-rerank'"),
        (QUERY, ["word " * 5000], {}, "documents[0]"),
    ],
)
def test_bad_input_is_refused_before_anything_is_sent(
    client: DashScopeClient,
    dashscope_emulator: Emulator,
    query: str,
    docs: Any,
    options: dict[str, Any],
    complaint: str,
) -> None:
    with pytest.raises(InvalidInputError) as info:
        client.rerank(query, docs, **options)
    assert complaint in str(info.value)
    assert dashscope_emulator.stats()["requests"] == 0


def test_a_long_document_is_truncated_when_asked(
    client: DashScopeClient, dashscope_emulator: Emulator
) -> None:
    result = client.rerank(
        QUERY, ["hybrid search " + "word " * 5000, "short"], long_text="truncate"
    )
    assert result.count == 2
    (sent,) = dashscope_emulator.requests("/reranks")
    assert len(sent["json"]["documents"][0]) < len("word " * 5000)


def test_a_failed_request_leaves_the_rest_ranked_and_names_what_is_missing() -> None:
    calls = {"n": 0}

    def one_bad(request: RawRequest, conn: Conn) -> None:
        body = json.loads(request.body)
        calls["n"] += 1
        if body["documents"][0] == "doc 500":
            conn.send(response_bytes(400, b'{"code":"InvalidParameter","message":"no"}'))
            return
        results = [
            {"index": i, "relevance_score": 1.0 / (1 + int(d.split()[1]))}
            for i, d in enumerate(body["documents"])
        ]
        reply = {"results": results, "usage": {"total_tokens": 5}, "id": "r"}
        conn.send(response_bytes(200, json.dumps(reply).encode()))

    docs = [f"doc {i}" for i in range(1200)]
    with hostile(one_bad) as server:
        client = DashScopeClient(api_key="sk-x", base_url=server.base_url, retry=FAST)
        with pytest.raises(PartialRerankError) as info:
            client.rerank("q", docs)
    assert info.value.failed_positions == list(range(500, 1000))
    assert info.value.partial.indices == [*range(500), *range(1000, 1200)]
    # A refusal of one request's own input stops nothing: every other request was sent.
    assert info.value.unsent_requests == 0 and "never sent" not in str(info.value)


@pytest.mark.parametrize(
    ("results", "complaint"),
    [
        ([{"index": 0, "relevance_score": 0.5}], r"rows \[1\] missing"),
        ([{"index": 0, "relevance_score": 0.5}] * 2, "returned twice"),
        ([{"index": 0, "relevance_score": 0.5}, {"index": 2, "relevance_score": 0.1}], "2"),
        ([{"index": 0, "relevance_score": 0.5}, {"index": True, "relevance_score": 0.1}], "True"),
        ([{"index": 0, "relevance_score": 0.5}, {"index": 1, "relevance_score": "0.9"}], "0.9"),
        ([{"index": 0, "relevance_score": 0.5}, {"index": 1, "relevance_score": None}], "None"),
        ({"0": 0.5, "1": 0.1}, "no results list"),
    ],
)
def test_a_reply_that_is_not_one_score_per_document_is_refused(
    results: Any, complaint: str
) -> None:
    """A server that lies (a gap, a repeat, a stray index, a score that is not a number,
    a dict for a list) must not produce a ranking: one wrong score reorders everything."""

    def lying(request: RawRequest, conn: Conn) -> None:
        reply = {"results": results, "usage": {"total_tokens": 3}}
        conn.send(response_bytes(200, json.dumps(reply).encode()))

    with hostile(lying) as server:
        client = DashScopeClient(
            api_key="sk-x", base_url=server.base_url, retry=RetryPolicy(max_retries=0)
        )
        with pytest.raises(BadResponseError, match=complaint):
            client.rerank("q", ["a", "b"])


def test_a_nan_score_is_refused() -> None:
    def nan(request: RawRequest, conn: Conn) -> None:
        body = b'{"results":[{"index":0,"relevance_score":NaN},{"index":1,"relevance_score":0.1}]}'
        conn.send(response_bytes(200, body))

    with hostile(nan) as server:
        client = DashScopeClient(
            api_key="sk-x", base_url=server.base_url, retry=RetryPolicy(max_retries=0)
        )
        with pytest.raises(BadResponseError):
            asyncio.run(client.arerank("q", ["a", "b"]))


# ----------------------------------------------------------------- LlamaIndex
@pytest.fixture
def connect(dashscope_emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", dashscope_emulator.api_key)
    monkeypatch.setenv("DASHSCOPE_BASE_URL", dashscope_emulator.base_url)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_llama_index_postprocessor_reorders_nodes_and_reports(
    connect: None, dashscope_emulator: Emulator, mode: str
) -> None:
    from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
    from llama_index.core.schema import NodeWithScore, TextNode

    from llama_index_ext import DashScopeRerank

    docs = documents(30)
    nodes = [NodeWithScore(node=TextNode(text=d), score=0.1 * i) for i, d in enumerate(docs)]
    debug = LlamaDebugHandler()
    reranker = DashScopeRerank(top_n=5, callback_manager=CallbackManager([debug]))
    if mode == "sync":
        ranked = reranker.postprocess_nodes(nodes, query_str=QUERY)
    else:
        skip_without_async_postprocessing()
        ranked = asyncio.run(reranker.apostprocess_nodes(nodes, query_str=QUERY))
    order = expected_order("qwen3-rerank", QUERY, docs)[:5]
    assert [n.node.get_content() for n in ranked] == [docs[i] for i in order]
    assert all(0 < (n.score or 0) < 1 for n in ranked)
    assert ranked[0].score == max(n.score or 0 for n in ranked)
    assert len(debug.get_event_pairs(CBEventType.RERANKING)) == 1


def test_llama_index_rerank_emits_its_instrumentation_events(connect: None) -> None:
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.core.instrumentation.events import BaseEvent
    from llama_index.core.schema import NodeWithScore, TextNode

    from llama_index_ext import DashScopeRerank

    seen: list[BaseEvent] = []

    class Collect(BaseEventHandler):
        def handle(self, event: BaseEvent, **kwargs: Any) -> None:
            seen.append(event)

    root = get_dispatcher()
    handler = Collect()
    root.add_event_handler(handler)
    try:
        nodes = [NodeWithScore(node=TextNode(text=d)) for d in documents(4)]
        DashScopeRerank(top_n=2).postprocess_nodes(nodes, query_str=QUERY)
    finally:
        root.event_handlers.remove(handler)
    names = [type(e).__name__ for e in seen]
    assert "ReRankStartEvent" in names and "ReRankEndEvent" in names
    start = next(e for e in seen if type(e).__name__ == "ReRankStartEvent")
    assert start.model_name == "qwen3-rerank" and start.top_n == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize("framework", ["llama_index", "langchain"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_framework_rerank_under_faults_loses_nothing(
    connect: None, dashscope_emulator: Emulator, framework: str, mode: str
) -> None:
    """Past one request's worth, with slow replies, 500s, drops and a concurrency cap:
    the whole list ranked in the true order, no document scored twice."""
    dashscope_emulator.configure(error_rate=0.15, drop_rate=0.15, max_concurrency=2, latency=0.05)
    docs = documents(1300)
    if framework == "llama_index":
        from llama_index.core.schema import NodeWithScore, TextNode

        from llama_index_ext import DashScopeRerank as LlamaRerank

        nodes = [NodeWithScore(node=TextNode(text=d, id_=str(i))) for i, d in enumerate(docs)]
        llama = LlamaRerank(top_n=20, retry=FAST)
        if mode == "sync":
            ranked = llama.postprocess_nodes(nodes, query_str=QUERY)
        else:
            skip_without_async_postprocessing()
            ranked = asyncio.run(llama.apostprocess_nodes(nodes, query_str=QUERY))
        got = [int(n.node.node_id) for n in ranked]
    else:
        from langchain_core.documents import Document

        from langchain_ext import DashScopeRerank as LangChainRerank

        given = [Document(page_content=d, metadata={"i": i}) for i, d in enumerate(docs)]
        chain = LangChainRerank(top_n=20, retry=FAST)
        if mode == "sync":
            kept = chain.compress_documents(given, QUERY)
        else:
            kept = asyncio.run(chain.acompress_documents(given, QUERY))
        got = [d.metadata["i"] for d in kept]
    assert got == expected_order("qwen3-rerank", QUERY, docs)[:20]
    stats = dashscope_emulator.stats()
    assert stats["duplicate_embeddings"] == 0 and stats["requests"] >= 3


def test_llama_index_sends_the_text_as_embedded_with_its_metadata(
    connect: None, dashscope_emulator: Emulator
) -> None:
    from llama_index.core.schema import NodeWithScore, TextNode

    from llama_index_ext import DashScopeRerank

    node = TextNode(text="body text", metadata={"title": "Hybrid search"})
    DashScopeRerank().postprocess_nodes([NodeWithScore(node=node)], query_str="q")
    (sent,) = dashscope_emulator.requests("/reranks")
    assert "Hybrid search" in sent["json"]["documents"][0]


def test_llama_index_ranks_image_nodes_with_the_vl_model(
    connect: None, dashscope_emulator: Emulator
) -> None:
    from llama_index.core.schema import ImageNode, NodeWithScore, TextNode

    from llama_index_ext import DashScopeRerank

    nodes = [
        NodeWithScore(node=ImageNode(image_url="https://example.com/red_sports_car.jpg")),
        NodeWithScore(node=ImageNode(image_url="https://example.com/bowl_of_ramen.jpg")),
        NodeWithScore(node=TextNode(text="a note about taxes")),
    ]
    ranked = DashScopeRerank().postprocess_nodes(nodes, query_str="a red sports car")
    (sent,) = dashscope_emulator.requests("text-rerank")
    assert sent["json"]["model"] == "qwen3-vl-rerank"
    assert sent["json"]["input"]["documents"][0] == {
        "image": "https://example.com/red_sports_car.jpg"
    }
    assert ranked[0].node is nodes[0].node


# ----------------------------------------------------------------- LangChain
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_langchain_compressor_keeps_the_best_with_scores(
    connect: None, dashscope_emulator: Emulator, mode: str
) -> None:
    from langchain_core.documents import Document

    from langchain_ext import DashScopeRerank

    docs = documents(20)
    given = [Document(page_content=d, metadata={"n": i}) for i, d in enumerate(docs)]
    reranker = DashScopeRerank(top_n=3)
    if mode == "sync":
        kept = reranker.compress_documents(given, QUERY)
    else:
        kept = asyncio.run(reranker.acompress_documents(given, QUERY))
    order = expected_order("qwen3-rerank", QUERY, docs)[:3]
    assert [d.metadata["n"] for d in kept] == order
    assert all("relevance_score" in d.metadata for d in kept)
    assert given[0].metadata == {"n": 0}  # the caller's documents are not modified
    threshold = DashScopeRerank(score_threshold=0.99).compress_documents(given, QUERY)
    assert all(d.metadata["relevance_score"] >= 0.99 for d in threshold)
    assert reranker.rerank(docs[:4], QUERY)[0].keys() == {"index", "relevance_score"}


def test_langchain_compressor_works_in_a_contextual_compression_retriever(
    connect: None, dashscope_emulator: Emulator
) -> None:
    require("langchain_classic")
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_core.documents import Document
    from langchain_core.vectorstores import InMemoryVectorStore

    from langchain_ext import DashScopeEmbeddings, DashScopeRerank

    docs = documents(25)
    store = InMemoryVectorStore.from_documents(
        [Document(page_content=d) for d in docs], DashScopeEmbeddings(dimension=256)
    )
    retriever = ContextualCompressionRetriever(
        base_compressor=DashScopeRerank(top_n=2),
        base_retriever=store.as_retriever(search_kwargs={"k": 10}),
    )
    best = retriever.invoke(QUERY)
    assert (
        len(best) == 2
        and best[0].metadata["relevance_score"] >= best[1].metadata["relevance_score"]
    )
