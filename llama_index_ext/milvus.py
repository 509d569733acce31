"""DashScope sparse vectors for LlamaIndex's Milvus store (``llama-index-vector-stores-milvus``).

Importing this module needs that package, and nothing else: the Qdrant glue is the
``sparse_doc_fn`` / ``sparse_query_fn`` pair on :class:`DashScopeEmbedding`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dashscope_embed._extras import needs_package

with needs_package(
    "DashScopeMilvusSparseFunction implements llama_index.vector_stores.milvus's "
    "BaseSparseEmbeddingFunction",
    "llama-index-vector-stores-milvus",
):
    from llama_index.vector_stores.milvus.utils import BaseSparseEmbeddingFunction

if TYPE_CHECKING:
    from llama_index_ext.embeddings import DashScopeEmbedding


class DashScopeMilvusSparseFunction(BaseSparseEmbeddingFunction):
    """``MilvusVectorStore(enable_sparse=True, sparse_embedding_function=...)`` from a
    ``dense&sparse`` :class:`DashScopeEmbedding`: no second request.

    The store asks for each node's sparse vector by ``node.text`` while the dense side
    embedded the node's text *with its metadata* (``MetadataMode.EMBED``); this function
    answers with the sparse half of that same embedded text, so both halves of the
    hybrid index stand for the same string and one request per batch pays for both.
    A text the model has not embedded (or a custom ``text_template`` it cannot match)
    costs one ``sparse`` request for the text itself.

    Build it with :meth:`DashScopeEmbedding.milvus_sparse_function`.
    """

    def __init__(self, source: DashScopeEmbedding) -> None:
        self.source = source

    def encode_queries(self, queries: list[str]) -> list[dict[int, float]]:
        return [v.as_dict() for v in self.source.sparse_for(queries, "query")]

    def encode_documents(self, documents: list[str]) -> list[dict[int, float]]:
        vectors = self.source.sparse_for(documents, "document", by_content=True)
        return [v.as_dict() for v in vectors]

    async def async_encode_queries(self, queries: list[str]) -> list[dict[int, float]]:
        return [v.as_dict() for v in await self.source.asparse_for(queries, "query")]

    async def async_encode_documents(self, documents: list[str]) -> list[dict[int, float]]:
        vectors = await self.source.asparse_for(documents, "document", by_content=True)
        return [v.as_dict() for v in vectors]
