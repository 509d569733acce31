"""Both frameworks on the current multimodal models: text-to-image retrieval with
LlamaIndex's MultiModalVectorStoreIndex over Qdrant local, and fused product documents
in LangChain vector stores, with plain text queries finding them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore
from llama_index.core import StorageContext
from llama_index.core.indices import MultiModalVectorStoreIndex
from llama_index.core.schema import ImageNode, TextNode
from qdrant_client import AsyncQdrantClient, QdrantClient

from dashscope_embed.emulator import Emulator
from dashscope_embed.errors import InvalidInputError
from dashscope_embed.multimodal import Content, Fused
from langchain_ext import DashScopeMultimodalEmbeddings
from llama_index_ext import DashScopeMultiModalEmbedding
from tests.integration.media import png, write
from tests.optional import require

PICTURES = {
    "red_sports_car.png": ("red sports car on a race track", (255, 0, 0)),
    "blue_sailing_boat.png": ("blue sailing boat at sea", (0, 0, 255)),
    "green_oak_tree.png": ("green oak tree in a meadow", (0, 255, 0)),
    "yellow_school_bus.png": ("yellow school bus", (255, 255, 0)),
}
FIND_PHOTO = "Find the photo that matches the description"


@pytest.fixture
def connect(dashscope_emulator: Emulator) -> dict[str, Any]:
    return {"api_key": dashscope_emulator.api_key, "base_url": dashscope_emulator.base_url}


@pytest.fixture
def pictures(tmp_path: Path) -> dict[str, Path]:
    return {
        caption: write(tmp_path / name, png(caption, colour=colour))
        for name, (caption, colour) in PICTURES.items()
    }


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_llama_index_text_to_image_search_over_qdrant_local(
    mode: str,
    connect: dict[str, Any],
    pictures: dict[str, Path],
    tmp_path: Path,
    dashscope_emulator: Emulator,
) -> None:
    from llama_index.vector_stores.qdrant import QdrantVectorStore

    dashscope_emulator.configure(latency=0.05)
    model = DashScopeMultiModalEmbedding(
        **connect, model_name="qwen3-vl-embedding", dimension=512, instruct=FIND_PHOTO
    )
    if mode == "async":  # Qdrant's local mode serves async calls from an async client
        clients: dict[str, Any] = {"aclient": AsyncQdrantClient(path=str(tmp_path / "qdrant"))}
    else:
        clients = {"client": QdrantClient(path=str(tmp_path / "qdrant"))}
    storage = StorageContext.from_defaults(
        vector_store=QdrantVectorStore(collection_name="texts", **clients),
        image_store=QdrantVectorStore(collection_name="images", **clients),
    )
    # Photos as image nodes with their file metadata (a node without any text or
    # metadata is skipped by LlamaIndex as "missing content").
    documents: list[Any] = [
        ImageNode(image_path=str(path), metadata={"file_name": path.name})
        for path in pictures.values()
    ]
    documents.append(TextNode(text="Opening hours: nine to five."))
    index = MultiModalVectorStoreIndex(
        documents,
        storage_context=storage,
        embed_model=model,
        image_embed_model=model,
        use_async=mode == "async",
    )
    indexing = dashscope_emulator.requests("multimodal-embedding")
    assert all(r["json"]["model"] == "qwen3-vl-embedding" for r in indexing)
    image_requests = [r for r in indexing if "image" in r["json"]["input"]["contents"][0]]
    assert len(image_requests) == 1  # four pictures, one request: the core batches to 20
    assert "instruct" not in image_requests[0]["json"]["parameters"]  # documents: none
    retriever = index.as_retriever(image_similarity_top_k=1)
    for caption, path in pictures.items():
        query = f"a photo of a {caption.split(' ')[1]} {caption.split(' ')[2]}"
        if mode == "async":
            hits = asyncio.run(retriever.atext_to_image_retrieve(query))
        else:
            hits = retriever.text_to_image_retrieve(query)
        assert [Path(hit.node.image_path).name for hit in hits] == [path.name], query  # type: ignore[attr-defined]
    queries = dashscope_emulator.requests("multimodal-embedding")[len(indexing) :]
    assert queries and all(r["json"]["parameters"]["instruct"] == FIND_PHOTO for r in queries)


def test_llama_index_embeds_fused_documents(
    connect: dict[str, Any], pictures: dict[str, Path], dashscope_emulator: Emulator
) -> None:
    model = DashScopeMultiModalEmbedding(**connect, model_name="qwen3-vl-embedding", dimension=256)
    items = [Fused(caption, Content.image(path)) for caption, path in pictures.items()]
    vectors = model.embed_fused(items)
    sent = dashscope_emulator.requests("multimodal-embedding")
    assert len(sent) == 4 and all(r["json"]["parameters"]["enable_fusion"] is True for r in sent)
    assert asyncio.run(model.aembed_fused(items)) == vectors
    query = np.asarray(model.get_query_embedding("a sailing boat"))
    assert int(np.argmax(np.asarray(vectors) @ query)) == 1


@pytest.mark.parametrize(
    "model", ["qwen3-vl-embedding", "tongyi-embedding-vision-flash", "multimodal-embedding-v1"]
)
def test_langchain_embed_image_on_each_model(
    model: str, connect: dict[str, Any], pictures: dict[str, Path]
) -> None:
    embeddings = DashScopeMultimodalEmbeddings(**connect, model=model)
    images = embeddings.embed_image([str(p) for p in pictures.values()])
    assert len(images) == len(PICTURES)
    assert asyncio.run(embeddings.aembed_image([str(p) for p in pictures.values()])) == images
    query = np.asarray(embeddings.embed_query("a yellow bus for school"))
    assert int(np.argmax(np.asarray(images) @ query)) == 3


PRODUCTS = [
    ("Trail running shoe, breathable mesh", "red running shoe", (255, 0, 0)),
    ("Wool beanie for winter", "blue knitted hat", (0, 0, 255)),
    ("Leather messenger bag", "brown leather bag", (120, 60, 0)),
]


@pytest.mark.parametrize("store_kind", ["in-memory", "qdrant"])
def test_langchain_fused_product_documents_in_a_vector_store(
    store_kind: str,
    connect: dict[str, Any],
    tmp_path: Path,
    dashscope_emulator: Emulator,
) -> None:
    documents = [
        Document(
            title, metadata={"image": str(write(tmp_path / f"p{i}.png", png(words, colour=c)))}
        )
        for i, (title, words, c) in enumerate(PRODUCTS)
    ]
    embeddings = DashScopeMultimodalEmbeddings(
        **connect, model="tongyi-embedding-vision-plus-2026-03-06", dimension=256
    )
    fused = embeddings.fused_documents(documents)
    if store_kind == "qdrant":
        require("langchain_qdrant")
        from langchain_qdrant import QdrantVectorStore

        store: Any = QdrantVectorStore.from_documents(
            documents, fused, path=str(tmp_path / "qdrant"), collection_name="products"
        )
    else:
        store = InMemoryVectorStore.from_documents(documents, fused)
    sent = [r["json"] for r in dashscope_emulator.requests("multimodal-embedding")]
    (body,) = [b for b in sent if len(b["input"]["contents"]) == 3]  # Qdrant also probes
    assert [sorted(c) for c in body["input"]["contents"]] == [["image", "text"]] * 3
    # The photo's words are not in the title: the fused vector found it through the image.
    hit = store.similarity_search("a red shoe", k=1)[0]
    assert hit.page_content == PRODUCTS[0][0]
    hit = store.similarity_search("knitted hat", k=1)[0]
    assert hit.page_content == PRODUCTS[1][0]


def test_langchain_fused_documents_refuse_what_they_cannot_tell_apart(
    connect: dict[str, Any], tmp_path: Path
) -> None:
    embeddings = DashScopeMultimodalEmbeddings(**connect, model="qwen3-vl-embedding")
    a, b = write(tmp_path / "a.png", png("a")), write(tmp_path / "b.png", png("b"))
    with pytest.raises(InvalidInputError, match=r"documents\[1\]: another document has the same"):
        embeddings.fused_documents(
            [
                Document("same", metadata={"image": str(a)}),
                Document("same", metadata={"image": str(b)}),
            ]
        )
    with pytest.raises(InvalidInputError, match=r"documents\[0\]: .*no such file"):
        embeddings.fused_documents([Document("x", metadata={"image": str(tmp_path / "none.png")})])
    known = [Document("known", metadata={"image": str(a)})]
    strict = embeddings.fused_documents(known, strict=True)
    with pytest.raises(InvalidInputError, match=r"texts\[1\]: not among the documents"):
        strict.embed_documents(["known", "unknown"])
    # Not strict: a text it was not given is a document without media (a size probe).
    lenient = embeddings.fused_documents(known)
    assert lenient.embed_documents(["unknown"]) == embeddings.embed_documents(["unknown"])
    assert lenient.embed_documents(["known"]) == embeddings.embed_fused(
        [Fused("known", Content.image(a))]
    )
