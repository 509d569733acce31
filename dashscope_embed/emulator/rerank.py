"""The rerank endpoints: OpenAI-style (``POST /compatible-api/v1/reranks``) and native
(``POST /api/v1/services/rerank/text-rerank/text-rerank``), validated as the service
does, with scores that behave like a cross-encoder's (see ``vectors.rerank_score``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from dashscope_embed.emulator import vectors
from dashscope_embed.emulator.facts import SERVICE_RERANK_MODELS, ServiceRerankModel
from dashscope_embed.emulator.http import Request, Response
from dashscope_embed.emulator.service import Reply, Service, invalid, parse_json_object
from dashscope_embed.emulator.state import embedding_key

TOO_MANY = (
    "batch size of documents is invalid, it should not be empty or larger than {limit}.: "
    "input.documents"
)


def _model(name: Any, endpoint: str) -> ServiceRerankModel:
    spec = SERVICE_RERANK_MODELS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise invalid("Model not exist.", "model")
    if spec.endpoint != endpoint:
        raise invalid(f"Model {name} is not supported by this API.", "model")
    return spec


def _document(value: Any, position: int, spec: ServiceRerankModel) -> tuple[str, str, str]:
    """(modality, what to score, what to send back) for one document."""
    kinds = dict(spec.max_per_modality)
    if isinstance(value, str):
        kind, content = "text", value
    elif isinstance(value, dict) and len(value) == 1 and next(iter(value)) in kinds:
        kind, content = next(iter(value.items()))
    else:
        raise invalid(f"input.documents[{position}] is not a document this model ranks.")
    if not isinstance(content, str) or not content.strip():
        raise invalid(f"input.documents[{position}] is empty.", "input.documents")
    if kind != "text":  # images and videos are ranked by the words of their names
        return kind, content.rsplit("/", 1)[-1].rsplit(".", 1)[0].replace("_", " "), content
    return kind, content, content


def _count_tokens(spec: ServiceRerankModel, query: str, items: list[tuple[str, str, str]]) -> int:
    """The request's tokens as the service bills them (the query's once per document,
    plus each document's), refusing a query or document over the per-document limit
    and a request over the per-request one."""
    query_tokens = vectors.count_tokens(query, end_of_text=True)
    if query_tokens > spec.max_tokens_per_document:
        raise invalid(f"Query is too long: {query_tokens} tokens.", "input.query")
    tokens = 0
    for position, (kind, text, _) in enumerate(items):
        own = vectors.count_tokens(text, end_of_text=True) if kind == "text" else 1024
        if own > spec.max_tokens_per_document:
            raise invalid(
                f"Range of input length should be [1, {spec.max_tokens_per_document}], got "
                f"{own} tokens: input.documents[{position}]",
                "input.documents",
            )
        tokens += own + query_tokens
    if tokens > spec.max_tokens_per_request:
        raise invalid(
            f"The total tokens of the request ({tokens}) exceed the limit of "
            f"{spec.max_tokens_per_request}.",
            "input.documents",
        )
    return tokens


async def _serve(
    service: Service, request: Request, spec: ServiceRerankModel, fields: dict[str, Any]
) -> Reply:
    query, documents = fields["query"], fields["documents"]
    if not isinstance(query, str) or not query.strip():
        raise invalid("Query should not be empty.: input.query", "input.query")
    if not isinstance(documents, list) or not documents or len(documents) > spec.max_documents:
        raise invalid(TOO_MANY.format(limit=spec.max_documents), "input.documents")
    items = [_document(value, i, spec) for i, value in enumerate(documents)]
    counts: dict[str, int] = {}
    for kind, _, _ in items:
        counts[kind] = counts.get(kind, 0) + 1
    for kind, limit in spec.max_per_modality:
        if counts.get(kind, 0) > limit:
            raise invalid(f"at most {limit} {kind} documents per request.", "input.documents")
    top_n = fields.get("top_n")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise invalid(f"top_n should be a positive integer, got {top_n!r}.", "top_n")
    instruct = fields.get("instruct") if spec.instruct else None
    if instruct is not None and not isinstance(instruct, str):
        raise invalid("instruct should be a string.", "instruct")
    # Counting hundreds of documents takes a while: off the loop (see serve_work).
    tokens = await asyncio.to_thread(_count_tokens, spec, query, items)

    def produce() -> Response:
        scores = vectors.rerank_scores(spec.name, query, [text for _, text, _ in items], instruct)
        ranked = sorted(
            (
                (score, index, sent)
                for index, (score, (_, _, sent)) in enumerate(zip(scores, items, strict=True))
            ),
            key=lambda row: (-row[0], row[1]),
        )
        if top_n is not None:
            ranked = ranked[:top_n]
        results = []
        for score, index, sent in ranked:
            result: dict[str, Any] = {"index": index, "relevance_score": score}
            if fields.get("return_documents"):
                result["document"] = {"text": sent}
            results.append(result)
        usage = {"total_tokens": tokens}
        if spec.endpoint == "openai":
            body = {"id": request.request_id, "object": "list", "model": spec.name}
            return Response.json(200, {**body, "results": results, "usage": usage})
        payload = {"output": {"results": results}, "usage": usage, "request_id": request.request_id}
        return Response.json(200, payload)

    return await service.serve_work(
        request,
        len(items),
        tokens,
        produce,
        lambda: [
            embedding_key("rerank", spec.name, f"{instruct}\n{query}", s) for _, _, s in items
        ],
        compatible=spec.endpoint == "openai",
        offload=True,
    )


async def rerank_openai(service: Service, request: Request) -> Reply:
    body = parse_json_object(request.body)
    spec = _model(body.get("model"), "openai")
    fields = {
        "query": body.get("query"),
        "documents": body.get("documents"),
        "top_n": body.get("top_n"),
        "instruct": body.get("instruct"),
        "return_documents": body.get("return_documents", True),
    }
    return await _serve(service, request, spec, fields)


async def rerank_native(service: Service, request: Request) -> Reply:
    body = parse_json_object(request.body)
    spec = _model(body.get("model"), "native")
    payload = body.get("input")
    if not isinstance(payload, dict):
        raise invalid("Input should contain query and documents.", "input")
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise invalid("parameters must be an object.", "parameters")
    fields = {
        "query": payload.get("query"),
        "documents": payload.get("documents"),
        "top_n": parameters.get("top_n"),
        "instruct": parameters.get("instruct"),
        "return_documents": parameters.get("return_documents", False),
    }
    return await _serve(service, request, spec, fields)
