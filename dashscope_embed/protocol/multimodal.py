"""DashScope's native multimodal embedding endpoint: text, images and video.

Request::

    POST {base}/services/embeddings/multimodal-embedding/multimodal-embedding
    {"model": ..., "input": {"contents": [{"text": ...}, {"image": ...}]}, "parameters": {...}}

Reply: ``output.embeddings[]`` with ``index``, ``type`` and ``embedding``; usage in
``input_tokens`` (text) as billed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dashscope_embed.multimodal import Content
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


class NativeMultimodalEmbedding(Endpoint[Content, MultimodalParams]):
    family = "multimodal-embedding"
    protocol = "native"
    api = "native"
    path = MULTIMODAL_PATH
    own_parameters = frozenset({"dimension", "instruct"})

    def body(self, items: Sequence[Content], params: MultimodalParams) -> dict[str, Any]:
        parameters: dict[str, Any] = {}
        if params.dimension is not None:
            parameters["dimension"] = params.dimension
        if params.options.instruct is not None:
            parameters["instruct"] = params.options.instruct
        return {
            "model": params.spec.name,
            "input": {"contents": [c.as_wire() for c in items]},
            "parameters": parameters,
        }

    def reply_limit(self, items: Sequence[Content], params: MultimodalParams) -> int:
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


NATIVE_MULTIMODAL = register(NativeMultimodalEmbedding())
