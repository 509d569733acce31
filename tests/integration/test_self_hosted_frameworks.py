"""The same LlamaIndex and LangChain pipelines against DashScope and against self-hosted
servers, switched by settings alone: the code below never changes between backends."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore
from llama_index.core import VectorStoreIndex
from llama_index.core.schema import NodeWithScore, TextNode

from dashscope_embed.emulator import Emulator
from langchain_ext import DashScopeEmbeddings
from langchain_ext import DashScopeRerank as LangChainRerank
from llama_index_ext import DashScopeEmbedding
from llama_index_ext import DashScopeRerank as LlamaRerank

PASSAGES = [
    "Hybrid search fuses keyword (BM25) scores with vector similarity.",
    "A reranker reads the query and each passage together and scores relevance.",
    "Matryoshka embeddings keep their meaning when cut to a shorter prefix.",
    "Pasta should be cooked in plenty of salted boiling water.",
]
QUESTION = "how does hybrid search fuse keyword and vector scores?"
TASK = "Given a question, retrieve the passage that answers it"


@pytest.fixture(params=["dashscope", "vllm", "tei", "ollama", "infinity", "sglang"])
def backend(request: pytest.FixtureRequest) -> Iterator[tuple[dict[str, Any], Emulator]]:
    """Connection settings and model names: all that differs between backends."""
    if request.param == "dashscope":
        with Emulator() as emulator:
            yield (
                {
                    "api_key": emulator.api_key,
                    "base_url": emulator.base_url,
                    "embed_model": "text-embedding-v4",
                    "rerank_model": "qwen3-rerank",
                },
                emulator,
            )
        return
    with Emulator(self_hosted=request.param) as emulator:
        yield (
            {
                "server": request.param,
                "base_url": emulator.base_url,
                "embed_model": "Qwen/Qwen3-Embedding-0.6B",
                "rerank_model": "Qwen/Qwen3-Reranker-0.6B",
            },
            emulator,
        )


def split(settings: dict[str, Any]) -> tuple[dict[str, Any], str, str]:
    connection = {k: v for k, v in settings.items() if not k.endswith("_model")}
    return connection, settings["embed_model"], settings["rerank_model"]


def test_llama_index_pipeline_switches_backend_by_settings(
    backend: tuple[dict[str, Any], Emulator],
) -> None:
    settings, emulator = backend
    connection, embed_model, rerank_model = split(settings)
    embed = DashScopeEmbedding(**connection, model_name=embed_model, dimension=256, instruct=TASK)
    index = VectorStoreIndex(
        [TextNode(text=p, id_=str(i)) for i, p in enumerate(PASSAGES)], embed_model=embed
    )
    hits = index.as_retriever(similarity_top_k=3).retrieve(QUESTION)
    assert hits[0].node.node_id == "0"
    assert (
        asyncio.run(index.as_retriever(similarity_top_k=1).aretrieve(QUESTION))[0].node.node_id
        == "0"
    )
    if connection.get("server") == "ollama":
        return  # Ollama has no rerank endpoint
    options = (
        {"instruct": "Find the passage"} if connection.get("server") in (None, "sglang") else {}
    )
    reranker = LlamaRerank(**connection, model=rerank_model, top_n=1, **options)
    ranked = reranker.postprocess_nodes(
        [NodeWithScore(node=hit.node, score=hit.score) for hit in hits], query_str=QUESTION
    )
    assert [n.node.node_id for n in ranked] == ["0"]
    if connection.get("server"):
        stats = emulator.stats()
        assert stats["instructed_texts"] >= 1 and stats["plain_texts"] >= len(PASSAGES)
        assert stats["ignored_fields"] == {}


def test_langchain_pipeline_switches_backend_by_settings(
    backend: tuple[dict[str, Any], Emulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, emulator = backend
    connection, embed_model, rerank_model = split(settings)
    # LangChain classes read the key at construction; it must not reach another host.
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-dashscope-only")
    embeddings = DashScopeEmbeddings(**connection, model=embed_model, dimension=256, instruct=TASK)
    store = InMemoryVectorStore.from_texts(PASSAGES, embeddings)
    found = store.similarity_search(QUESTION, k=3)
    assert found[0].page_content == PASSAGES[0]
    if connection.get("server") == "ollama":
        assert emulator.stats()["authorized_requests"] == 0
        return
    options = (
        {"instruct": "Find the passage"} if connection.get("server") in (None, "sglang") else {}
    )
    reranker = LangChainRerank(**connection, model=rerank_model, top_n=1, **options)
    kept = reranker.compress_documents(
        [Document(page_content=d.page_content) for d in reversed(found)], QUESTION
    )
    assert [d.page_content for d in kept] == [PASSAGES[0]]
    if connection.get("server"):
        assert emulator.stats()["authorized_requests"] == 0
