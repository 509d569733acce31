"""DashScope multimodal embeddings for LangChain: texts and images in one vector space."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from pydantic import ConfigDict, Field

from dashscope_embed.adapter import MultimodalAdapter
from dashscope_embed.errors import InputProblem, InvalidInputError
from dashscope_embed.models import ModelSpec
from dashscope_embed.multimodal import Content, Fused, ImageInput


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

    def fused_documents(
        self,
        documents: Sequence[Document],
        *,
        image_key: str | None = "image",
        video_key: str | None = None,
        strict: bool = False,
    ) -> FusedDocumentEmbeddings:
        """Embeddings that give each of ``documents`` one fused vector of its text and
        the image (and video) its metadata names, for any vector store::

            products = [Document("red running shoe", metadata={"image": "shoe.jpg"})]
            store = QdrantVectorStore.from_documents(
                products, embeddings.fused_documents(products), ...
            )
            store.similarity_search("shoes for running")  # a plain text query

        A vector store hands its embeddings only the texts, so the returned object looks
        each text up among ``documents``; two documents with the same text and different
        media are refused. A text it was not given is embedded as a text alone, as a
        document without media would be (stores probe the vector size that way: Qdrant
        embeds ``"dummy_text"``); with ``strict=True`` it is refused instead. Queries
        are embedded as by this object."""
        return FusedDocumentEmbeddings(
            self, documents, image_key=image_key, video_key=video_key, strict=strict
        )


class FusedDocumentEmbeddings(Embeddings):
    """A LangChain ``Embeddings`` that embeds known documents as fused text + media items
    (see :meth:`DashScopeMultimodalEmbeddings.fused_documents`)."""

    def __init__(
        self,
        embeddings: DashScopeMultimodalEmbeddings,
        documents: Sequence[Document],
        *,
        image_key: str | None,
        video_key: str | None,
        strict: bool = False,
    ) -> None:
        self.embeddings = embeddings
        self.strict = strict
        self._items: dict[str, Fused | Content] = {}
        problems: list[InputProblem] = []
        for position, document in enumerate(documents):
            try:
                item = _fused_item(document, image_key, video_key)
            except InvalidInputError as exc:
                problems.append(InputProblem(position, str(exc), "documents"))
                continue
            known = self._items.setdefault(document.page_content, item)
            if known != item:
                problems.append(
                    InputProblem(
                        position,
                        "another document has the same text and different media; a vector "
                        "store passes only the text, so the two cannot be told apart",
                        "documents",
                    )
                )
        if problems:
            raise InvalidInputError(problems)

    def _lookup(self, texts: list[str]) -> list[Fused | Content]:
        if self.strict:
            missing = [
                InputProblem(i, "not among the documents given to fused_documents()", "texts")
                for i, text in enumerate(texts)
                if text not in self._items
            ]
            if missing:
                raise InvalidInputError(missing)
        return [self._items.get(text) or Content.text(text) for text in texts]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embeddings.embed_fused(self._lookup(texts))

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await self.embeddings.aembed_fused(self._lookup(texts))

    def embed_query(self, text: str) -> list[float]:
        return self.embeddings.embed_query(text)

    async def aembed_query(self, text: str) -> list[float]:
        return await self.embeddings.aembed_query(text)


def _fused_item(
    document: Document, image_key: str | None, video_key: str | None
) -> Fused | Content:
    metadata: Mapping[str, Any] = document.metadata or {}
    parts: list[Content | str] = [document.page_content] if document.page_content.strip() else []
    if image_key is not None and metadata.get(image_key) is not None:
        parts.append(Content.image(metadata[image_key]))
    if video_key is not None and metadata.get(video_key) is not None:
        parts.append(Content.video(metadata[video_key]))
    if not parts:
        raise InvalidInputError("the document has no text and no media")
    if len(parts) == 1:
        return parts[0] if isinstance(parts[0], Content) else Content.text(parts[0])
    return Fused(*parts)
