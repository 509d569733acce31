"""DashScope sparse embeddings for LangChain's Qdrant store (``langchain-qdrant``).

Importing this module needs ``langchain-qdrant``, and nothing else: the Milvus glue is
in :mod:`langchain_ext.milvus`.
"""

from __future__ import annotations

from typing import Any

from dashscope_embed._extras import needs_package

with needs_package(
    "DashScopeSparseEmbeddings implements langchain_qdrant.SparseEmbeddings", "langchain-qdrant"
):
    from langchain_qdrant import SparseEmbeddings, SparseVector

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
        from langchain_ext.milvus import DashScopeMilvusSparseEmbedding

        return DashScopeMilvusSparseEmbedding(self.source)


def _to_qdrant(vector: SparseEmbedding) -> SparseVector:
    pairs = vector.as_dict()
    return SparseVector(indices=list(pairs), values=list(pairs.values()))
