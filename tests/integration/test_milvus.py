"""Milvus Lite as a hybrid (dense + sparse) store in both frameworks, end to end: one
``dense&sparse`` request per batch feeds both halves, nodes with metadata included, and
the right document comes first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dashscope_embed.emulator import Emulator
from tests.optional import require

CORPUS = Path(__file__).parents[2] / "examples" / "data" / "corpus.jsonl"
QUESTION = "Why does my Beijing key fail against the Singapore endpoint?"
ANSWER = "regions"


def rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]


def test_llama_index_milvus_hybrid_costs_one_request_per_batch(
    dashscope_emulator: Emulator, tmp_path: Path
) -> None:
    require("llama_index.vector_stores.milvus")
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.types import VectorStoreQueryMode
    from llama_index.vector_stores.milvus import MilvusVectorStore

    from llama_index_ext import DashScopeEmbedding

    embed_model = DashScopeEmbedding(
        api_key=dashscope_emulator.api_key,
        base_url=dashscope_emulator.base_url,
        dimension=256,
        output_type="dense&sparse",
    )
    # Metadata is embedded with the text (MetadataMode.EMBED) while Milvus asks for the
    # sparse vector of node.text alone: the adapter must still find the reply's half.
    nodes = [TextNode(text=r["text"], metadata={"doc": r["id"], "lang": r["lang"]}) for r in rows()]
    store = MilvusVectorStore(
        uri=str(tmp_path / "llama.db"),
        dim=256,
        overwrite=True,
        enable_sparse=True,
        sparse_embedding_function=embed_model.milvus_sparse_function(),
        hybrid_ranker="RRFRanker",
        hybrid_ranker_params={"k": 60},
        use_async_client=False,  # its async client needs a running loop at construction
    )
    index = VectorStoreIndex(
        nodes,
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=embed_model,
    )
    indexing_requests = dashscope_emulator.stats()["requests"]
    assert indexing_requests == 3  # 30 nodes, 10 per request, nothing asked twice
    retriever = index.as_retriever(
        vector_store_query_mode=VectorStoreQueryMode.HYBRID, similarity_top_k=3
    )
    hits = retriever.retrieve(QUESTION)
    assert hits[0].node.metadata["doc"] == ANSWER
    assert dashscope_emulator.stats()["requests"] == indexing_requests + 1  # the query
    sent = dashscope_emulator.requests("text-embedding")
    assert {r["json"]["parameters"]["output_type"] for r in sent} == {"dense&sparse"}


def test_llama_index_milvus_function_matches_by_content_only_when_unique(
    dashscope_emulator: Emulator,
) -> None:
    """Two nodes with the same text and different metadata: the content alone does not
    say which embedded text is meant, so the function asks for the text itself."""
    require("llama_index.vector_stores.milvus")
    from llama_index_ext import DashScopeEmbedding

    embed_model = DashScopeEmbedding(
        api_key=dashscope_emulator.api_key,
        base_url=dashscope_emulator.base_url,
        output_type="dense&sparse",
    )
    embed_model.get_text_embedding_batch(["title: A\n\nsame body", "title: B\n\nsame body"])
    embed_model.get_text_embedding_batch(["title: C\n\nunique body"])
    function = embed_model.milvus_sparse_function()
    before = dashscope_emulator.stats()["requests"]
    unique = function.encode_documents(["unique body"])
    assert dashscope_emulator.stats()["requests"] == before  # found, no request
    assert unique[0] and all(isinstance(k, int) for k in unique[0])
    function.encode_documents(["same body"])
    assert dashscope_emulator.stats()["requests"] == before + 1


def test_langchain_milvus_hybrid_with_working_search_parameters(
    dashscope_emulator: Emulator, tmp_path: Path
) -> None:
    require("langchain_milvus")
    from langchain_core.documents import Document
    from langchain_milvus import Milvus

    from langchain_ext import DashScopeEmbeddings

    dense = DashScopeEmbeddings(
        api_key=dashscope_emulator.api_key,
        base_url=dashscope_emulator.base_url,
        dimension=256,
        output_type="dense&sparse",
    )
    documents = [Document(page_content=r["text"], metadata={"doc": r["id"]}) for r in rows()]
    store = Milvus.from_documents(
        documents,
        embedding=[dense, dense.milvus_sparse()],
        vector_field=["dense", "sparse"],
        connection_args={"uri": str(tmp_path / "langchain.db")},
        # Milvus Lite builds sparse indexes with drop_ratio_build=0 only; langchain-milvus's
        # defaults ask for more and fail.
        index_params=[
            {"index_type": "FLAT", "metric_type": "IP"},
            {"index_type": "SPARSE_INVERTED_INDEX", "metric_type": "IP", "params": {}},
        ],
        search_params=[{"metric_type": "IP"}, {"metric_type": "IP", "params": {}}],
        drop_old=True,
    )
    indexing_requests = dashscope_emulator.stats()["requests"]
    assert indexing_requests == 3
    hits = store.similarity_search(QUESTION, k=3, ranker_type="rrf", ranker_params={"k": 60})
    assert hits[0].metadata["doc"] == ANSWER
    assert dashscope_emulator.stats()["requests"] == indexing_requests + 1
