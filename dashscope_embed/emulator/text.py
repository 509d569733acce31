"""The text embedding endpoints, native and OpenAI-compatible: validation as the service
does it, and deterministic vectors.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np

from dashscope_embed.emulator import vectors
from dashscope_embed.emulator.facts import OUTPUT_TYPES, SERVICE_MODELS, ServiceModel
from dashscope_embed.emulator.http import Request, Response
from dashscope_embed.emulator.service import (
    INSPECTION_FAILED,
    INSPECTION_MESSAGE,
    Reply,
    Service,
    ServiceError,
    invalid,
)
from dashscope_embed.emulator.state import embedding_key


def native_job(service: Service, body: dict[str, Any]) -> TextJob:
    """Validate a native text-embedding body as the service does."""
    spec = text_model(body.get("model"), compatible=False)
    payload = body.get("input")
    if not isinstance(payload, dict) or "texts" not in payload:
        raise invalid("Input should contain texts.: input.texts", "input.texts")
    texts = payload["texts"]
    if isinstance(texts, str):
        texts = [texts]
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise invalid("parameters must be an object.", "parameters")
    text_type = parameters.get("text_type")
    if text_type is not None and text_type not in ("query", "document"):
        raise invalid(
            f"text_type should be one of ['query', 'document'], got {text_type!r}.",
            "parameters.text_type",
        )
    output_type = parameters.get("output_type", "dense")
    if spec.supports_sparse and output_type not in OUTPUT_TYPES:
        raise invalid(
            f"output_type should be one of {list(OUTPUT_TYPES)}, got {output_type!r}.",
            "parameters.output_type",
        )
    if not spec.supports_sparse:
        output_type = "dense"  # v1/v2 ignore it
    dimension = dimension_for(spec, parameters.get("dimension"), "parameters.dimension")
    instruct = parameters.get("instruct")
    if instruct is not None and not isinstance(instruct, str):
        raise invalid("instruct should be a string.", "parameters.instruct")
    rows = check_texts(service, spec, texts, "input.texts")
    return TextJob(spec, rows, text_type, instruct, dimension, output_type)


def compatible_job(service: Service, body: dict[str, Any]) -> TextJob:
    """Validate an OpenAI-compatible embeddings body as the service does."""
    spec = text_model(body.get("model"), compatible=True)
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or any(isinstance(t, (list, int)) for t in texts):
        # Token-id arrays (what LangChain's OpenAIEmbeddings sends by default) land here.
        raise invalid("contents is neither str nor list of str.: input.contents", "input")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise invalid(
            f"encoding_format should be 'float' or 'base64', got {encoding!r}.",
            "encoding_format",
        )
    dimension = dimension_for(spec, body.get("dimensions"), "dimensions")
    rows = check_texts(service, spec, texts, "input")
    as_base64 = encoding == "base64" and not service.settings.base64_as_float
    return TextJob(spec, rows, None, None, dimension, "dense", compatible=True, as_base64=as_base64)


def text_model(name: Any, *, compatible: bool) -> ServiceModel:
    if not isinstance(name, str) or not name:
        raise invalid("Model should be specified.: model", "model")
    spec = SERVICE_MODELS.get(name)
    if spec is None:
        if compatible:
            raise ServiceError(
                404,
                "model_not_found",
                f"The model `{name}` does not exist or you do not have access to it.",
                compatible_type="invalid_request_error",
            )
        raise invalid("Model not exist.", "model")
    if spec.kind == "async-batch":
        raise ServiceError(
            403, "AccessDenied", "Current user api does not support synchronous calls."
        )
    if spec.kind != "text" or (compatible and not spec.openai_compatible):
        raise invalid(f"Model {name} is not supported by this API.", "model")
    return spec


def dimension_for(spec: ServiceModel, value: Any, param: str) -> int:
    if value is None or not spec.configurable_dimension:
        return spec.default_dimension  # fixed-size models ignore the parameter
    if isinstance(value, bool) or not isinstance(value, int) or value not in spec.dimensions:
        allowed = sorted(spec.dimensions, reverse=True)
        raise invalid(f"Dimension should be one of {allowed}, got {value!r}.", param)
    return value


def check_texts(service: Service, spec: ServiceModel, texts: Any, param: str) -> list[str]:
    if not isinstance(texts, list) or not texts:
        raise invalid("Input should not be empty.: input.contents", param)
    if len(texts) > spec.max_rows:
        where = "payload.input.contents" if spec.max_rows == 25 else "input.contents"
        raise invalid(
            f"batch size is invalid, it should not be larger than {spec.max_rows}.: {where}",
            param,
        )
    for i, text in enumerate(texts):
        problem = line_problem(spec, text)
        if problem is not None:
            raise invalid(f"{problem}: input.contents[{i}]", param)
    if any(service.blocked(text) for text in texts):
        raise ServiceError(
            400,
            INSPECTION_FAILED,
            INSPECTION_MESSAGE,
            compatible_code="data_inspection_failed",
            compatible_type="data_inspection_failed",
        )
    return texts


async def serve_texts(service: Service, request: Request, job: TextJob) -> Reply:
    """Limits, faults and latency, then the job's vectors: one path for both protocols."""
    return await service.serve_work(
        request,
        len(job.texts),
        job.tokens,
        lambda: Response.json(200, job.payload(request.request_id)),
        job.keys,
        compatible=job.compatible,
    )


def line_problem(spec: ServiceModel, text: Any) -> str | None:
    """Why the service would refuse one input text, or ``None``."""
    if not isinstance(text, str):
        return "contents is neither str nor list of str."
    if not text.strip():
        return "The content is empty, please check your input."
    tokens = vectors.count_tokens(text, end_of_text=spec.bills_end_of_text)
    if tokens > spec.max_tokens_per_row:
        return (
            f"Range of input length should be [1, {spec.max_tokens_per_row}], got {tokens} tokens."
        )
    return None


@dataclass
class TextJob:
    """One validated text-embedding request: what to embed and how to answer."""

    spec: ServiceModel
    texts: list[str]
    text_type: str | None
    instruct: str | None
    dimension: int
    output_type: str
    compatible: bool = False
    as_base64: bool = False

    @property
    def effective_text_type(self) -> str:
        return self.text_type or "document"  # the service's default

    @property
    def tokens(self) -> int:
        eos = self.spec.bills_end_of_text
        return sum(vectors.count_tokens(t, end_of_text=eos) for t in self.texts)

    def dense(self, text: str) -> np.ndarray:
        return vectors.text_vector(
            self.spec.name,
            text,
            self.dimension,
            text_type=self.effective_text_type,
            instruct=self.instruct,
            full_size=self.spec.max_dimension,
        )

    def keys(self) -> list[bytes]:
        instruct = self.instruct if self.effective_text_type == "query" else None
        return [
            embedding_key(
                self.spec.name,
                t,
                self.effective_text_type,
                instruct,
                self.dimension,
                self.output_type,
            )
            for t in self.texts
        ]

    def payload(self, request_id: str) -> dict[str, Any]:
        if self.compatible:
            data = []
            for i, text in enumerate(self.texts):
                vec = self.dense(text)
                value: Any = (
                    base64.b64encode(vec.astype("<f4").tobytes()).decode("ascii")
                    if self.as_base64
                    else _as_service_floats(vec)
                )
                data.append({"embedding": value, "index": i, "object": "embedding"})
            tokens = self.tokens
            return {
                "data": data,
                "model": self.spec.name,
                "object": "list",
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "id": request_id,
            }
        items = []
        for i, text in enumerate(self.texts):
            item: dict[str, Any] = {"text_index": i}
            if self.output_type != "sparse":
                item["embedding"] = _as_service_floats(self.dense(text))
            if self.output_type != "dense":
                item["sparse_embedding"] = vectors.sparse_vector(text)
            items.append(item)
        return {
            "output": {"embeddings": items},
            "usage": {"total_tokens": self.tokens},
            "request_id": request_id,
        }


def _as_service_floats(vector: np.ndarray) -> np.ndarray:
    """float32 values widened to float64: printed with ~17 digits, as the service does."""
    return vector.astype(np.float64)
