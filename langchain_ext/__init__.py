"""DashScope embeddings for LangChain (``pip install dashscope-embed[langchain]``).

* :class:`DashScopeEmbeddings`: dense text embeddings (and images via ``embed_image``);
  ``sparse_companion()`` feeds a HYBRID Qdrant store from the same requests.
* :class:`DashScopeSparseEmbeddings`: ``langchain_qdrant`` sparse embeddings (imported
  on first use; needs ``langchain-qdrant``).
* :func:`cached_embeddings`: ``CacheBackedEmbeddings`` with a settings-aware namespace.
"""

from __future__ import annotations

from typing import Any

from langchain_ext.embeddings import DashScopeEmbeddings, cached_embeddings

__all__ = ["DashScopeEmbeddings", "DashScopeSparseEmbeddings", "cached_embeddings"]


def __getattr__(name: str) -> Any:
    # Optional dependency: imported only when asked for, with a clear message if missing.
    if name == "DashScopeSparseEmbeddings":
        from langchain_ext.sparse import DashScopeSparseEmbeddings

        return DashScopeSparseEmbeddings
    raise AttributeError(f"module 'langchain_ext' has no attribute {name!r}")
