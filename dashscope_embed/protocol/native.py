"""DashScope's native text-embedding endpoint (every feature: text_type, instruct, sparse).

Request::

    POST {base}/services/embeddings/text-embedding/text-embedding
    {"model": ..., "input": {"texts": [...]}, "parameters": {...}}

Reply::

    {"output": {"embeddings": [{"text_index": 0, "embedding": [...],
                                "sparse_embedding": [{"index", "value", "token"}]}]},
     "usage": {"total_tokens": N}, "request_id": "..."}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dashscope_embed.errors import BadResponseError
from dashscope_embed.options import TextParams
from dashscope_embed.protocol.arrays import DenseReplyLayout
from dashscope_embed.protocol.base import Endpoint, register
from dashscope_embed.protocol.common import (
    ParsedBatch,
    check_dense,
    native_embeddings,
    parse_sparse,
    place_rows,
    reply_byte_limit,
    usage_tokens,
)
from dashscope_embed.types import SparseEmbedding

TEXT_EMBEDDING_PATH = "/services/embeddings/text-embedding/text-embedding"


class NativeTextEmbedding(Endpoint[str, TextParams]):
    family = "text-embedding"
    protocol = "native"
    api = "native"
    path = TEXT_EMBEDDING_PATH
    own_parameters = frozenset({"text_type", "dimension", "output_type", "instruct"})
    dense_layout = DenseReplyLayout(("output", "embeddings"), "text_index", ("total_tokens",))

    def body(self, items: Sequence[str], params: TextParams) -> dict[str, Any]:
        return {
            "model": params.spec.name,
            "input": {"texts": list(items)},
            "parameters": build_parameters(params),
        }

    def reply_limit(self, items: Sequence[str], params: TextParams) -> int:
        return reply_byte_limit(items, params)

    def parse(self, content: bytes, count: int, params: TextParams) -> ParsedBatch:
        return parse_reply(content, count, params)


NATIVE_TEXT = register(NativeTextEmbedding())


def build_parameters(params: TextParams) -> dict[str, Any]:
    """Only what is set and what the model understands; nothing wrapped or renamed."""
    spec = params.spec
    parameters: dict[str, Any] = {}
    if params.text_type is not None and spec.supports_text_type:
        parameters["text_type"] = params.text_type
    if params.dimension is not None:
        parameters["dimension"] = params.dimension
    if params.output_type != "dense":
        parameters["output_type"] = params.output_type
    if params.instruct is not None:
        parameters["instruct"] = params.instruct
    return parameters


def parse_reply(content: bytes, expected_rows: int, params: TextParams) -> ParsedBatch:
    """Parse a 2xx native reply; rows placed by ``text_index`` and checked complete."""
    body, request_id, embeddings = native_embeddings(content)
    rows: list[tuple[Any, Any]] = []
    for item in embeddings:
        if not isinstance(item, dict):
            raise BadResponseError(
                f"embedding row is not an object: {item!r:.80}", request_id=request_id
            )
        rows.append((item.get("text_index"), item))
    items = place_rows(rows, expected_rows, request_id)

    dense: list[list[float]] | None = None
    if params.wants_dense:
        dense = check_dense(
            [item.get("embedding") for item in items], params.expected_dimension, request_id
        )
    sparse: list[SparseEmbedding] | None = None
    if params.wants_sparse:
        sparse = [
            parse_sparse(item.get("sparse_embedding"), row, request_id)
            for row, item in enumerate(items)
        ]
    return ParsedBatch(
        dense=dense,
        sparse=sparse,
        total_tokens=usage_tokens(body.get("usage"), "total_tokens", request_id=request_id),
        request_id=request_id,
    )
