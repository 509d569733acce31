"""Both framework integrations, under failing, dropped and out-of-order replies: every
vector in its place, nothing paid for twice. They share the core engine; this checks
that their own code paths (batching, callbacks, async wrappers) keep its promises."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from dashscope_embed import DashScopeClient
from dashscope_embed.emulator import Emulator


def llama_sync(connect: dict[str, Any], texts: list[str]) -> list[list[float]]:
    from llama_index_ext import DashScopeEmbedding

    return DashScopeEmbedding(**connect).get_text_embedding_batch(texts)


def llama_async(connect: dict[str, Any], texts: list[str]) -> list[list[float]]:
    from llama_index_ext import DashScopeEmbedding

    return asyncio.run(DashScopeEmbedding(**connect).aget_text_embedding_batch(texts))


def langchain_sync(connect: dict[str, Any], texts: list[str]) -> list[list[float]]:
    from langchain_ext import DashScopeEmbeddings

    return DashScopeEmbeddings(**connect).embed_documents(texts)


def langchain_async(connect: dict[str, Any], texts: list[str]) -> list[list[float]]:
    from langchain_ext import DashScopeEmbeddings

    return asyncio.run(DashScopeEmbeddings(**connect).aembed_documents(texts))


@pytest.mark.parametrize(
    "embed_documents", [llama_sync, llama_async, langchain_sync, langchain_async]
)
def test_documents_arrive_complete_in_order_and_paid_once(
    dashscope_emulator: Emulator,
    embed_documents: Callable[[dict[str, Any], list[str]], list[list[float]]],
) -> None:
    texts = [f"framework document {i} on topic {i % 13}" for i in range(400)]
    texts[350] = texts[3]  # a repeat is sent once and fanned out
    dashscope_emulator.configure(error_rate=0.15, drop_rate=0.1, latency_jitter=0.02, seed=4)
    connect = {
        "api_key": dashscope_emulator.api_key,
        "base_url": dashscope_emulator.base_url,
        "dimension": 128,
        "max_concurrency": 6,
        "max_retries": 12,
    }
    vectors = embed_documents(connect, texts)
    stats = dashscope_emulator.stats()
    # About 40 requests: some fault is all but certain (zero has odds of about 2e-5).
    assert stats["injected_errors"] + stats["dropped_connections"] > 0
    assert stats["duplicate_embeddings"] == 0
    assert stats["texts_delivered"] == len(set(texts))
    dashscope_emulator.configure(error_rate=0.0, drop_rate=0.0, latency_jitter=0.0)
    client = DashScopeClient(
        api_key=dashscope_emulator.api_key, base_url=dashscope_emulator.base_url
    )
    expected = client.embed(texts, text_type="document", dimension=128).require_dense()
    assert len(vectors) == len(texts)
    assert [list(v) for v in vectors] == expected
