"""Hybrid (dense + sparse) RAG retrieval with DashScope embeddings, LlamaIndex and Qdrant,
then a rerank stage that puts the best of the candidates first.

Run it with ``bash scripts/demo.sh`` (or ``python examples/quickstart.py`` inside the
project's environment). With ``DASHSCOPE_API_KEY`` set it uses the real service;
without it, it starts the bundled local emulator (deterministic vectors that behave
like embeddings, so the ranking logic is real but the semantics are approximate).

One request per batch of documents feeds both halves of the hybrid index:
``output_type="dense&sparse"`` returns both vectors, and the sparse half is handed to
Qdrant without asking the service again. The retriever fetches a wide candidate list
(hybrid, 10 per question); ``DashScopeRerank`` (``qwen3-rerank``, a cross-encoder that
reads the question and each candidate together) scores them and keeps the best 3.
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path

from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from llama_index.core.vector_stores.types import VectorStoreQueryMode
from llama_index.vector_stores.qdrant import QdrantVectorStore
from qdrant_client import QdrantClient

from dashscope_embed.emulator import service_or_emulator
from llama_index_ext import DashScopeEmbedding, DashScopeRerank

# Local-mode Qdrant says payload indexes need a server; irrelevant for this demo.
warnings.filterwarnings("ignore", message="Payload indexes have no effect")

CORPUS = Path(__file__).parent / "data" / "corpus.jsonl"
CANDIDATES = 10  # retrieved wide by the hybrid index
KEPT = 3  # kept by the reranker
QUESTIONS = [
    "How do I combine keyword matching with semantic search?",
    "What does parse_retry_after do?",
    "Why does my Beijing key fail against the Singapore endpoint?",
    "文本向量化是怎么计费的？",
    "How many texts can one text-embedding-v4 request carry?",
]


def load_nodes() -> list[TextNode]:
    rows = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    # Qdrant wants UUID ids; the readable id stays in the metadata.
    return [
        TextNode(text=row["text"], metadata={"doc": row["id"], "lang": row["lang"]}) for row in rows
    ]


def show(hits: list[NodeWithScore]) -> None:
    for rank, hit in enumerate(hits, start=1):
        text = hit.node.get_content()
        short = text if len(text) <= 80 else text[:77] + "..."
        print(f"    {rank}. [{hit.node.metadata['doc']}] score={hit.score:.3f}  {short}")


def main() -> int:
    nodes = load_nodes()
    with service_or_emulator() as connection, tempfile.TemporaryDirectory() as folder:
        embed_model = DashScopeEmbedding(
            **connection,
            model_name="text-embedding-v4",
            dimension=512,
            output_type="dense&sparse",
            task="web_search",
        )
        qdrant = QdrantClient(path=str(Path(folder) / "qdrant"))
        store = QdrantVectorStore(
            client=qdrant,
            collection_name="quickstart",
            enable_hybrid=True,
            sparse_doc_fn=embed_model.sparse_doc_fn,
            sparse_query_fn=embed_model.sparse_query_fn,
        )
        index = VectorStoreIndex(
            nodes,
            storage_context=StorageContext.from_defaults(vector_store=store),
            embed_model=embed_model,
        )
        print(f"Indexed {len(nodes)} documents (dense + sparse, 512 dimensions).")
        retriever = index.as_retriever(
            vector_store_query_mode=VectorStoreQueryMode.HYBRID,
            similarity_top_k=CANDIDATES,
            sparse_top_k=2 * CANDIDATES,
        )
        reranker = DashScopeRerank(**connection, top_n=KEPT, task="web_search")
        for question in QUESTIONS:
            candidates = retriever.retrieve(question)
            best = reranker.postprocess_nodes(candidates, QueryBundle(question))
            print(f"\nQ: {question}")
            print(f"  hybrid retrieval, top {KEPT} of {len(candidates)}:")
            show(candidates[:KEPT])
            print(f"  after {reranker.model}:")
            show(best)
        qdrant.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
