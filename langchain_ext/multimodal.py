"""DashScope multimodal embeddings for LangChain: texts and images in one vector space."""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.embeddings import Embeddings
from pydantic import ConfigDict, Field

from dashscope_embed.adapter import MultimodalAdapter
from dashscope_embed.models import ModelSpec
from dashscope_embed.multimodal import Content, ImageInput


class DashScopeMultimodalEmbeddings(MultimodalAdapter, Embeddings):
    """Texts and images (paths, URLs, bytes, ``data:`` URIs) in one space, for
    text-to-image search. ``embed_query`` gets the query-only options (an instruction);
    ``embed_documents`` and ``embed_image`` embed the corpus. Every image is checked
    against the service's limits before anything is sent.

    Example::

        from langchain_ext import DashScopeMultimodalEmbeddings
        embeddings = DashScopeMultimodalEmbeddings()
        images = embeddings.embed_image(["cat.png", "https://example.com/dog.jpg"])
        query = embeddings.embed_query("a cat asleep on a sofa")
    """

    # model_name / model_spec are ours, not pydantic's: no protected-namespace warning
    # on pydantic < 2.10, whatever the framework base class configures.
    model_config = ConfigDict(protected_namespaces=())

    model: str = Field(default="multimodal-embedding-v1", description="DashScope model id.")
    model_spec: ModelSpec | None = Field(
        default=None, description="Limits of a model the table does not know yet."
    )

    def _model_ref(self) -> str | ModelSpec:
        return self.model_spec or self.model

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_contents([Content.text(t) for t in texts], "document")

    def embed_query(self, text: str) -> list[float]:
        return self.embed_contents([Content.text(text)], "query")[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await self.aembed_contents([Content.text(t) for t in texts], "document")

    async def aembed_query(self, text: str) -> list[float]:
        return (await self.aembed_contents([Content.text(text)], "query"))[0]

    def embed_image(self, uris: Sequence[ImageInput]) -> list[list[float]]:
        """Embed images as corpus entries."""
        return self.embed_contents([Content.image(uri) for uri in uris], "document")

    async def aembed_image(self, uris: Sequence[ImageInput]) -> list[list[float]]:
        return await self.aembed_contents([Content.image(uri) for uri in uris], "document")
