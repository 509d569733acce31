"""DashScope's OpenAI-compatible embeddings protocol (dense vectors only).

Request: ``POST {base}/embeddings`` with ``{"model", "input": [...], "dimensions",
"encoding_format"}``. The endpoint carries neither ``text_type`` nor ``instruct`` nor
sparse output; asking for them is an error raised before sending (use the native
protocol). Replies are parsed whether the service honours ``encoding_format="base64"``
or always sends floats.
"""

from __future__ import annotations

import base64
import binascii
import sys
from array import array
from collections.abc import Sequence
from typing import Any

from dashscope_embed.errors import BadResponseError, InvalidInputError
from dashscope_embed.options import TextParams
from dashscope_embed.protocol.arrays import DenseReplyLayout
from dashscope_embed.protocol.base import Endpoint, register
from dashscope_embed.protocol.common import (
    ParsedBatch,
    check_dense,
    place_rows,
    reply_byte_limit,
    reply_object,
    usage_tokens,
)

EMBEDDINGS_PATH = "/embeddings"


class CompatibleTextEmbedding(Endpoint[str, TextParams]):
    family = "text-embedding"
    protocol = "openai-compatible"
    api = "compatible"
    path = EMBEDDINGS_PATH
    parameters_key = None  # extra_parameters go at the top level, as OpenAI's extra_body
    own_parameters = frozenset({"model", "input", "dimensions", "encoding_format"})
    dense_layout = DenseReplyLayout(("data",), "index", ("total_tokens", "prompt_tokens"))

    def check(self, params: TextParams) -> None:
        super().check(params)
        check_supported(params)

    def body(self, items: Sequence[str], params: TextParams) -> dict[str, Any]:
        return build_body(items, params)

    def reply_limit(self, items: Sequence[str], params: TextParams) -> int:
        return reply_byte_limit(items, params)

    def parse(self, content: bytes, count: int, params: TextParams) -> ParsedBatch:
        return parse_reply(content, count, params)


COMPATIBLE_TEXT = register(CompatibleTextEmbedding())


def check_supported(params: TextParams) -> None:
    """Refuse what this protocol cannot carry, naming the parameter and the fix."""
    unsupported = []
    if params.text_type is not None:
        unsupported.append(f"text_type={params.text_type!r}")
    if params.instruct is not None:
        unsupported.append("instruct")
    if params.output_type != "dense":
        unsupported.append(f"output_type={params.output_type!r}")
    if unsupported:
        raise InvalidInputError(
            f"the OpenAI-compatible protocol cannot send {', '.join(unsupported)}; use "
            "protocol='native' (the default), which supports every parameter"
        )
    if not params.spec.openai_compatible:
        raise InvalidInputError(
            f"model {params.spec.name!r} is not served by the OpenAI-compatible endpoint; "
            "use protocol='native'"
        )


def build_body(
    texts: Sequence[str], params: TextParams, encoding_format: str = "float"
) -> dict[str, Any]:
    """The OpenAI-compatible body for one batch of texts."""
    body: dict[str, Any] = {
        "model": params.spec.name,
        "input": list(texts),
        "encoding_format": encoding_format,
    }
    if params.dimension is not None:
        body["dimensions"] = params.dimension
    return body


def parse_reply(content: bytes, expected_rows: int, params: TextParams) -> ParsedBatch:
    """Parse a 2xx reply; rows placed by ``index``; floats or base64 float32 accepted."""
    body, request_id = reply_object(content)
    data = body.get("data")
    if not isinstance(data, list):
        raise BadResponseError("reply has no data list", request_id=request_id)
    rows = []
    for item in data:
        if not isinstance(item, dict):
            raise BadResponseError(
                f"data row is not an object: {item!r:.80}", request_id=request_id
            )
        rows.append((item.get("index"), item.get("embedding")))
    vectors = place_rows(rows, expected_rows, request_id)
    decoded = [
        _decode_base64(v, row, request_id) if isinstance(v, str) else v
        for row, v in enumerate(vectors)
    ]
    dense = check_dense(decoded, params.expected_dimension, request_id)
    tokens = usage_tokens(body.get("usage"), "total_tokens", "prompt_tokens", request_id=request_id)
    return ParsedBatch(dense=dense, sparse=None, total_tokens=tokens, request_id=request_id)


def _decode_base64(value: str, row: int, request_id: str | None) -> list[float]:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadResponseError(
            f"row {row}: embedding is not valid base64", request_id=request_id
        ) from None
    if len(raw) % 4:
        raise BadResponseError(
            f"row {row}: base64 embedding is {len(raw)} bytes, not a whole number of float32",
            request_id=request_id,
        )
    floats = array("f")
    floats.frombytes(raw)
    if sys.byteorder == "big":
        floats.byteswap()
    return floats.tolist()
