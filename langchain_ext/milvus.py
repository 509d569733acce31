"""DashScope sparse embeddings for LangChain's Milvus store (``langchain-milvus``).

Importing this module needs ``langchain-milvus``, and nothing else: the Qdrant glue is
in :mod:`langchain_ext.qdrant`.
"""

from __future__ import annotations

from typing import Any

from dashscope_embed._extras import needs_package

with needs_package(
    "DashScopeMilvusSparseEmbedding implements langchain_milvus's BaseSparseEmbedding",
    "langchain-milvus",
):
    from langchain_milvus.utils.sparse import BaseSparseEmbedding

from langchain_ext.embeddings import DashScopeEmbeddings


class DashScopeMilvusSparseEmbedding(BaseSparseEmbedding):
    """Sparse vectors (``{token id: weight}``) for ``langchain_milvus.Milvus``.

    ``DashScopeMilvusSparseEmbedding()`` makes its own ``output_type="sparse"`` requests;
    from :meth:`DashScopeEmbeddings.milvus_sparse` on a ``dense&sparse`` model it reuses
    the sparse half of the dense model's replies: no second request.
    """

    def __init__(self, source: DashScopeEmbeddings | None = None, **settings: Any) -> None:
        if source is not None and settings:
            raise TypeError("pass either source= or settings, not both")
        self.source = source or DashScopeEmbeddings(**{"output_type": "sparse", **settings})

    def embed_query(self, query: str) -> dict[int, float]:
        return self.source.sparse_for([query], "query")[0].as_dict()

    def embed_documents(self, texts: list[str]) -> list[dict[int, float]]:
        return [v.as_dict() for v in self.source.sparse_for(texts, "document")]

    async def aembed_query(self, query: str) -> dict[int, float]:
        return (await self.source.asparse_for([query], "query"))[0].as_dict()

    async def aembed_documents(self, texts: list[str]) -> list[dict[int, float]]:
        return [v.as_dict() for v in await self.source.asparse_for(texts, "document")]
