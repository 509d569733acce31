"""DashScope multimodal embeddings (text, images) for LlamaIndex."""

from __future__ import annotations

from typing import Any

from llama_index.core.base.embeddings.base import Embedding
from llama_index.core.embeddings.multi_modal_base import MultiModalEmbedding
from llama_index.core.schema import ImageType
from pydantic import ConfigDict, Field

from dashscope_embed.adapter import MultimodalAdapter, Role
from dashscope_embed.models import ModelSpec
from dashscope_embed.multimodal import Content
from llama_index_ext.embeddings import end_batch_events, framework_loop, start_batch_events


class DashScopeMultiModalEmbedding(MultimodalAdapter, MultiModalEmbedding):
    """DashScope multimodal embeddings for LlamaIndex: images and text in one space.

    Serves every multimodal model in the table (``model_name="qwen3-vl-embedding"``,
    ``"tongyi-embedding-vision-plus"``, ...; ``multimodal-embedding-v1`` by default, so
    existing indexes keep their vectors). Use it as ``image_embed_model`` (and
    ``embed_model``) of a ``MultiModalVectorStoreIndex`` for text-to-image search.
    Images may be file paths, URLs, ``data:`` URIs or bytes; each is checked against the
    model's limits before anything is sent, and images over 3 MB are uploaded to the
    service's temporary storage. Requests run concurrently. Queries
    (``get_query_embedding``) get the query-only options (``instruct``); texts and images
    embedded as documents do not. :meth:`embed_fused` gives one vector per item made of
    several parts (a product's title and photo) on models that fuse.
    """

    # model_name / model_spec are ours, not pydantic's: no protected-namespace warning
    # on pydantic < 2.10, whatever the framework base class configures.
    model_config = ConfigDict(protected_namespaces=())

    model_name: str = Field(default="multimodal-embedding-v1", description="DashScope model id.")
    model_spec: ModelSpec | None = Field(
        default=None, description="Limits of a model the table does not know yet."
    )
    embed_batch_size: int = Field(default=10, gt=0, le=2048)

    @classmethod
    def class_name(cls) -> str:
        return "DashScopeMultiModalEmbedding"

    def _model_ref(self) -> str | ModelSpec:
        return self.model_spec or self.model_name

    def _embed(self, contents: list[Content], role: Role = "document") -> list[Embedding]:
        return self.embed_contents(contents, role)

    async def _aembed(self, contents: list[Content], role: Role = "document") -> list[Embedding]:
        return await self.aembed_contents(contents, role)

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._embed([Content.text(query)], "query")[0]

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return (await self._aembed([Content.text(query)], "query"))[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._embed([Content.text(text)])[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return (await self._aembed([Content.text(text)]))[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._embed([Content.text(t) for t in texts])

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await self._aembed([Content.text(t) for t in texts])

    def _get_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return self._embed([Content.image(_image(img_file_path))])[0]

    async def _aget_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return (await self._aembed([Content.image(_image(img_file_path))]))[0]

    def _get_image_embeddings(self, img_file_paths: list[ImageType]) -> list[Embedding]:
        return self._embed([Content.image(_image(p)) for p in img_file_paths])

    async def _aget_image_embeddings(self, img_file_paths: list[ImageType]) -> list[Embedding]:
        return await self._aembed([Content.image(_image(p)) for p in img_file_paths])

    # One core call per list, as DashScopeEmbedding does: requests stay concurrent across
    # embed_batch_size batches (LlamaIndex's loop waits for each batch), a repeated text
    # or image is sent once, and each batch is still reported to callbacks.
    def get_text_embedding_batch(
        self, texts: list[str], show_progress: bool = False, **kwargs: Any
    ) -> list[Embedding]:
        if framework_loop(self, texts):
            return super().get_text_embedding_batch(texts, show_progress=show_progress, **kwargs)
        events = start_batch_events(self, texts)
        vectors = self._embed([Content.text(t) for t in texts])
        end_batch_events(self, events, vectors)
        return vectors

    async def aget_text_embedding_batch(
        self, texts: list[str], show_progress: bool = False, **kwargs: Any
    ) -> list[Embedding]:
        if framework_loop(self, texts):
            return await super().aget_text_embedding_batch(
                texts, show_progress=show_progress, **kwargs
            )
        events = start_batch_events(self, texts)
        vectors = await self._aembed([Content.text(t) for t in texts])
        end_batch_events(self, events, vectors)
        return vectors

    def get_image_embedding_batch(
        self, img_file_paths: list[ImageType], show_progress: bool = False
    ) -> list[Embedding]:
        if not img_file_paths:
            return []
        events = start_batch_events(self, img_file_paths, instrument=False)
        vectors = self._embed([Content.image(_image(p)) for p in img_file_paths])
        end_batch_events(self, events, vectors, instrument=False)
        return vectors

    async def aget_image_embedding_batch(
        self, img_file_paths: list[ImageType], show_progress: bool = False
    ) -> list[Embedding]:
        if not img_file_paths:
            return []
        events = start_batch_events(self, img_file_paths, instrument=False)
        vectors = await self._aembed([Content.image(_image(p)) for p in img_file_paths])
        end_batch_events(self, events, vectors, instrument=False)
        return vectors


def _image(value: Any) -> Any:
    # LlamaIndex's ImageType is a path string or a file-like object (BytesIO).
    if hasattr(value, "read"):
        data = value.read()
        if hasattr(value, "seek"):
            value.seek(0)
        return data
    return value
