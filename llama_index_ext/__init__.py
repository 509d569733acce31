"""DashScope embeddings for LlamaIndex (``pip install dashscope-embed[llama-index]``).

* :class:`DashScopeEmbedding`: dense text embeddings; with ``output_type="dense&sparse"``
  it also feeds the sparse half of a hybrid index from the same requests.
* :class:`DashScopeSparseEmbedding`: sparse (lexical) embeddings, ``{token_id: weight}``.
* :class:`DashScopeMultiModalEmbedding`: images and text in one space, on every DashScope
  multimodal model (``qwen3-vl-embedding``, ``tongyi-embedding-vision-*``,
  ``multimodal-embedding-v1``, ...); ``embed_fused`` gives one vector per text + image item.
* :class:`DashScopeRerank`: a node postprocessor that reranks retrieved nodes.
"""

from __future__ import annotations

from dashscope_embed._extras import needs_extra

with needs_extra("llama_index_ext", "llama-index"):
    from llama_index_ext.embeddings import DashScopeEmbedding, DashScopeSparseEmbedding
    from llama_index_ext.multimodal import DashScopeMultiModalEmbedding
    from llama_index_ext.rerank import DashScopeRerank

__all__ = [
    "DashScopeEmbedding",
    "DashScopeMultiModalEmbedding",
    "DashScopeRerank",
    "DashScopeSparseEmbedding",
]
