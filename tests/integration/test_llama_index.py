"""The LlamaIndex classes against the emulator over real HTTP, with real LlamaIndex objects."""

from __future__ import annotations

import asyncio
import io
import json
import math
import pickle
import uuid
from pathlib import Path
from typing import Any

import pytest
from llama_index.core import Settings, StorageContext, VectorStoreIndex
from llama_index.core.callbacks import CallbackManager, CBEventType
from llama_index.core.callbacks.base_handler import BaseCallbackHandler
from llama_index.core.ingestion import IngestionCache, IngestionPipeline
from llama_index.core.schema import Document, TextNode
from llama_index.core.vector_stores.types import VectorStoreQueryMode
from pydantic import Field, ValidationError
from qdrant_client import QdrantClient

from dashscope_embed import AuthenticationError, InvalidInputError
from dashscope_embed.emulator import Emulator
from llama_index_ext import (
    DashScopeEmbedding,
    DashScopeMultiModalEmbedding,
    DashScopeSparseEmbedding,
)

EMBED_PATH = "/api/v1/services/embeddings/text-embedding/text-embedding"
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f00f0004850180848a8c210000000049454e44ae426082"
)


@pytest.fixture
def connect(dashscope_emulator: Emulator) -> dict[str, Any]:
    return {"api_key": dashscope_emulator.api_key, "base_url": dashscope_emulator.base_url}


def corpus(n: int) -> list[str]:
    topics = [
        "qdrant hybrid search",
        "dashscope billing",
        "llama index nodes",
        "sparse lexical vectors",
        "tokenizer limits",
    ]
    return [
        f"Note {i}: about {topics[i % len(topics)]}; identifier func_{i:04d}_handler"
        for i in range(n)
    ]


def node_id(i: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"note-{i}"))  # Qdrant wants UUID ids


def embed_requests(emu: Emulator) -> list[dict[str, Any]]:
    return emu.requests(EMBED_PATH)


# ------------------------------------------------------------------ roles on the wire
def test_queries_and_documents_carry_their_roles(
    connect: dict[str, Any], dashscope_emulator: Emulator
) -> None:
    model = DashScopeEmbedding(
        **connect, task="question_answering", dimension=512, output_type="dense&sparse"
    )
    query = model.get_query_embedding("How is hybrid search billed?")
    docs = model.get_text_embedding_batch(corpus(23))
    assert len(query) == 512 and len(docs) == 23 and all(len(d) == 512 for d in docs)
    sent = embed_requests(dashscope_emulator)
    query_params = sent[0]["json"]["parameters"]
    assert query_params == {
        "text_type": "query",
        "dimension": 512,
        "output_type": "dense&sparse",
        "instruct": "Given a question, retrieve passages that answer the question",
    }
    for request in sent[1:]:
        assert request["json"]["parameters"] == {
            "text_type": "document",
            "dimension": 512,
            "output_type": "dense&sparse",
        }
        assert len(request["json"]["input"]["texts"]) <= 10


async def test_async_methods_are_async_and_bounded(
    connect: dict[str, Any], dashscope_emulator: Emulator
) -> None:
    dashscope_emulator.configure(latency=0.05)
    model = DashScopeEmbedding(**connect, max_concurrency=3, instruct="Find notes")
    vectors = await model.aget_text_embedding_batch(corpus(95))
    query = await model.aget_query_embedding("notes")
    assert len(vectors) == 95 and len(query) == 1024
    stats = dashscope_emulator.stats()
    assert stats["peak_concurrency"] == 3 and stats["requests"] == 11
    last = embed_requests(dashscope_emulator)[-1]["json"]["parameters"]
    assert last == {"text_type": "query", "instruct": "Find notes"}


def test_batches_run_concurrently_and_report_each_batch(
    connect: dict[str, Any], dashscope_emulator: Emulator
) -> None:
    class Counter(BaseCallbackHandler):
        def __init__(self) -> None:
            super().__init__([], [])
            self.chunks: list[int] = []

        def on_event_start(
            self,
            event_type: Any,
            payload: Any = None,
            event_id: str = "",
            parent_id: str = "",
            **kwargs: Any,
        ) -> str:
            return event_id

        def on_event_end(
            self, event_type: Any, payload: Any = None, event_id: str = "", **kwargs: Any
        ) -> None:
            if event_type == CBEventType.EMBEDDING and payload:
                self.chunks.append(len(payload["chunks"]))

        def start_trace(self, trace_id: str | None = None) -> None: ...

        def end_trace(self, trace_id: str | None = None, trace_map: Any = None) -> None: ...

    dashscope_emulator.configure(latency=0.05)
    counter = Counter()
    model = DashScopeEmbedding(
        **connect, max_concurrency=4, callback_manager=CallbackManager([counter])
    )
    texts = corpus(57)
    vectors = model.get_text_embedding_batch(texts, show_progress=True)
    assert counter.chunks == [10, 10, 10, 10, 10, 7]
    assert dashscope_emulator.stats()["peak_concurrency"] == 4
    one_by_one = [model.get_text_embedding(t) for t in texts[:3]]
    assert vectors[:3] == one_by_one  # same vectors, in input order
    counter.chunks.clear()
    assert asyncio.run(model.aget_text_embedding_batch(texts)) == vectors
    assert counter.chunks == [10, 10, 10, 10, 10, 7]  # the async path reports alike


def test_batch_size_defaults_to_the_row_limit_and_cannot_exceed_it() -> None:
    assert DashScopeEmbedding().embed_batch_size == 10
    assert DashScopeEmbedding(model_name="text-embedding-v2").embed_batch_size == 25
    assert DashScopeEmbedding(embed_batch_size=4).embed_batch_size == 4
    with pytest.raises(ValidationError, match="exceeds text-embedding-v4's limit of 10"):
        DashScopeEmbedding(embed_batch_size=25)


def test_bad_settings_fail_at_construction() -> None:
    with pytest.raises(ValidationError, match="dimension=100 is not allowed"):
        DashScopeEmbedding(dimension=100)
    with pytest.raises(ValidationError, match="unknown task 'searching'"):
        DashScopeEmbedding(task="searching")
    with pytest.raises(ValidationError, match="protocol='native'"):
        DashScopeEmbedding(protocol="openai-compatible", output_type="dense&sparse")


def test_instruct_wins_over_task() -> None:
    model = DashScopeEmbedding(task="code_search", instruct="Find the function")
    assert model.query_instruct == "Find the function"


# ------------------------------------------------------------------ hybrid search
def test_qdrant_hybrid_index_costs_one_request_per_batch(
    connect: dict[str, Any], dashscope_emulator: Emulator, tmp_path: Path
) -> None:
    from llama_index.vector_stores.qdrant import QdrantVectorStore

    model = DashScopeEmbedding(
        **connect, output_type="dense&sparse", dimension=256, task="web_search"
    )
    qdrant = QdrantClient(path=str(tmp_path / "qdrant"))
    store = QdrantVectorStore(
        client=qdrant,
        collection_name="notes",
        enable_hybrid=True,
        sparse_doc_fn=model.sparse_doc_fn,
        sparse_query_fn=model.sparse_query_fn,
        batch_size=64,
    )
    nodes = [TextNode(text=t, id_=node_id(i)) for i, t in enumerate(corpus(300))]
    index = VectorStoreIndex(
        nodes, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=model
    )
    assert dashscope_emulator.stats()["requests"] == 30  # 300 nodes / 10: no second pass
    dashscope_emulator.reset()

    retriever = index.as_retriever(
        vector_store_query_mode=VectorStoreQueryMode.HYBRID, similarity_top_k=5, sparse_top_k=10
    )
    hits = retriever.retrieve("func_0137_handler")
    assert dashscope_emulator.stats()["requests"] == 1  # the query's dense and sparse halves
    assert hits[0].node.node_id == node_id(137)  # the exact identifier wins via sparse
    assert model.sparse_cache.hits >= 301
    qdrant.close()


def test_default_vector_store_and_settings(connect: dict[str, Any]) -> None:
    previous = Settings._embed_model  # reading the public one builds OpenAI's default
    try:
        Settings.embed_model = DashScopeEmbedding(**connect)
        index = VectorStoreIndex.from_documents([Document(text=t) for t in corpus(40)])
        hits = index.as_retriever(similarity_top_k=3).retrieve("sparse lexical vectors")
        assert any("sparse lexical vectors" in h.node.get_content() for h in hits)
    finally:
        Settings._embed_model = previous


def test_ingestion_pipeline_cache_rerun_costs_nothing(
    connect: dict[str, Any], dashscope_emulator: Emulator
) -> None:
    cache = IngestionCache()
    docs = [Document(text=t, id_=f"d{i}") for i, t in enumerate(corpus(35))]
    pipeline = IngestionPipeline(transformations=[DashScopeEmbedding(**connect)], cache=cache)
    first = pipeline.run(documents=docs)
    assert dashscope_emulator.stats()["requests"] == 4
    dashscope_emulator.reset()
    again = IngestionPipeline(transformations=[DashScopeEmbedding(**connect)], cache=cache)
    second = again.run(documents=docs)
    assert dashscope_emulator.stats()["requests"] == 0
    assert [n.embedding for n in second] == [n.embedding for n in first]


# ------------------------------------------------------------------ sparse class
def test_sparse_embedding_alone_and_shared(
    connect: dict[str, Any], dashscope_emulator: Emulator
) -> None:
    alone = DashScopeSparseEmbedding(**connect)
    vector = alone.get_text_embedding("sparse lexical vectors")
    assert isinstance(vector, dict) and all(isinstance(k, int) for k in vector)
    assert embed_requests(dashscope_emulator)[-1]["json"]["parameters"] == {
        "text_type": "document",
        "output_type": "sparse",
    }

    dense = DashScopeEmbedding(**connect, output_type="dense&sparse")
    shared = dense.sparse_embedding()
    texts = corpus(12)
    dense.get_text_embedding_batch(texts)
    before = dashscope_emulator.stats()["requests"]
    sparse = shared.get_text_embedding_batch(texts)
    assert dashscope_emulator.stats()["requests"] == before  # reused, not re-requested
    assert sparse[0] == alone.get_text_embedding(texts[0])
    assert shared.get_query_embedding("billing")  # a miss is fetched once


def test_sparse_batches_run_concurrently_send_repeats_once_and_report_each_batch(
    connect: dict[str, Any], dashscope_emulator: Emulator
) -> None:
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler

    class Batches(BaseEventHandler):
        ended: list[int] = Field(default_factory=list)

        def handle(self, event: Any, **kwargs: Any) -> None:
            if type(event).__name__ == "SparseEmbeddingEndEvent":
                self.ended.append(len(event.chunks))

    handler = Batches()
    get_dispatcher().add_event_handler(handler)
    dashscope_emulator.configure(latency=0.05)
    texts = corpus(57)
    texts[45] = texts[2]
    calls: list[dict[str, Any]] = []
    try:
        sparse = DashScopeSparseEmbedding(**connect, max_concurrency=4)
        vectors = sparse.get_text_embedding_batch(texts)
        calls.append(dashscope_emulator.stats())
        dashscope_emulator.reset()
        fresh = DashScopeSparseEmbedding(**connect, max_concurrency=4)  # no cached vectors
        again = asyncio.run(fresh.aget_text_embedding_batch(texts))
        calls.append(dashscope_emulator.stats())
    finally:
        get_dispatcher().event_handlers.remove(handler)
    for stats in calls:  # each call: concurrent, and the repeated text sent once
        assert stats["peak_concurrency"] == 4 and stats["duplicate_embeddings"] == 0
        assert stats["texts_delivered"] == 56
    assert vectors == again and vectors[45] == vectors[2]
    assert handler.ended == [10, 10, 10, 10, 10, 7] * 2  # sync, then async


# ------------------------------------------------------------------ errors and secrets
def test_service_errors_surface_typed_never_empty(dashscope_emulator: Emulator) -> None:
    model = DashScopeEmbedding(api_key="sk-wrong", base_url=dashscope_emulator.base_url)
    with pytest.raises(AuthenticationError):
        model.get_query_embedding("anything")
    with pytest.raises(AuthenticationError):
        model.get_text_embedding_batch(corpus(3))


def test_serialised_forms_never_hold_the_key(
    connect: dict[str, Any], dashscope_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = DashScopeEmbedding(**connect, dimension=256, task="code_search")
    secret = connect["api_key"]
    data = model.to_dict()
    for rendering in (
        json.dumps(data),
        model.to_json(),
        repr(model),
        str(model),
        pickle.dumps(model).decode("latin-1"),
    ):
        assert secret not in rendering
    assert data["dimension"] == 256 and data["task"] == "code_search"

    monkeypatch.setenv("DASHSCOPE_API_KEY", secret)
    rebuilt = DashScopeEmbedding.from_dict(data)
    assert len(rebuilt.get_query_embedding("rebuilt")) == 256
    clone = pickle.loads(pickle.dumps(model))
    assert clone.get_text_embedding("pickled") == model.get_text_embedding("pickled")


# ------------------------------------------------------------------ multimodal
@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "red_car.png"
    path.write_bytes(PNG)
    return path


def test_multimodal_images_and_text(
    connect: dict[str, Any], image_file: Path, dashscope_emulator: Emulator
) -> None:
    model = DashScopeMultiModalEmbedding(**connect)
    from_path = model.get_image_embedding(str(image_file))
    from_bytes = model.get_image_embedding(io.BytesIO(PNG))
    assert len(from_path) == 1024 and from_path == from_bytes
    text = model.get_text_embedding("a red car")
    assert len(text) == 1024
    norm = math.sqrt(sum(x * x for x in text))
    assert abs(norm - 1) < 1e-5
    sent = dashscope_emulator.requests("multimodal-embedding")
    assert sent[0]["json"]["input"]["contents"][0]["image"].startswith("data:image/png;base64,")


async def test_multimodal_async_batch(
    connect: dict[str, Any], image_file: Path, dashscope_emulator: Emulator
) -> None:
    model = DashScopeMultiModalEmbedding(**connect, max_concurrency=2)
    urls = [f"https://example.com/photos/item_{i}.jpg" for i in range(5)]
    vectors = await model.aget_image_embedding_batch([str(image_file), *urls])
    assert len(vectors) == 6 and all(len(v) == 1024 for v in vectors)
    assert dashscope_emulator.stats()["peak_concurrency"] <= 2


def test_multimodal_batches_overlap_send_repeats_once_and_report_each_batch(
    connect: dict[str, Any], image_file: Path, dashscope_emulator: Emulator
) -> None:
    dashscope_emulator.configure(latency=0.05)
    model = DashScopeMultiModalEmbedding(**connect, max_concurrency=4, embed_batch_size=5)
    urls = [f"https://example.com/photos/item_{i}.jpg" for i in range(11)]
    images = [str(image_file), *urls, str(image_file)]  # the same picture twice
    vectors = model.get_image_embedding_batch(images)
    stats = dashscope_emulator.stats()
    assert len(vectors) == 13 and vectors[0] == vectors[12]
    assert stats["requests"] == 12 and stats["duplicate_embeddings"] == 0
    # Four in flight throughout: LlamaIndex's loop would wait for each batch of five.
    assert stats["peak_concurrency"] == 4
    dashscope_emulator.reset()
    texts = ["a red car", "a blue boat", "a red car"]
    assert asyncio.run(model.aget_text_embedding_batch(texts)) == model.get_text_embedding_batch(
        texts
    )


def test_multimodal_bad_images_fail_before_sending(
    connect: dict[str, Any], tmp_path: Path, dashscope_emulator: Emulator
) -> None:
    model = DashScopeMultiModalEmbedding(**connect)
    gif = tmp_path / "anim.gif"
    gif.write_bytes(b"GIF89a" + b"\0" * 10)
    with pytest.raises(
        InvalidInputError,
        match=r"contents\[0\]: image 'anim.gif': multimodal-embedding-v1 does not take GIF "
        "images; it takes JPEG, PNG, BMP",
    ):
        model.get_image_embedding(str(gif))
    big = tmp_path / "big.png"
    big.write_bytes(PNG + b"\0" * (3 * 1024 * 1024))
    with pytest.raises(
        InvalidInputError,
        match=r"image 'big.png' is 3.0 MB; multimodal-embedding-v1 takes "
        "images of at most 3.0 MB",
    ):
        model.get_image_embedding(str(big))
    with pytest.raises(InvalidInputError, match="no such file"):
        model.get_image_embedding("missing.png")
    assert dashscope_emulator.stats()["requests"] == 0
