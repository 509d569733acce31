"""DashScope embeddings for LlamaIndex: dense, sparse and hybrid from one request."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.base.embeddings.base_sparse import BaseSparseEmbedding
from llama_index.core.base.embeddings.base_sparse import SparseEmbedding as LlamaSparse
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.events.embedding import (
    EmbeddingEndEvent,
    EmbeddingStartEvent,
    SparseEmbeddingEndEvent,
    SparseEmbeddingStartEvent,
)
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from dashscope_embed.adapter import AdapterSettings, Role
from dashscope_embed.models import DEFAULT_MODEL, ModelSpec, resolve_model
from dashscope_embed.protocol.selfhosted import row_limit
from dashscope_embed.types import EmbeddingResult

if TYPE_CHECKING:
    from llama_index_ext.milvus import DashScopeMilvusSparseFunction

dispatcher = get_dispatcher(__name__)

SparseFn = Callable[[list[str]], tuple[list[list[int]], list[list[float]]]]


def _fill_batch_size(data: Any) -> Any:
    """Default ``embed_batch_size`` to the model's row limit (one request per batch)."""
    if isinstance(data, dict) and data.get("embed_batch_size") is None:
        model = data.get("model_spec") or data.get("model_name") or DEFAULT_MODEL
        try:
            rows = row_limit(resolve_model(model).max_rows, data.get("server"))
            data = {**data, "embed_batch_size": rows}
        except Exception:  # the model is reported by the after-validator
            data = {**data, "embed_batch_size": 10}
    return data


class _LlamaSettings(AdapterSettings):
    """The LlamaIndex naming of the shared settings."""

    # model_name / model_spec are ours, not pydantic's: no protected-namespace warning
    # on pydantic < 2.10, whatever the framework base class configures.
    model_config = ConfigDict(protected_namespaces=())

    model_spec: ModelSpec | None = Field(
        default=None, description="Limits of a model the table does not know yet."
    )

    def _model_ref(self) -> str | ModelSpec:
        return self.model_spec or self.model_name  # type: ignore[attr-defined]


class DashScopeEmbedding(_LlamaSettings, BaseEmbedding):
    """DashScope text embeddings (text-embedding-v4 by default) for LlamaIndex.

    Queries are sent with ``text_type="query"`` and the task instruction (``instruct`` or
    the ``task`` preset); documents with ``text_type="document"`` and no instruction.
    ``get_text_embedding_batch`` runs its batches concurrently (``max_concurrency``);
    the async methods use the core's async client. With ``output_type="dense&sparse"``
    every request also returns sparse vectors, which :attr:`sparse_doc_fn`,
    :attr:`sparse_query_fn` and :meth:`sparse_embedding` reuse for hybrid search at no
    extra request.

    Example::

        from llama_index.core import Settings
        Settings.embed_model = DashScopeEmbedding(dimension=1024, task="question_answering")
    """

    # model_name / model_spec are ours, not pydantic's: no protected-namespace warning
    # on pydantic < 2.10, whatever the framework base class configures.
    model_config = ConfigDict(protected_namespaces=())

    model_name: str = Field(default=DEFAULT_MODEL, description="DashScope model id.")

    @model_validator(mode="before")
    @classmethod
    def _default_batch_size(cls, data: Any) -> Any:
        return _fill_batch_size(data)

    @model_validator(mode="after")
    def _batch_within_row_limit(self) -> DashScopeEmbedding:
        limit = row_limit(self.spec.max_rows, self.server)
        if self.embed_batch_size > limit:
            where = f"a {self.server} server's" if self.server else f"{self.spec.name}'s"
            raise ValueError(
                f"embed_batch_size={self.embed_batch_size} exceeds {where} limit "
                f"of {limit} texts per request"
            )
        return self

    @classmethod
    def class_name(cls) -> str:
        return "DashScopeEmbedding"

    def to_payload(self) -> dict[str, Any]:
        return event_payload(self)

    # ------------------------------------------------------------- LlamaIndex hooks
    def _get_query_embedding(self, query: str) -> Embedding:
        return self.dense_for([query], "query")[0]

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return (await self.adense_for([query], "query"))[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self.dense_for([text], "document")[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await self.adense_for([text], "document"))[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self.dense_for(texts, "document")

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await self.adense_for(texts, "document")

    def get_text_embedding_batch(
        self, texts: list[str], show_progress: bool = False, **kwargs: Any
    ) -> list[Embedding]:
        """Embed ``texts`` in batches of ``embed_batch_size``, the batches concurrently.

        LlamaIndex's own loop sends one batch at a time; this is one call to the core
        client (at most ``max_concurrency`` requests in flight, a text repeated across
        batches sent once, a failure reported for the whole list with the finished
        vectors attached), and each batch is still reported to the callback manager and
        instrumentation as the framework does. With an embeddings cache or rate limiter
        configured, LlamaIndex's own loop is used.
        """
        if framework_loop(self, texts):
            return super().get_text_embedding_batch(texts, show_progress=show_progress, **kwargs)
        events = start_batch_events(self, texts)
        progress = _progress_bar(show_progress, len(texts))
        try:
            result = self.client.embed(texts, **self._batch_options(progress))
        finally:
            if progress is not None:
                progress.close()
        return self._end_batch_events(texts, events, result)

    async def aget_text_embedding_batch(
        self, texts: list[str], show_progress: bool = False, **kwargs: Any
    ) -> list[Embedding]:
        """Async twin of :meth:`get_text_embedding_batch`, with the same guarantees."""
        if framework_loop(self, texts):
            return await super().aget_text_embedding_batch(
                texts, show_progress=show_progress, **kwargs
            )
        events = start_batch_events(self, texts)
        progress = _progress_bar(show_progress, len(texts))
        try:
            result = await self.client.aembed(texts, **self._batch_options(progress))
        finally:
            if progress is not None:
                progress.close()
        return self._end_batch_events(texts, events, result)

    def _batch_options(self, progress: Any) -> dict[str, Any]:
        return {
            "batch_size": self.embed_batch_size,
            "progress": progress.update if progress else None,
            **self._call_options("document"),
        }

    def _end_batch_events(
        self, texts: list[str], events: list[tuple[str, list[Any]]], result: EmbeddingResult
    ) -> list[Embedding]:
        """Report each batch's vectors and return them all, in input order."""
        self._remember_sparse("document", texts, result)
        vectors = result.require_dense()
        end_batch_events(self, events, vectors)
        return vectors

    # ------------------------------------------------------------- hybrid search
    @property
    def sparse_doc_fn(self) -> SparseFn:
        """For ``QdrantVectorStore(enable_hybrid=True, sparse_doc_fn=...)``: the sparse
        half of the documents this model just embedded (no second request when
        ``output_type="dense&sparse"``)."""
        return lambda texts: _indices_values(self.sparse_for(list(texts), "document"))

    @property
    def sparse_query_fn(self) -> SparseFn:
        """For ``QdrantVectorStore(..., sparse_query_fn=...)``: the query's sparse half."""
        return lambda texts: _indices_values(self.sparse_for(list(texts), "query"))

    def milvus_sparse_function(self) -> DashScopeMilvusSparseFunction:
        """For ``MilvusVectorStore(enable_sparse=True, sparse_embedding_function=...)``:
        the sparse half of what this model embedded, found from ``node.text`` (needs
        ``llama-index-vector-stores-milvus`` only)."""
        from llama_index_ext.milvus import DashScopeMilvusSparseFunction

        return DashScopeMilvusSparseFunction(self)

    def sparse_embedding(self) -> DashScopeSparseEmbedding:
        """A :class:`DashScopeSparseEmbedding` that shares this model's client and reuses
        the sparse halves of its ``dense&sparse`` requests."""
        sparse = DashScopeSparseEmbedding(
            **self.model_dump(
                exclude={"embed_batch_size", "num_workers", "embeddings_cache", "output_type"}
            ),
            api_key=self.api_key,
        )
        sparse._source = self
        return sparse


class DashScopeSparseEmbedding(_LlamaSettings, BaseSparseEmbedding):
    """DashScope sparse (lexical) embeddings for LlamaIndex: ``{token_id: weight}``.

    Use it alone (one ``output_type="sparse"`` request per batch) or get it from
    :meth:`DashScopeEmbedding.sparse_embedding` to reuse a dense model's
    ``dense&sparse`` replies.
    """

    # model_name / model_spec are ours, not pydantic's: no protected-namespace warning
    # on pydantic < 2.10, whatever the framework base class configures.
    model_config = ConfigDict(protected_namespaces=())

    model_name: str = Field(default=DEFAULT_MODEL, description="DashScope model id.")
    output_type: Any = Field(default="sparse", description="Always sparse for this class.")

    _source: DashScopeEmbedding | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _default_batch_size(cls, data: Any) -> Any:
        return _fill_batch_size(data)

    @classmethod
    def class_name(cls) -> str:
        return "DashScopeSparseEmbedding"

    def _sparse(self, texts: list[str], role: Role) -> list[LlamaSparse]:
        source = self._source or self
        return [v.as_dict() for v in source.sparse_for(texts, role)]

    async def _asparse(self, texts: list[str], role: Role) -> list[LlamaSparse]:
        source = self._source or self
        return [v.as_dict() for v in await source.asparse_for(texts, role)]

    def _get_query_embedding(self, query: str) -> LlamaSparse:
        return self._sparse([query], "query")[0]

    async def _aget_query_embedding(self, query: str) -> LlamaSparse:
        return (await self._asparse([query], "query"))[0]

    def _get_text_embedding(self, text: str) -> LlamaSparse:
        return self._sparse([text], "document")[0]

    async def _aget_text_embedding(self, text: str) -> LlamaSparse:
        return (await self._asparse([text], "document"))[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[LlamaSparse]:
        return self._sparse(texts, "document")

    async def _aget_text_embeddings(self, texts: list[str]) -> list[LlamaSparse]:
        return await self._asparse(texts, "document")

    def get_text_embedding_batch(
        self, texts: list[str], show_progress: bool = False, **kwargs: Any
    ) -> list[LlamaSparse]:
        """Sparse vectors for ``texts``: one core call (batches concurrent, a repeated
        text sent once), each ``embed_batch_size`` batch still reported to
        instrumentation as LlamaIndex's own loop does."""
        self._announce_batches(texts)
        return self._report_batches(texts, self._sparse(texts, "document") if texts else [])

    async def aget_text_embedding_batch(
        self, texts: list[str], show_progress: bool = False, **kwargs: Any
    ) -> list[LlamaSparse]:
        """Async twin of :meth:`get_text_embedding_batch`."""
        self._announce_batches(texts)
        vectors = await self._asparse(texts, "document") if texts else []
        return self._report_batches(texts, vectors)

    def _announce_batches(self, texts: list[str]) -> None:
        model_dict = event_payload(self)
        for _ in range(0, len(texts), self.embed_batch_size):
            dispatcher.event(SparseEmbeddingStartEvent(model_dict=model_dict))

    def _report_batches(self, texts: list[str], vectors: list[LlamaSparse]) -> list[LlamaSparse]:
        size = self.embed_batch_size
        for start in range(0, len(texts), size):
            dispatcher.event(
                SparseEmbeddingEndEvent(
                    chunks=texts[start : start + size], embeddings=vectors[start : start + size]
                )
            )
        return vectors


def _indices_values(vectors: list[Any]) -> tuple[list[list[int]], list[list[float]]]:
    pairs = [v.as_dict() for v in vectors]
    return [list(p.keys()) for p in pairs], [list(p.values()) for p in pairs]


def framework_loop(model: BaseEmbedding, texts: Sequence[Any]) -> bool:
    """Whether LlamaIndex's own batch loop must run: its cache and rate limiter work per
    batch inside it."""
    # Both are newer than our llama-index-core floor (0.12.4x and 0.14.20).
    cache = getattr(model, "embeddings_cache", None)
    return cache is not None or getattr(model, "rate_limiter", None) is not None or not texts


def event_payload(model: BaseEmbedding | BaseSparseEmbedding) -> dict[str, Any]:
    """What instrumentation events and callbacks carry about ``model``: its settings,
    never its key. The same dict on every llama-index-core version (its own
    ``to_payload``, new in 0.14.23, is what this matches; older versions sent
    ``to_dict()``)."""
    payload: dict[str, Any] = {
        "class_name": model.class_name(),
        "model_name": model.model_name,
        "embed_batch_size": model.embed_batch_size,
    }
    for name in ("dimension", "output_type"):
        if name in type(model).model_fields:
            payload[name] = getattr(model, name)
    return payload


def start_batch_events(
    model: BaseEmbedding, items: Sequence[Any], *, instrument: bool = True
) -> list[tuple[str, list[Any]]]:
    """Announce each ``embed_batch_size`` batch as LlamaIndex's own loop would (to the
    callback manager, and to instrumentation unless ``instrument`` is false, as for
    images); one core call then embeds all of them."""
    size = model.embed_batch_size
    model_dict = event_payload(model)
    events = []
    for start in range(0, len(items), size):
        if instrument:
            dispatcher.event(EmbeddingStartEvent(model_dict=model_dict))
        event_id = model.callback_manager.on_event_start(
            CBEventType.EMBEDDING, payload={EventPayload.SERIALIZED: model_dict}
        )
        events.append((event_id, list(items[start : start + size])))
    return events


def end_batch_events(
    model: BaseEmbedding,
    events: list[tuple[str, list[Any]]],
    vectors: list[Embedding],
    *,
    instrument: bool = True,
) -> None:
    """Report each announced batch with its vectors."""
    size = model.embed_batch_size
    for number, (event_id, batch) in enumerate(events):
        chunk = vectors[number * size : number * size + len(batch)]
        if instrument:
            dispatcher.event(EmbeddingEndEvent(chunks=batch, embeddings=chunk))
        model.callback_manager.on_event_end(
            CBEventType.EMBEDDING,
            payload={EventPayload.CHUNKS: batch, EventPayload.EMBEDDINGS: chunk},
            event_id=event_id,
        )


def _progress_bar(show: bool, total: int) -> Any:
    if not show:
        return None
    try:
        from tqdm.auto import tqdm  # type: ignore[import-untyped]
    except ImportError:  # tqdm ships with llama-index-core, but be safe
        return None
    return tqdm(total=total, desc="Generating embeddings")
