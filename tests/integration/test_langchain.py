"""The LangChain classes against the emulator, with real LangChain and Qdrant objects."""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from langchain_core.documents import Document
from langchain_core.stores import InMemoryByteStore
from langchain_core.vectorstores import InMemoryVectorStore
from pydantic import ValidationError

from dashscope_embed import AuthenticationError
from dashscope_embed.emulator import Emulator
from langchain_ext import DashScopeEmbeddings, cached_embeddings
from tests.optional import require

EMBED_PATH = "/api/v1/services/embeddings/text-embedding/text-embedding"
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f00f0004850180848a8c210000000049454e44ae426082"
)


@pytest.fixture(autouse=True)
def _emulator_env(dashscope_emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    # Configured the way users configure LangChain integrations: through the environment.
    monkeypatch.setenv("DASHSCOPE_API_KEY", dashscope_emulator.api_key)
    monkeypatch.setenv("DASHSCOPE_BASE_URL", dashscope_emulator.base_url)


def corpus(n: int) -> list[str]:
    topics = [
        "qdrant hybrid search",
        "dashscope billing",
        "langchain retrievers",
        "sparse lexical vectors",
        "tokenizer limits",
    ]
    return [
        f"Note {i}: about {topics[i % len(topics)]}; identifier func_{i:04d}_handler"
        for i in range(n)
    ]


def test_roles_dimension_and_output_type_on_the_wire(dashscope_emulator: Emulator) -> None:
    embeddings = DashScopeEmbeddings(
        dimension=256, output_type="dense&sparse", instruct="Find the note"
    )
    embeddings.embed_documents(corpus(25))
    embeddings.embed_query("billing")
    sent = dashscope_emulator.requests(EMBED_PATH)
    documents, query = sent[:-1], sent[-1]
    assert sorted(len(r["json"]["input"]["texts"]) for r in documents) == [5, 10, 10]
    for request in documents:
        assert request["json"]["parameters"] == {
            "text_type": "document",
            "dimension": 256,
            "output_type": "dense&sparse",
        }
    assert query["json"]["parameters"] == {
        "text_type": "query",
        "dimension": 256,
        "output_type": "dense&sparse",
        "instruct": "Find the note",
    }


async def test_async_methods_are_bounded(dashscope_emulator: Emulator) -> None:
    dashscope_emulator.configure(latency=0.05)
    embeddings = DashScopeEmbeddings(max_concurrency=2)
    vectors = await embeddings.aembed_documents(corpus(60))
    assert len(vectors) == 60
    assert dashscope_emulator.stats()["peak_concurrency"] == 2


def test_general_embed_returns_both_halves_and_usage() -> None:
    result = DashScopeEmbeddings().embed(
        ["hybrid"], text_type="query", instruct="Find", dimension=64, output_type="dense&sparse"
    )
    assert len(result.require_dense()[0]) == 64
    assert "hybrid" in result.require_sparse()[0].tokens
    assert result.usage.total_tokens > 0 and result.request_ids


def test_qdrant_hybrid_costs_one_request_per_batch(
    dashscope_emulator: Emulator, tmp_path: Path
) -> None:
    require("langchain_qdrant")
    from langchain_qdrant import QdrantVectorStore, RetrievalMode

    dense = DashScopeEmbeddings(output_type="dense&sparse", dimension=256)
    texts = corpus(300)
    store = QdrantVectorStore.from_texts(
        texts,
        embedding=dense,
        sparse_embedding=dense.sparse_companion(),
        path=str(tmp_path / "qdrant"),
        collection_name="notes",
        retrieval_mode=RetrievalMode.HYBRID,
    )
    sent = dashscope_emulator.requests(EMBED_PATH)
    sent_texts = [t for r in sent for t in r["json"]["input"]["texts"]]
    # langchain-qdrant embeds one "dummy_text" of its own to size the collection.
    assert sent_texts.count("dummy_text") == 1
    sent_texts.remove("dummy_text")
    assert sorted(sent_texts) == sorted(texts)  # every text exactly once: no sparse pass
    assert all(r["json"]["parameters"]["output_type"] == "dense&sparse" for r in sent)
    dashscope_emulator.reset()
    hits = store.similarity_search("func_0211_handler", k=3)
    assert dashscope_emulator.stats()["requests"] == 1
    assert "func_0211_handler" in hits[0].page_content
    store.client.close()


async def test_standalone_sparse_embeddings(dashscope_emulator: Emulator) -> None:
    require("langchain_qdrant")  # DashScopeSparseEmbeddings is its SparseEmbeddings
    from langchain_ext import DashScopeSparseEmbeddings

    sparse = DashScopeSparseEmbeddings(model="text-embedding-v4")
    vector = sparse.embed_query("sparse lexical vectors")
    assert vector.indices and len(vector.indices) == len(vector.values)
    docs = await sparse.aembed_documents(corpus(3))
    assert len(docs) == 3
    assert dashscope_emulator.requests(EMBED_PATH)[-1]["json"]["parameters"] == {
        "text_type": "document",
        "output_type": "sparse",
    }


def test_in_memory_vector_store_search() -> None:
    store = InMemoryVectorStore(DashScopeEmbeddings(task="question_answering"))
    store.add_documents([Document(page_content=t) for t in corpus(40)])
    hits = store.similarity_search("tokenizer limits", k=3)
    assert any("tokenizer limits" in h.page_content for h in hits)


def test_cache_namespace_follows_every_vector_setting(dashscope_emulator: Emulator) -> None:
    base = DashScopeEmbeddings(dimension=512, instruct="Find notes")
    namespaces = {
        base.cache_namespace,
        DashScopeEmbeddings(dimension=256, instruct="Find notes").cache_namespace,
        DashScopeEmbeddings(dimension=512, instruct="Find code").cache_namespace,
        DashScopeEmbeddings(dimension=512, task="code_search").cache_namespace,
        DashScopeEmbeddings(model="text-embedding-v3", dimension=512).cache_namespace,
        DashScopeEmbeddings(
            dimension=512, instruct="Find notes", output_type="dense&sparse"
        ).cache_namespace,
    }
    assert len(namespaces) == 6
    require("langchain_classic")  # CacheBackedEmbeddings
    store = InMemoryByteStore()
    cached = cached_embeddings(base, store)
    first = cached.embed_documents(corpus(20))
    requests = dashscope_emulator.stats()["requests"]
    assert cached.embed_documents(corpus(20)) == first
    assert dashscope_emulator.stats()["requests"] == requests  # served from the cache
    changed = cached_embeddings(DashScopeEmbeddings(dimension=512, instruct="Other"), store)
    changed.embed_query("notes")
    assert dashscope_emulator.stats()["requests"] == requests + 1  # not a stale hit


def test_embed_image(tmp_path: Path) -> None:
    image = tmp_path / "cat.png"
    image.write_bytes(PNG)
    vectors = DashScopeEmbeddings().embed_image([str(image), "https://example.com/dog.jpg"])
    assert [len(v) for v in vectors] == [1024, 1024]


def test_errors_are_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-wrong")
    with pytest.raises(AuthenticationError):
        DashScopeEmbeddings().embed_documents(["x"])
    with pytest.raises(ValidationError, match="not allowed"):
        DashScopeEmbeddings(dimension=3)
    with pytest.raises(ValidationError, match="unknown setting"):
        DashScopeEmbeddings(unknown_option=1)  # type: ignore[call-arg]


def test_key_absent_from_repr_dump_pickle_and_logs(
    caplog: pytest.LogCaptureFixture, dashscope_emulator: Emulator
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = dashscope_emulator.api_key
    embeddings = DashScopeEmbeddings(dashscope_api_key=secret, dimension=128)
    embeddings.embed_query("logged call")
    assert embeddings.api_key is not None
    for rendering in (
        repr(embeddings),
        str(embeddings),
        json.dumps(embeddings.model_dump()),
        embeddings.model_dump_json(),
        pickle.dumps(embeddings).decode("latin-1"),
        caplog.text,
    ):
        assert secret not in rendering
    clone = pickle.loads(pickle.dumps(embeddings))  # the worker reads its own env key
    assert clone.embed_query("logged call") == embeddings.embed_query("logged call")


async def test_milvus_sparse_adapter(dashscope_emulator: Emulator) -> None:
    require("langchain_milvus")
    from langchain_milvus.utils.sparse import BaseSparseEmbedding

    dense = DashScopeEmbeddings(output_type="dense&sparse", dimension=128)
    milvus = dense.sparse_companion().as_milvus()
    assert isinstance(milvus, BaseSparseEmbedding)
    texts = corpus(15)
    dense.embed_documents(texts)
    before = dashscope_emulator.stats()["requests"]
    vectors = milvus.embed_documents(texts)
    assert dashscope_emulator.stats()["requests"] == before  # the dense call's sparse half
    assert all(isinstance(k, int) and isinstance(v, float) for k, v in vectors[0].items())
    assert vectors == await milvus.aembed_documents(texts)
    query = await milvus.aembed_query("sparse lexical vectors")
    assert query == milvus.embed_query("sparse lexical vectors")


@pytest.mark.parametrize(
    ("absent", "use"),
    [
        ("langchain_qdrant", "embeddings.milvus_sparse().embed_documents(['a text'])"),
        ("langchain_milvus", "embeddings.sparse_companion().embed_documents(['a text'])"),
    ],
)
def test_each_vector_store_needs_only_its_own_package(
    dashscope_emulator: Emulator, absent: str, use: str
) -> None:
    """A Milvus user need not install langchain-qdrant, nor a Qdrant user langchain-milvus."""
    require("langchain_milvus" if absent == "langchain_qdrant" else "langchain_qdrant")
    script = (
        "import sys\n"
        f"sys.modules[{absent!r}] = None  # as if it were not installed\n"
        "from langchain_ext import DashScopeEmbeddings\n"
        "embeddings = DashScopeEmbeddings(output_type='dense&sparse')\n"
        f"vectors = {use}\n"
        "assert vectors and len(vectors) == 1\n"
        "print('ok')\n"
    )
    env = {
        **os.environ,
        "DASHSCOPE_API_KEY": dashscope_emulator.api_key,
        "DASHSCOPE_BASE_URL": dashscope_emulator.base_url,
    }
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_the_milvus_adapter_from_the_dense_model(dashscope_emulator: Emulator) -> None:
    require("langchain_milvus")
    dense = DashScopeEmbeddings(output_type="dense&sparse", dimension=128)
    texts = corpus(5)
    dense.embed_documents(texts)
    before = dashscope_emulator.stats()["requests"]
    assert dense.milvus_sparse().embed_documents(texts)
    assert dashscope_emulator.stats()["requests"] == before


def test_multimodal_text_to_image_search(dashscope_emulator: Emulator) -> None:
    from langchain_ext import DashScopeMultimodalEmbeddings

    embeddings = DashScopeMultimodalEmbeddings(max_concurrency=3)
    photos = [
        "https://example.com/photos/red_sports_car.jpg",
        "https://example.com/photos/snowy_mountain_lake.jpg",
        "https://example.com/photos/bowl_of_ramen_noodles.jpg",
    ]
    images = embeddings.embed_image(photos)
    query = embeddings.embed_query("a bowl of ramen noodles")
    scores = [sum(a * b for a, b in zip(query, image, strict=True)) for image in images]
    assert scores.index(max(scores)) == 2
    sent = dashscope_emulator.requests("multimodal-embedding")
    assert {r["json"]["input"]["contents"][0].get("image") for r in sent} >= set(photos)
