"""DashScope embeddings for LangChain (``pip install dashscope-embed[langchain]``).

* :class:`DashScopeEmbeddings`: dense text embeddings (and images via ``embed_image``);
  ``sparse_companion()`` feeds a HYBRID Qdrant store from the same requests.
* :class:`DashScopeSparseEmbeddings`: ``langchain_qdrant`` sparse embeddings (imported
  on first use; needs ``langchain-qdrant`` only).
* :class:`DashScopeMilvusSparseEmbedding`: ``langchain_milvus`` sparse embeddings (needs
  ``langchain-milvus`` only); ``DashScopeEmbeddings.milvus_sparse()`` reuses replies.
* :class:`DashScopeMultimodalEmbeddings`: texts and images in one space, on every DashScope
  multimodal model; ``fused_documents()`` embeds a product's title and photo as one vector
  for any vector store.
* :class:`DashScopeRerank`: a document compressor that reranks retrieved documents.
* :func:`cached_embeddings`: ``CacheBackedEmbeddings`` with a settings-aware namespace.
"""

from __future__ import annotations

from typing import Any

from dashscope_embed._extras import needs_extra

with needs_extra("langchain_ext", "langchain"):
    from langchain_ext.embeddings import DashScopeEmbeddings, cached_embeddings
    from langchain_ext.multimodal import DashScopeMultimodalEmbeddings
    from langchain_ext.rerank import DashScopeRerank

__all__ = [
    "DashScopeEmbeddings",
    "DashScopeMilvusSparseEmbedding",
    "DashScopeMultimodalEmbeddings",
    "DashScopeRerank",
    "DashScopeSparseEmbeddings",
    "cached_embeddings",
]


def __getattr__(name: str) -> Any:
    # Each vector store's glue needs that store's package only, so it is imported when
    # asked for, with a clear message if the package is missing.
    if name == "DashScopeSparseEmbeddings":
        from langchain_ext.qdrant import DashScopeSparseEmbeddings

        return DashScopeSparseEmbeddings
    if name == "DashScopeMilvusSparseEmbedding":
        from langchain_ext.milvus import DashScopeMilvusSparseEmbedding

        return DashScopeMilvusSparseEmbedding
    raise AttributeError(f"module 'langchain_ext' has no attribute {name!r}")
