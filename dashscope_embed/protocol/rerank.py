"""The rerank endpoints: the OpenAI-style one and the native one.

OpenAI-style (``qwen3-rerank``)::

    POST {host}/compatible-api/v1/reranks
    {"model", "query", "documents": [...], "top_n", "instruct"}
    -> {"results": [{"index", "relevance_score", "document"?}], "usage": {...}, "id"}

Native (``gte-rerank-v2``, ``qwen3-vl-rerank``)::

    POST {base}/services/rerank/text-rerank/text-rerank
    {"model", "input": {"query", "documents"}, "parameters": {"top_n", ...}}
    -> {"output": {"results": [...]}, "usage": {"total_tokens"}, "request_id"}

Each request asks for every document's score (``top_n`` = its document count): the
client merges the scores of several requests into one ranking and applies the caller's
``top_n`` after that. Documents are never sent back (the client has them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dashscope_embed.errors import BadResponseError
from dashscope_embed.multimodal import Content
from dashscope_embed.options import RerankParams
from dashscope_embed.protocol.base import Endpoint, register
from dashscope_embed.protocol.common import place_rows, reply_object, usage_tokens

NATIVE_RERANK_PATH = "/services/rerank/text-rerank/text-rerank"
OPENAI_RERANK_PATH = "/reranks"

Document = str | Content


@dataclass(frozen=True, slots=True)
class ParsedScores:
    """One request's scores, by the document's position in that request."""

    scores: list[float]
    total_tokens: int
    request_id: str | None


def wire_document(document: Document) -> Any:
    """A text as a string; an image or video as ``{"image": ...}`` / ``{"video": ...}``."""
    if isinstance(document, Content):
        return document.value if document.modality == "text" else document.as_wire()
    return document


def echo_limit(items: Sequence[Document]) -> int:
    """The most a reply may hold: a score per document and the document echoed back
    (6 bytes a character covers JSON's ``\\uXXXX`` escapes)."""
    echoed = sum(len(str(wire_document(d))) for d in items)
    return 64 * 1024 + 256 * len(items) + 6 * echoed


def parse_results(results: Any, count: int, request_id: str | None) -> list[float]:
    """Every document's score, placed by ``index``; a missing, repeated or non-finite
    one is a :class:`BadResponseError` (the merged ranking would be wrong)."""
    if not isinstance(results, list):
        raise BadResponseError("reply has no results list", request_id=request_id)
    rows = []
    for item in results:
        if not isinstance(item, dict):
            raise BadResponseError(f"result is not an object: {item!r:.80}", request_id=request_id)
        score: Any = item.get("relevance_score")
        if type(score) not in (float, int) or not math.isfinite(score):
            raise BadResponseError(
                f"result {item.get('index')!r}: relevance_score is {score!r:.40}, not a finite "
                "number",
                request_id=request_id,
            )
        rows.append((item.get("index"), float(score)))
    return place_rows(rows, count, request_id)


class OpenAIRerank(Endpoint[Document, RerankParams]):
    family = "rerank-openai"
    protocol = "native"
    api = "compatible-api"
    path = OPENAI_RERANK_PATH
    parameters_key = None
    own_parameters = frozenset({"model", "query", "documents", "top_n", "instruct"})

    def body(self, items: Sequence[Document], params: RerankParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": params.spec.name,
            "query": params.query,
            "documents": [wire_document(d) for d in items],
            "top_n": len(items),
        }
        if params.instruct is not None:
            body["instruct"] = params.instruct
        return body

    def reply_limit(self, items: Sequence[Document], params: RerankParams) -> int:
        return echo_limit(items)  # this endpoint echoes each document back

    def parse(self, content: bytes, count: int, params: RerankParams) -> ParsedScores:
        body, request_id = reply_object(content)
        scores = parse_results(body.get("results"), count, request_id)
        tokens = usage_tokens(body.get("usage"), "total_tokens", request_id=request_id)
        return ParsedScores(scores, tokens, request_id)


class NativeRerank(Endpoint[Document, RerankParams]):
    family = "rerank-native"
    protocol = "native"
    api = "native"
    path = NATIVE_RERANK_PATH
    own_parameters = frozenset({"top_n", "return_documents", "instruct"})

    def body(self, items: Sequence[Document], params: RerankParams) -> dict[str, Any]:
        parameters: dict[str, Any] = {"top_n": len(items), "return_documents": False}
        if params.instruct is not None:
            parameters["instruct"] = params.instruct
        return {
            "model": params.spec.name,
            "input": {"query": params.query, "documents": [wire_document(d) for d in items]},
            "parameters": parameters,
        }

    def reply_limit(self, items: Sequence[Document], params: RerankParams) -> int:
        return echo_limit(items)  # return_documents is false, but a server may echo anyway

    def parse(self, content: bytes, count: int, params: RerankParams) -> ParsedScores:
        body, request_id = reply_object(content)
        output = body.get("output")
        results = output.get("results") if isinstance(output, dict) else None
        scores = parse_results(results, count, request_id)
        tokens = usage_tokens(body.get("usage"), "total_tokens", request_id=request_id)
        return ParsedScores(scores, tokens, request_id)


# The rerank endpoint is the model's, whatever protocol the client uses for embeddings.
OPENAI_RERANK = register(OpenAIRerank(), protocols=("native", "openai-compatible"))
NATIVE_RERANK = register(NativeRerank(), protocols=("native", "openai-compatible"))
