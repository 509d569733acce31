"""The emulator as a self-hosted server: vLLM, SGLang, TEI, Ollama or Infinity (§10, §12.3).

With ``self_hosted="vllm"`` (etc.) the emulator answers as that server does, serving the
open Qwen3-Embedding and Qwen3-Reranker models: its paths, request and reply shapes, and
refusals (vLLM's "does not support matryoshka representation" for ``dimensions`` unless
started with ``is_matryoshka``; TEI's batch-size limit; Ollama's "model not found"). The
DashScope paths are not served, as on a real GPU box.

The open model applies no instruction itself: a query must arrive as
``Instruct: {task}\\nQuery:{query}`` and a document as its bare text. The emulator embeds
each text as what it is (a query with its task, or a document), so a client that formats
wrongly gets the wrong vectors, as it would from the real model, and counts both kinds
(``instructed_texts``, ``plain_texts``) and every request field the real server would
ignore (``ignored_fields``: a DashScope ``text_type`` or ``instruct`` sent as a field).
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import numpy as np

from dashscope_embed.emulator import vectors
from dashscope_embed.emulator.facts import OPEN_MODELS, TEI_MAX_BATCH, OpenModel
from dashscope_embed.emulator.http import Request, Response
from dashscope_embed.emulator.service import Reply, Service, ServiceError, parse_json_object
from dashscope_embed.emulator.state import embedding_key

_QUERY = re.compile(r"\AInstruct: (?P<task>.*?)\nQuery:(?P<query>.*)\Z", re.DOTALL)
_KNOWN_FIELDS = {
    "openai": {"model", "input", "dimensions", "encoding_format", "user", "truncate_prompt_tokens"},
    "tei": {"inputs", "normalize", "truncate", "truncation_direction", "prompt_name", "dimensions"},
    "ollama": {"model", "input", "truncate", "dimensions", "keep_alive", "options"},
    "cohere": {"model", "query", "documents", "top_n", "return_documents", "instruct"},
    "tei-rerank": {"query", "texts", "raw_scores", "return_text", "truncate"},
}


class ServerError(Exception):
    """A refusal, rendered in the server's own error shape."""

    def __init__(self, status: int, message: str, kind: str = "BadRequestError") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


async def serve(service: Service, request: Request) -> Reply:
    """Answer one request as the configured server."""
    server = service.settings.self_hosted
    assert server is not None
    state = service.state
    with state.lock:
        state.stats.requests += 1
        state.stats.by_endpoint[f"{request.method} {request.path}"] += 1
    state.log_request(request.method, request.path, request.headers, request.body, request.query)
    try:
        _authenticate(service, request)
        route = _ROUTES.get(server, {}).get((request.method, request.path))
        if route is None:
            raise ServerError(404, f"Not Found: {request.method} {request.path}", "NotFoundError")
        reply: Reply = await route(service, request)
        return reply
    except ServiceError as error:  # faults and throttling from the shared admission path
        kind = "TooManyRequests" if error.status == 429 else "InternalServerError"
        return Reply(_render(server, ServerError(error.status, error.message, kind), error.headers))
    except ServerError as error:
        return Reply(_render(server, error))


def _authenticate(service: Service, request: Request) -> None:
    header = request.headers.get("authorization")
    if header is not None:
        with service.state.lock:
            service.state.stats.authorized_requests += 1
    token = service.settings.server_token
    if token is not None and header != f"Bearer {token}":
        raise ServerError(401, "Unauthorized", "AuthenticationError")


def _render(server: str, error: ServerError, headers: dict[str, str] | None = None) -> Response:
    body: Any
    if server == "tei":
        body = {"error": error.message, "error_type": error.kind}
    elif server == "ollama":
        body = {"error": error.message}
    else:  # vLLM, SGLang and Infinity answer OpenAI-style
        body = {
            "object": "error",
            "message": error.message,
            "type": error.kind,
            "param": None,
            "code": error.status,
        }
    return Response.json(error.status, body, headers)


# ---------------------------------------------------------------------- embeddings
def _model(name: Any, kind: str, server: str) -> OpenModel:
    model = OPEN_MODELS.get(name) if isinstance(name, str) else None
    if model is None or model.kind != kind:
        if server == "ollama":
            raise ServerError(404, f'model "{name}" not found, try pulling it first')
        raise ServerError(404, f"The model `{name}` does not exist.", "NotFoundError")
    return model


def _texts(value: Any, field: str) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ServerError(400, f"{field} must be a string or a non-empty list of strings")
    return texts


def _ignored(service: Service, body: dict[str, Any], shape: str) -> None:
    unknown = [key for key in body if key not in _KNOWN_FIELDS[shape]]
    if unknown:
        with service.state.lock:
            service.state.stats.ignored_fields.update(unknown)


def _dimension(service: Service, model: OpenModel, dimensions: Any) -> int:
    """The size to return; a server that cannot honour ``dimensions`` refuses (vLLM,
    SGLang without is_matryoshka) or ignores it (TEI)."""
    server = service.settings.self_hosted
    if dimensions is None or server == "tei":
        return model.native_dimension
    if server in ("vllm", "sglang") and not service.settings.matryoshka:
        raise ServerError(
            400,
            f'Model "{model.name}" does not support matryoshka representation, changing '
            "output dimensions will lead to poor results.",
        )
    if isinstance(dimensions, bool) or not isinstance(dimensions, int):
        raise ServerError(400, "dimensions must be an integer")
    if not model.min_dimension <= dimensions <= model.native_dimension:
        raise ServerError(
            400,
            f"dimensions must be between {model.min_dimension} and {model.native_dimension}",
        )
    return dimensions


def _vector(service: Service, model: OpenModel, text: str, size: int) -> np.ndarray:
    match = _QUERY.match(text)
    if match is not None:
        return vectors.text_vector(
            model.name,
            match["query"],
            size,
            text_type="query",
            instruct=match["task"],
            full_size=model.native_dimension,
        )
    return vectors.text_vector(
        model.name, text, size, text_type="document", full_size=model.native_dimension
    )


async def _embed(
    service: Service,
    request: Request,
    model: OpenModel,
    texts: list[str],
    size: int,
    render: Any,
) -> Reply:
    server = service.settings.self_hosted
    if server == "tei" and len(texts) > TEI_MAX_BATCH:
        raise ServerError(
            413,
            f"batch size {len(texts)} > maximum allowed batch size {TEI_MAX_BATCH}",
            "Validation",
        )
    counts = [vectors.count_tokens(text) + 1 for text in texts]  # + the end-of-text token
    for count in counts:
        if count > model.max_tokens:
            raise ServerError(
                400 if server != "tei" else 413,
                f"This model's maximum context length is {model.max_tokens} tokens. However, "
                f"you requested {count} tokens in the input for embedding generation. Please "
                "reduce the length of the input.",
                "Validation" if server == "tei" else "BadRequestError",
            )
    instructed = sum(_QUERY.match(text) is not None for text in texts)
    with service.state.lock:
        service.state.stats.instructed_texts += instructed
        service.state.stats.plain_texts += len(texts) - instructed
    tokens = sum(counts)

    def produce() -> Response:
        rows = [_vector(service, model, text, size).astype("float64") for text in texts]
        return Response.json(200, render(rows, tokens))

    def keys() -> list[bytes]:
        return [embedding_key(model.name, text, size) for text in texts]

    return await service.serve_work(request, len(texts), tokens, produce, keys, compatible=True)


async def embed_openai(service: Service, request: Request) -> Reply:
    """vLLM, SGLang and Infinity: ``POST /v1/embeddings`` (Infinity: ``/embeddings``)."""
    body = parse_json_object(request.body)
    _ignored(service, body, "openai")
    model = _model(body.get("model"), "embedding", service.settings.self_hosted or "")
    texts = _texts(body.get("input"), "input")
    size = _dimension(service, model, body.get("dimensions"))

    def render(rows: list[np.ndarray], tokens: int) -> dict[str, Any]:
        return {
            "id": f"embd-{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": model.name,
            "data": [
                {"index": i, "object": "embedding", "embedding": row} for i, row in enumerate(rows)
            ],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
        }

    return await _embed(service, request, model, texts, size, render)


async def embed_tei(service: Service, request: Request) -> Reply:
    """TEI: ``POST /embed`` → a list of vectors (one model per server, none named)."""
    body = parse_json_object(request.body)
    _ignored(service, body, "tei")
    model = OPEN_MODELS[service.settings.served_model or "Qwen/Qwen3-Embedding-0.6B"]
    texts = _texts(body.get("inputs"), "inputs")
    size = _dimension(service, model, body.get("dimensions"))
    return await _embed(service, request, model, texts, size, lambda rows, _: rows)


async def embed_ollama(service: Service, request: Request) -> Reply:
    """Ollama: ``POST /api/embed`` → ``{"embeddings": [...]}``."""
    body = parse_json_object(request.body)
    _ignored(service, body, "ollama")
    model = _model(body.get("model"), "embedding", "ollama")
    texts = _texts(body.get("input"), "input")
    size = _dimension(service, model, body.get("dimensions"))

    def render(rows: list[np.ndarray], tokens: int) -> dict[str, Any]:
        return {
            "model": model.name,
            "embeddings": rows,
            "total_duration": 1_000_000,
            "load_duration": 0,
            "prompt_eval_count": tokens,
        }

    return await _embed(service, request, model, texts, size, render)


# ---------------------------------------------------------------------- rerank
async def _rerank(
    service: Service,
    request: Request,
    model: OpenModel,
    query: Any,
    documents: Any,
    instruct: Any,
    render: Any,
) -> Reply:
    if not isinstance(query, str) or not query:
        raise ServerError(400, "query must be a non-empty string")
    texts = _texts(documents, "documents")
    if instruct is not None and not isinstance(instruct, str):
        raise ServerError(400, "instruct must be a string")
    tokens = sum(vectors.count_tokens(query) + vectors.count_tokens(t) for t in texts)

    def produce() -> Response:
        scores = vectors.rerank_scores(model.name, query, texts, instruct)
        order = sorted(range(len(texts)), key=lambda i: -scores[i])
        return Response.json(200, render(order, scores, tokens))

    def keys() -> list[bytes]:
        return [embedding_key(model.name, "rerank", query, t, instruct) for t in texts]

    return await service.serve_work(
        request, len(texts), tokens, produce, keys, compatible=True, offload=True
    )


async def rerank_cohere(service: Service, request: Request) -> Reply:
    """vLLM and Infinity: ``POST /rerank``, Cohere-style."""
    body = parse_json_object(request.body)
    _ignored(service, body, "cohere")
    model = _model(body.get("model"), "reranker", service.settings.self_hosted or "")
    top_n = body.get("top_n")

    def render(order: list[int], scores: list[float], tokens: int) -> dict[str, Any]:
        kept = order[: top_n if isinstance(top_n, int) and top_n > 0 else None]
        return {
            "id": f"rerank-{uuid.uuid4().hex}",
            "model": model.name,
            "usage": {"total_tokens": tokens},
            "results": [{"index": i, "relevance_score": scores[i]} for i in kept],
        }

    return await _rerank(
        service, request, model, body.get("query"), body.get("documents"), None, render
    )


async def rerank_sglang(service: Service, request: Request) -> Reply:
    """SGLang: ``POST /v1/rerank`` with an ``instruct`` → a list of scored documents."""
    body = parse_json_object(request.body)
    _ignored(service, body, "cohere")
    model = _model(body.get("model"), "reranker", "sglang")
    top_n = body.get("top_n")

    def render(order: list[int], scores: list[float], tokens: int) -> list[dict[str, Any]]:
        kept = order[: top_n if isinstance(top_n, int) and top_n > 0 else None]
        return [{"index": i, "score": scores[i], "meta_info": {}} for i in kept]

    return await _rerank(
        service,
        request,
        model,
        body.get("query"),
        body.get("documents"),
        body.get("instruct"),
        render,
    )


async def rerank_tei(service: Service, request: Request) -> Reply:
    """TEI: ``POST /rerank`` with ``texts`` → ``[{"index", "score"}]``, best first."""
    body = parse_json_object(request.body)
    _ignored(service, body, "tei-rerank")
    model = OPEN_MODELS["Qwen/Qwen3-Reranker-0.6B"]

    def render(order: list[int], scores: list[float], tokens: int) -> list[dict[str, Any]]:
        return [{"index": i, "score": scores[i]} for i in order]

    return await _rerank(
        service, request, model, body.get("query"), body.get("texts"), None, render
    )


_ROUTES: dict[str, dict[tuple[str, str], Any]] = {
    "vllm": {
        ("POST", "/v1/embeddings"): embed_openai,
        ("POST", "/rerank"): rerank_cohere,
        ("POST", "/v1/rerank"): rerank_cohere,
    },
    "sglang": {("POST", "/v1/embeddings"): embed_openai, ("POST", "/v1/rerank"): rerank_sglang},
    "tei": {("POST", "/embed"): embed_tei, ("POST", "/rerank"): rerank_tei},
    "ollama": {("POST", "/api/embed"): embed_ollama},
    "infinity": {("POST", "/embeddings"): embed_openai, ("POST", "/rerank"): rerank_cohere},
}
