"""DashScope rerank for LangChain: a document compressor for the second stage of retrieval."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, Field

from dashscope_embed.adapter import RerankAdapter
from dashscope_embed.models import DEFAULT_RERANK_MODEL, RerankSpec
from dashscope_embed.types import RerankResult


class DashScopeRerank(RerankAdapter, BaseDocumentCompressor):
    """Rerank documents with DashScope (``qwen3-rerank`` by default).

    ``compress_documents`` (and the native async ``acompress_documents``) returns the
    documents most relevant first, each with its ``relevance_score`` in ``metadata``:
    ``top_n`` of them if set, and only those scoring at least ``score_threshold`` if
    that is set. Lists past the model's limits are split and merged by the core. Use it
    in a ``ContextualCompressionRetriever`` to retrieve wide and keep the best.

    Example::

        from langchain_ext import DashScopeRerank
        reranker = DashScopeRerank(top_n=5)
        best = reranker.compress_documents(candidates, "how do I combine ...")
    """

    # model_name / model_spec are ours, not pydantic's: no protected-namespace warning
    # on pydantic < 2.10, whatever the framework base class configures.
    model_config = ConfigDict(protected_namespaces=())

    model: str = Field(default=DEFAULT_RERANK_MODEL, description="DashScope rerank model id.")
    model_spec: RerankSpec | None = Field(
        default=None, description="Limits of a rerank model the table does not know yet."
    )
    score_threshold: float | None = Field(
        default=None, description="Drop documents scoring below this."
    )

    def _model_ref(self) -> str | RerankSpec:
        return self.model_spec or self.model

    def rerank(self, documents: Sequence[str | Document], query: str) -> list[dict[str, Any]]:
        """``[{"index", "relevance_score"}]``, most relevant first (as other LangChain
        rerankers return them)."""
        result = self.rank(query, [_text(d) for d in documents])
        return [{"index": h.index, "relevance_score": h.relevance_score} for h in result]

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        if not documents:
            return []
        return self._kept(documents, self.rank(query, [_text(d) for d in documents]))

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        if not documents:
            return []
        return self._kept(documents, await self.arank(query, [_text(d) for d in documents]))

    def _kept(self, documents: Sequence[Document], result: RerankResult) -> list[Document]:
        kept = []
        for hit in result:
            if self.score_threshold is not None and hit.relevance_score < self.score_threshold:
                continue
            original = documents[hit.index]
            metadata = {**original.metadata, "relevance_score": hit.relevance_score}
            kept.append(
                Document(page_content=original.page_content, metadata=metadata, id=original.id)
            )
        return kept


def _text(document: str | Document) -> str:
    return document if isinstance(document, str) else document.page_content
