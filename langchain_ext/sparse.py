"""DashScope sparse embeddings for LangChain vector stores (Qdrant, Milvus).

Importing this module needs ``langchain-qdrant``; the Milvus adapter also needs
``langchain-milvus`` when used.
"""

from __future__ import annotations

from typing import Any

try:
    from langchain_qdrant import SparseEmbeddings, SparseVector
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "DashScopeSparseEmbeddings implements langchain_qdrant.SparseEmbeddings: "
        "pip install langchain-qdrant"
    ) from exc

from dashscope_embed.types import SparseEmbedding
from langchain_ext.embeddings import DashScopeEmbeddings


class DashScopeSparseEmbeddings(SparseEmbeddings):
    """Sparse (lexical) vectors for ``QdrantVectorStore(retrieval_mode=HYBRID)``.

    Standalone (``DashScopeSparseEmbeddings(model=..., dimension=...)``) it makes one
    ``output_type="sparse"`` request per batch. From
    :meth:`DashScopeEmbeddings.sparse_companion` on a ``dense&sparse`` model it reuses
    the sparse half of the dense model's requests: no second request.
    """

    def __init__(self, source: DashScopeEmbeddings | None = None, **settings: Any) -> None:
        if source is not None and settings:
            raise TypeError("pass either source= or settings, not both")
        self.source = source or DashScopeEmbeddings(**{"output_type": "sparse", **settings})

    def embed_documents(self, texts: list[str]) -> list[SparseVector]:
        return [_to_qdrant(v) for v in self.source.sparse_for(texts, "document")]

    def embed_query(self, text: str) -> SparseVector:
        return _to_qdrant(self.source.sparse_for([text], "query")[0])

    async def aembed_documents(self, texts: list[str]) -> list[SparseVector]:
        return [_to_qdrant(v) for v in await self.source.asparse_for(texts, "document")]

    async def aembed_query(self, text: str) -> SparseVector:
        return _to_qdrant((await self.source.asparse_for([text], "query"))[0])

    def as_milvus(self) -> Any:
        """The same vectors through ``langchain_milvus``'s sparse interface
        (``{index: weight}`` dicts); needs ``langchain-milvus``."""
        return milvus_sparse_embedding(self.source)


def _to_qdrant(vector: SparseEmbedding) -> SparseVector:
    pairs = vector.as_dict()
    return SparseVector(indices=list(pairs), values=list(pairs.values()))


def milvus_sparse_embedding(source: DashScopeEmbeddings) -> Any:
    """A ``langchain_milvus`` ``BaseSparseEmbedding`` backed by ``source``."""
    try:
        from langchain_milvus.utils.sparse import BaseSparseEmbedding
    except ImportError:
        raise ImportError(
            "the Milvus sparse adapter needs langchain-milvus: pip install langchain-milvus"
        ) from None

    class DashScopeMilvusSparseEmbedding(BaseSparseEmbedding):
        def embed_query(self, query: str) -> dict[int, float]:
            return source.sparse_for([query], "query")[0].as_dict()

        def embed_documents(self, texts: list[str]) -> list[dict[int, float]]:
            return [v.as_dict() for v in source.sparse_for(texts, "document")]

        async def aembed_query(self, query: str) -> dict[int, float]:
            return (await source.asparse_for([query], "query"))[0].as_dict()

        async def aembed_documents(self, texts: list[str]) -> list[dict[int, float]]:
            return [v.as_dict() for v in await source.asparse_for(texts, "document")]

    return DashScopeMilvusSparseEmbedding()
