"""DashScope embeddings for LangChain: dense, sparse, hybrid and image embeddings."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.embeddings import Embeddings
from langchain_core.utils import secret_from_env
from pydantic import ConfigDict, Field, SecretStr, model_validator

from dashscope_embed.adapter import AdapterSettings
from dashscope_embed.models import DEFAULT_MODEL, ModelSpec, TextType
from dashscope_embed.multimodal import Content, ImageInput
from dashscope_embed.types import EmbeddingResult

if TYPE_CHECKING:
    from langchain_ext.milvus import DashScopeMilvusSparseEmbedding
    from langchain_ext.qdrant import DashScopeSparseEmbeddings


class DashScopeEmbeddings(AdapterSettings, Embeddings):
    """DashScope text embeddings (text-embedding-v4 by default) for LangChain.

    ``embed_query`` sends ``text_type="query"`` with the task instruction (``instruct``
    or the ``task`` preset); ``embed_documents`` sends ``text_type="document"`` with
    none. Requests run concurrently (``max_concurrency``), async methods use the core's
    async client, and every request is retried on its own without re-sending finished
    work. With ``output_type="dense&sparse"``, :meth:`sparse_companion` gives a
    ``langchain_qdrant`` sparse embedding that reuses the same replies, so a HYBRID
    ``QdrantVectorStore`` costs one request per batch.

    Setup::

        pip install "dashscope-embed[langchain]"
        export DASHSCOPE_API_KEY=sk-...

    Example::

        from langchain_ext import DashScopeEmbeddings
        embeddings = DashScopeEmbeddings(dimension=1024, task="question_answering")
        embeddings.embed_query("What is DashScope?")[:3]
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())

    model: str = Field(default=DEFAULT_MODEL, description="DashScope model id.")
    model_spec: ModelSpec | None = Field(
        default=None, description="Limits of a model the table does not know yet."
    )
    api_key: SecretStr | None = Field(
        alias="dashscope_api_key", default=None, exclude=True, repr=False
    )

    @model_validator(mode="before")
    @classmethod
    def _key_from_environment(cls, data: Any) -> Any:
        # Read at construction, as LangChain partner packages do; but DashScope's key is
        # never made the bearer token of a self-hosted server (another host).
        if (
            isinstance(data, dict)
            and data.get("api_key") is None
            and data.get("dashscope_api_key") is None
            and data.get("server") is None
        ):
            key = secret_from_env("DASHSCOPE_API_KEY", default=None)()
            if key is not None:
                data = {**data, "api_key": key}
        return data

    show_progress: bool = Field(default=False, description="Show a progress bar (tqdm).")

    def _model_ref(self) -> str | ModelSpec:
        return self.model_spec or self.model

    # ------------------------------------------------------------- LangChain interface
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed corpus texts (``text_type="document"``, no instruction)."""
        if not self.show_progress:
            return self.dense_for(texts, "document")
        bar = _progress_bar(len(texts))
        try:
            result = self.client.embed(texts, progress=bar.update, **self._call_options("document"))
        finally:
            bar.close()
        self._remember_sparse("document", texts, result)
        return result.require_dense()

    def embed_query(self, text: str) -> list[float]:
        """Embed a search query (``text_type="query"`` and the task instruction)."""
        return self.dense_for([text], "query")[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await self.adense_for(texts, "document")

    async def aembed_query(self, text: str) -> list[float]:
        return (await self.adense_for([text], "query"))[0]

    # ------------------------------------------------------------- beyond the interface
    def embed(
        self, texts: Sequence[str], *, text_type: TextType | None = "document", **overrides: Any
    ) -> EmbeddingResult:
        """One call with per-call overrides of this object's options (``dimension``,
        ``output_type``, ``instruct``, ``task``, ``extra_parameters``); returns dense,
        sparse and usage together."""
        return self.client.embed(texts, **self._overridden(text_type, overrides))

    async def aembed(
        self, texts: Sequence[str], *, text_type: TextType | None = "document", **overrides: Any
    ) -> EmbeddingResult:
        """Async twin of :meth:`embed`."""
        return await self.client.aembed(texts, **self._overridden(text_type, overrides))

    def _overridden(self, text_type: TextType | None, overrides: dict[str, Any]) -> dict[str, Any]:
        call = self._call_options("query" if text_type == "query" else "document")
        return {**call, "text_type": text_type, **overrides}

    def embed_image(self, uris: Sequence[ImageInput]) -> list[list[float]]:
        """Embed images (paths, URLs, bytes or data URIs) with ``multimodal-embedding-v1``;
        each is checked against the service's limits before anything is sent."""
        contents = [Content.image(uri) for uri in uris]
        return self.client.embed_multimodal(contents).require_dense()

    def sparse_companion(self) -> DashScopeSparseEmbeddings:
        """A ``langchain_qdrant.SparseEmbeddings`` that reuses this model's
        ``dense&sparse`` replies (needs ``langchain-qdrant`` only)."""
        from langchain_ext.qdrant import DashScopeSparseEmbeddings

        return DashScopeSparseEmbeddings(source=self)

    def milvus_sparse(self) -> DashScopeMilvusSparseEmbedding:
        """A ``langchain_milvus`` sparse embedding that reuses this model's
        ``dense&sparse`` replies (needs ``langchain-milvus`` only)."""
        from langchain_ext.milvus import DashScopeMilvusSparseEmbedding

        return DashScopeMilvusSparseEmbedding(source=self)

    @property
    def cache_namespace(self) -> str:
        """A ``CacheBackedEmbeddings`` namespace covering everything that changes a vector
        (model, dimension, output type, and the query instruction), so a changed setting
        never reads a stale cache entry."""
        instruct = self.query_instruct or ""
        digest = hashlib.sha256(instruct.encode("utf-8")).hexdigest()[:12]
        dimension = self.dimension or self.spec.default_dimension
        return f"dashscope:{self.spec.name}:d{dimension}:{self.output_type}:i{digest}:"


def cached_embeddings(
    embeddings: DashScopeEmbeddings, store: Any, *, cache_queries: bool = True
) -> Any:
    """``CacheBackedEmbeddings`` over ``store`` (a LangChain ``ByteStore``) with a
    namespace that changes whenever a setting that changes the vectors does.

    Documents are cached; with ``cache_queries`` so are queries (keyed apart from
    documents, since they are embedded differently). Needs ``langchain-classic`` (or
    ``langchain``).
    """
    try:
        from langchain_classic.embeddings import CacheBackedEmbeddings
    except ImportError:
        try:
            from langchain.embeddings import (  # type: ignore[import-not-found, no-redef]
                CacheBackedEmbeddings,
            )
        except ImportError:
            raise ImportError(
                "cached_embeddings needs CacheBackedEmbeddings: pip install langchain-classic"
            ) from None
    return CacheBackedEmbeddings.from_bytes_store(
        embeddings,
        store,
        namespace=embeddings.cache_namespace,
        query_embedding_cache=cache_queries,
        key_encoder="sha256",  # LangChain's default, SHA-1, is not collision-resistant
    )


def _progress_bar(total: int) -> Any:
    try:
        from tqdm.auto import tqdm  # type: ignore[import-untyped]
    except ImportError:
        raise ImportError("show_progress=True needs tqdm: pip install tqdm") from None
    return tqdm(total=total, desc="Embedding documents")
