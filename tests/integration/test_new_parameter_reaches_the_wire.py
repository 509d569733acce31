"""A per-call parameter added in one place reaches the wire from every entry point.

The multimodal ``instruct`` was added as a field of ``MultimodalEmbeddingOptions`` (with
its check) and one line of the multimodal codec; nothing else. These tests hold every
entry point to it: the core client, LlamaIndex's and LangChain's multimodal classes,
sync and async; queries carry it, documents do not; a model that does not take it is
refused before anything is sent.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from pydantic import ValidationError

from dashscope_embed import DashScopeClient, InvalidInputError
from dashscope_embed.emulator import Emulator
from dashscope_embed.multimodal import Content
from langchain_ext import DashScopeMultimodalEmbeddings
from llama_index_ext import DashScopeMultiModalEmbedding

INSTRUCT = "Find the product photo that matches the description"
PATH = "multimodal-embedding"


@pytest.fixture(autouse=True)
def _connect(dashscope_emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", dashscope_emulator.api_key)
    monkeypatch.setenv("DASHSCOPE_BASE_URL", dashscope_emulator.base_url)


def parameters_sent(emu: Emulator) -> list[dict[str, Any]]:
    return [r["json"]["parameters"] for r in emu.requests(PATH)]


def test_the_core_client_sends_it(dashscope_emulator: Emulator) -> None:
    client = DashScopeClient(
        api_key=dashscope_emulator.api_key, base_url=dashscope_emulator.base_url
    )
    client.embed_multimodal(
        [Content.text("red running shoes")], model="qwen3-vl-embedding", instruct=INSTRUCT
    )
    assert parameters_sent(dashscope_emulator) == [{"instruct": INSTRUCT}]
    with pytest.raises(InvalidInputError, match="does not take an instruct"):
        client.embed_multimodal([Content.text("x")], instruct=INSTRUCT)  # multimodal-v1


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_llama_index_sends_it_with_queries_only(dashscope_emulator: Emulator, mode: str) -> None:
    model = DashScopeMultiModalEmbedding(
        model_name="qwen3-vl-embedding", instruct=INSTRUCT, dimension=256
    )
    if mode == "sync":
        model.get_query_embedding("red running shoes")
        model.get_image_embedding("https://example.com/photos/red_shoes.jpg")
    else:

        async def both() -> None:
            await model.aget_query_embedding("red running shoes")
            await model.aget_image_embedding("https://example.com/photos/red_shoes.jpg")

        asyncio.run(both())
    sent = parameters_sent(dashscope_emulator)
    assert {"dimension": 256, "instruct": INSTRUCT} in sent  # the query
    assert {"dimension": 256} in sent  # the image, a document
    with pytest.raises(ValidationError, match="does not take an instruct"):
        DashScopeMultiModalEmbedding(instruct=INSTRUCT)  # multimodal-embedding-v1


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_langchain_sends_it_with_queries_only(dashscope_emulator: Emulator, mode: str) -> None:
    embeddings = DashScopeMultimodalEmbeddings(model="qwen3-vl-embedding", instruct=INSTRUCT)
    if mode == "sync":
        embeddings.embed_query("red running shoes")
        embeddings.embed_image(["https://example.com/photos/red_shoes.jpg"])
    else:

        async def both() -> None:
            await embeddings.aembed_query("red running shoes")
            await embeddings.aembed_image(["https://example.com/photos/red_shoes.jpg"])

        asyncio.run(both())
    sent = parameters_sent(dashscope_emulator)
    assert {"instruct": INSTRUCT} in sent and {} in sent
    with pytest.raises(ValidationError, match="does not take an instruct"):
        DashScopeMultimodalEmbeddings(instruct=INSTRUCT)


def test_the_instruction_changes_query_vectors(dashscope_emulator: Emulator) -> None:
    plain = DashScopeMultimodalEmbeddings(model="qwen3-vl-embedding")
    instructed = DashScopeMultimodalEmbeddings(model="qwen3-vl-embedding", instruct=INSTRUCT)
    assert plain.embed_query("red running shoes") != instructed.embed_query("red running shoes")
    assert plain.embed_documents(["red running shoes"]) == instructed.embed_documents(
        ["red running shoes"]
    )


@pytest.mark.parametrize("protocol", ["native", "openai-compatible"])
def test_extra_parameters_are_merged_last_into_what_is_sent(
    dashscope_emulator: Emulator, protocol: str
) -> None:
    """For what the service adds before this package does: sent as given."""
    client = DashScopeClient(protocol=protocol)  # key and URL from the environment
    client.embed(["x"], dimension=256, extra_parameters={"future_flag": True})
    (sent,) = dashscope_emulator.requests("embedding")
    body = sent["json"]
    where = body["parameters"] if protocol == "native" else body
    assert where["future_flag"] is True
    # One the package sets itself cannot be overridden: the reply would not match what
    # the parser checks it against. Refused before anything is sent.
    clash = "dimension" if protocol == "native" else "dimensions"
    with pytest.raises(InvalidInputError, match=f"may not set '{clash}'"):
        client.embed(["y"], extra_parameters={clash: 512})
    assert len(dashscope_emulator.requests("embedding")) == 1


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ({"weights": [0.5, float("nan")]}, "extra_parameters['weights'][1] is nan"),
        ({"cutoff": float("inf")}, "extra_parameters['cutoff'] is inf"),
        ({"tags": {"a", "b"}}, "extra_parameters['tags'] is a set"),
        ({"by_id": {1: "x"}}, "extra_parameters['by_id'] has the key 1"),
    ],
)
def test_extra_parameters_json_cannot_carry_are_refused_by_path_before_sending(
    dashscope_emulator: Emulator, extra: dict[str, Any], where: str
) -> None:
    """Encoders differ on what JSON lacks (one writes NaN, which the service cannot
    parse; another writes null, which changes the parameter), so neither is sent."""
    client = DashScopeClient()
    with pytest.raises(InvalidInputError, match=re.escape(where)):
        client.embed(["x"], extra_parameters=extra)
    assert dashscope_emulator.requests("embedding") == []


def test_request_bodies_say_what_the_texts_say(dashscope_emulator: Emulator) -> None:
    """The request encoder writes UTF-8 as is: quotes, backslashes, control characters,
    line and paragraph separators and astral characters reach the service unchanged."""
    texts = ['say "hi"\\n', "tab\there\x01\x1f", "\u2028\u2029 sep", "😀 𝔘𝔫𝔦", "中文 ü"]
    DashScopeClient().embed(texts)
    (sent,) = dashscope_emulator.requests("embedding")
    assert sent["json"]["input"]["texts"] == texts
