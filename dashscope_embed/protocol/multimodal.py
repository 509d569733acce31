"""DashScope's native multimodal embedding endpoint: text, images and video.

Request::

    POST {base}/services/embeddings/multimodal-embedding/multimodal-embedding
    {"model": ..., "input": {"contents": [{"text": ...}, {"image": ...}]}, "parameters": {...}}

A fused item (:class:`~dashscope_embed.multimodal.Fused`) is sent as its model fuses:
its parts as the request's contents with ``enable_fusion`` (qwen3-vl-embedding), one
content object holding each part's key (the dated tongyi snapshots), or its parts as a
request of their own (qwen2.5-vl-embedding fuses every request). ``oss://`` contents
(uploaded files) need the ``X-DashScope-OssResourceResolve: enable`` header.

Reply: ``output.embeddings[]`` with ``index``, ``type`` and ``embedding``; usage in
``input_tokens`` (text) as billed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dashscope_embed.multimodal import Content, Fused, MultimodalItem, contents_of
from dashscope_embed.options import MultimodalParams
from dashscope_embed.protocol.base import Endpoint, register
from dashscope_embed.protocol.common import (
    ParsedBatch,
    check_dense,
    native_embeddings,
    place_rows,
    usage_tokens,
)

MULTIMODAL_PATH = "/services/embeddings/multimodal-embedding/multimodal-embedding"
OSS_RESOLVE_HEADER = "X-DashScope-OssResourceResolve"


def fused_alone(item: MultimodalItem, params: MultimodalParams) -> bool:
    """Whether ``item`` needs a request of its own (its parts are the request)."""
    media = params.spec.media
    fusion = media.fusion if media is not None else "none"
    return fusion == "always" or (fusion == "parameter" and isinstance(item, Fused))


class NativeMultimodalEmbedding(Endpoint[MultimodalItem, MultimodalParams]):
    family = "multimodal-embedding"
    protocol = "native"
    api = "native"
    path = MULTIMODAL_PATH
    own_parameters = frozenset(
        {"dimension", "instruct", "enable_fusion", "fps", "res_level", "max_video_frames"}
    )

    def body(self, items: Sequence[MultimodalItem], params: MultimodalParams) -> dict[str, Any]:
        parameters: dict[str, Any] = {}
        if params.dimension is not None:
            parameters["dimension"] = params.dimension
        options = params.options
        for name in ("instruct", "fps", "res_level", "max_video_frames"):
            if (value := getattr(options, name)) is not None:
                parameters[name] = value
        media = params.spec.media
        fusion = media.fusion if media is not None else "none"
        contents: list[dict[str, str]]
        if fusion == "object":
            contents = [_one_object(item) for item in items]
        elif fusion in ("parameter", "always") and len(items) == 1:
            contents = [part.as_wire() for part in contents_of(items[0])]
            if fusion == "parameter" and isinstance(items[0], Fused):
                parameters["enable_fusion"] = True
        else:
            contents = [_single(item).as_wire() for item in items]
        return {
            "model": params.spec.name,
            "input": {"contents": contents},
            "parameters": parameters,
        }

    def headers(self, items: Sequence[MultimodalItem], params: MultimodalParams) -> dict[str, str]:
        uploaded = any(
            part.value.startswith("oss://") for item in items for part in contents_of(item)
        )
        return {OSS_RESOLVE_HEADER: "enable"} if uploaded else {}

    def reply_limit(self, items: Sequence[MultimodalItem], params: MultimodalParams) -> int:
        return 64 * 1024 + len(items) * (params.expected_dimension * 32 + 256)

    def parse(self, content: bytes, count: int, params: MultimodalParams) -> ParsedBatch:
        body, request_id, rows = native_embeddings(content)
        placed = place_rows(
            [(r.get("index") if isinstance(r, dict) else None, r) for r in rows], count, request_id
        )
        dense = check_dense(
            [r.get("embedding") for r in placed], params.expected_dimension, request_id
        )
        tokens = usage_tokens(
            body.get("usage"), "input_tokens", "total_tokens", request_id=request_id
        )
        return ParsedBatch(dense=dense, sparse=None, total_tokens=tokens, request_id=request_id)


def _one_object(item: MultimodalItem) -> dict[str, str]:
    merged: dict[str, str] = {}
    for part in contents_of(item):
        merged.update(part.as_wire())
    return merged


def _single(item: MultimodalItem) -> Content:
    if isinstance(item, Fused):  # checked before sending; a codec never guesses
        raise AssertionError("a fused item reached a model that does not fuse")
    return item


# The service has no OpenAI-compatible multimodal embedding ("Unsupported model ... for
# OpenAI compatibility mode"): a client set to that protocol uses this endpoint too.
NATIVE_MULTIMODAL = register(NativeMultimodalEmbedding(), protocols=("native", "openai-compatible"))
