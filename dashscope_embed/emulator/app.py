"""The emulator as an ASGI application: DashScope's embedding APIs on your machine.

Routes (at the root, or below ``path_prefix`` when one is configured, as behind a proxy;
any other path is 404, as on the service):

* native: ``POST /api/v1/services/embeddings/text-embedding/text-embedding`` (sync, or
  an async batch task with ``X-DashScope-Async: enable``), ``POST /api/v1/services/
  embeddings/multimodal-embedding/multimodal-embedding``, ``GET /api/v1/tasks/{id}``,
  ``POST /api/v1/tasks/{id}/cancel``, ``GET /api/v1/tasks``
* OpenAI-compatible: ``POST /compatible-mode/v1/embeddings``, ``/files`` and
  ``/batches`` (the Batch API)
* the emulator's own: ``GET /emulator/stats``, ``POST /emulator/reset``,
  ``PUT /emulator/files/{name}`` (store an input file), ``GET /emulator/files/{name}``
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from dashscope_embed.emulator import vectors
from dashscope_embed.emulator.http import (
    ClientGone,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    compatible_error,
    native_error,
    retry_after_headers,
)
from dashscope_embed.emulator.state import EmulatorSettings, EmulatorState, embedding_key
from dashscope_embed.models import MODELS, OUTPUT_TYPES, ModelSpec

NATIVE_PREFIX = "/api/v1"
COMPATIBLE_PREFIX = "/compatible-mode/v1"
EMULATOR_PREFIX = "/emulator"
TEXT_EMBEDDING = "/services/embeddings/text-embedding/text-embedding"
MULTIMODAL_EMBEDDING = "/services/embeddings/multimodal-embedding/multimodal-embedding"

# Models that bill the end-of-text token Qwen3-Embedding appends (see the API notes).
EOS_BILLED = (
    "text-embedding-v3",
    "text-embedding-v4",
    "qwen3.7-text-embedding",
    "qwen3.7-text-embedding-flash",
)


class ServiceError(Exception):
    """An error reply; rendered in the calling protocol's body shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        compatible_code: str | None = None,
        compatible_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}
        self.compatible_code = compatible_code
        self.compatible_type = compatible_type


def invalid(message: str, param: str | None = None) -> ServiceError:
    return ServiceError(400, "InvalidParameter", message, param=param)


@dataclass
class Reply:
    """A response plus what delivering it means for the stats."""

    response: Response
    delivered: list[bytes] = field(default_factory=list)
    drop: bool = False


class EmulatorApp:
    """ASGI app. ``EmulatorApp(EmulatorSettings(latency=0.2, rpm=600))``."""

    def __init__(self, settings: EmulatorSettings | None = None) -> None:
        self.settings = settings or EmulatorSettings()
        self.state = EmulatorState(self.settings)
        from dashscope_embed.emulator.jobs import JobStore

        self.jobs = JobStore(self)

    # ------------------------------------------------------------------ ASGI entry
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            request = await Request.read(scope, receive)
        except ClientGone:
            return
        try:
            reply = await self.handle(request)
        except Exception as exc:  # a bug of ours still answers in the service's shape
            protocol = _split_path(request.path, self.settings.path_prefix)[0]
            error = ServiceError(500, "InternalError", f"emulator failure: {type(exc).__name__}")
            reply = Reply(self._render_error(error, protocol, request.request_id))
        if _split_path(request.path, self.settings.path_prefix)[0] != EMULATOR_PREFIX:
            with self.state.lock:
                self.state.stats.by_status[reply.response.status] += 1
        if reply.drop:
            self.state.stats.dropped_connections += 1
        await reply.response.send(send, drop=reply.drop)
        if reply.delivered:
            self.state.record_delivered(reply.delivered)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.jobs.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def handle(self, request: Request) -> Reply:
        """Route one request; every failure becomes the protocol's error body."""
        path = request.path
        protocol, rest = _split_path(path, self.settings.path_prefix)
        if protocol == EMULATOR_PREFIX:
            try:
                return await self.jobs.handle_emulator(request, rest)
            except ServiceError as error:
                return Reply(self._render_error(error, protocol, request.request_id))
        with self.state.lock:
            self.state.stats.requests += 1
            self.state.stats.by_endpoint[f"{request.method} {protocol or ''}{rest}"] += 1
        self.state.log_request(request.method, path, request.headers, request.body)
        try:
            if protocol is None:
                raise ServiceError(404, "NotFound", f"No route for {request.method} {path}")
            self._authenticate(request, protocol)
            if protocol == NATIVE_PREFIX:
                return await self._route_native(request, rest)
            return await self._route_compatible(request, rest)
        except ServiceError as error:
            return Reply(self._render_error(error, protocol, request.request_id))

    def _render_error(self, error: ServiceError, protocol: str | None, request_id: str) -> Response:
        if protocol == COMPATIBLE_PREFIX:
            message = error.message
            if error.code == "InvalidParameter":
                message = f"<400> InternalError.Algo.InvalidParameter: Value error, {message}"
            return compatible_error(
                error.status,
                error.compatible_code or error.code,
                message,
                request_id,
                error_type=error.compatible_type,
                param=error.param,
                headers=error.headers,
            )
        return native_error(error.status, error.code, error.message, request_id, error.headers)

    def _authenticate(self, request: Request, protocol: str) -> None:
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else ""
        expected = self.settings.api_key
        if not key:
            raise ServiceError(
                401,
                "InvalidApiKey",
                "No API-key provided.",
                compatible_code="invalid_api_key",
                compatible_type="invalid_request_error",
            )
        if not key.startswith("sk-") or (expected is not None and key != expected):
            message = (
                "Incorrect API key provided. "
                if protocol == COMPATIBLE_PREFIX
                else "Invalid API-key provided."
            )
            raise ServiceError(
                401,
                "InvalidApiKey",
                message,
                compatible_code="invalid_api_key",
                compatible_type="invalid_request_error",
            )

    async def _route_native(self, request: Request, rest: str) -> Reply:
        if rest == TEXT_EMBEDDING and request.method == "POST":
            if request.headers.get("x-dashscope-async", "").lower() == "enable":
                return await self.jobs.create_task(request)
            return await self._native_text(request)
        if rest == MULTIMODAL_EMBEDDING and request.method == "POST":
            from dashscope_embed.emulator.multimodal import embed_multimodal

            return await embed_multimodal(self, request)
        if rest == "/tasks" or rest.startswith("/tasks/"):
            return await self.jobs.route_tasks(request, rest)
        raise ServiceError(404, "NotFound", f"No route for {request.method} {NATIVE_PREFIX}{rest}")

    async def _route_compatible(self, request: Request, rest: str) -> Reply:
        if rest == "/embeddings" and request.method == "POST":
            return await self._compatible_embeddings(request)
        if rest.startswith(("/files", "/batches")):
            return await self.jobs.route_batch_api(request, rest)
        raise ServiceError(
            404,
            "NotFound",
            f"No route for {request.method} {COMPATIBLE_PREFIX}{rest}",
            compatible_code="not_found",
        )

    # ------------------------------------------------------------------ text endpoints
    async def _native_text(self, request: Request) -> Reply:
        return await self.serve_texts(request, self.native_job(parse_json_object(request.body)))

    async def _compatible_embeddings(self, request: Request) -> Reply:
        job = self.compatible_job(parse_json_object(request.body))
        return await self.serve_texts(request, job)

    def native_job(self, body: dict[str, Any]) -> TextJob:
        """Validate a native text-embedding body as the service does."""
        spec = self.text_model(body.get("model"), compatible=False)
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
        dimension = self.dimension_for(spec, parameters.get("dimension"), "parameters.dimension")
        instruct = parameters.get("instruct")
        if instruct is not None and not isinstance(instruct, str):
            raise invalid("instruct should be a string.", "parameters.instruct")
        rows = self.check_texts(spec, texts, "input.texts")
        return TextJob(spec, rows, text_type, instruct, dimension, output_type)

    def compatible_job(self, body: dict[str, Any]) -> TextJob:
        """Validate an OpenAI-compatible embeddings body as the service does."""
        spec = self.text_model(body.get("model"), compatible=True)
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
        dimension = self.dimension_for(spec, body.get("dimensions"), "dimensions")
        rows = self.check_texts(spec, texts, "input")
        as_base64 = encoding == "base64" and not self.settings.base64_as_float
        return TextJob(
            spec, rows, None, None, dimension, "dense", compatible=True, as_base64=as_base64
        )

    # ------------------------------------------------------------------ shared pieces
    def text_model(self, name: Any, *, compatible: bool) -> ModelSpec:
        if not isinstance(name, str) or not name:
            raise invalid("Model should be specified.: model", "model")
        spec = MODELS.get(name)
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

    @staticmethod
    def dimension_for(spec: ModelSpec, value: Any, param: str) -> int:
        if value is None or not spec.configurable_dimension:
            return spec.default_dimension  # fixed-size models ignore the parameter
        if isinstance(value, bool) or not isinstance(value, int) or value not in spec.dimensions:
            allowed = sorted(spec.dimensions, reverse=True)
            raise invalid(f"Dimension should be one of {allowed}, got {value!r}.", param)
        return value

    def check_texts(self, spec: ModelSpec, texts: Any, param: str) -> list[str]:
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
        if any(self.blocked(text) for text in texts):
            raise ServiceError(
                400,
                INSPECTION_FAILED,
                INSPECTION_MESSAGE,
                compatible_code="data_inspection_failed",
                compatible_type="data_inspection_failed",
            )
        return texts

    def blocked(self, text: str) -> bool:
        """Whether content inspection refuses ``text`` (see ``blocked_phrase``)."""
        phrase = self.settings.blocked_phrase
        return phrase is not None and phrase != "" and phrase in text

    async def serve_texts(self, request: Request, job: TextJob) -> Reply:
        """Limits, faults and latency, then the job's vectors: one path for both protocols."""
        return await self.serve_work(
            request,
            len(job.texts),
            job.tokens,
            lambda: Response.json(200, job.payload(request.request_id)),
            job.keys,
            compatible=job.compatible,
        )

    async def serve_work(
        self,
        request: Request,
        rows: int,
        tokens: int,
        produce: Callable[[], Response],
        keys: Callable[[], list[bytes]],
        *,
        compatible: bool,
    ) -> Reply:
        """Admission (concurrency, RPM, TPM), injected faults, latency, then the work."""
        state = self.state
        throttle = state.limiter.admit(tokens)
        if throttle is not None:
            with state.lock:
                state.stats.throttled += 1
            raise ServiceError(
                429,
                throttle.code,
                throttle.message,
                headers=retry_after_headers(throttle.retry_after),
                compatible_code=(
                    "insufficient_quota"
                    if throttle.code == "Throttling.AllocationQuota"
                    else "rate_limit_exceeded"
                ),
                compatible_type=throttle.code,
            )
        try:
            with state.lock:
                state.stats.in_flight += 1
                state.stats.peak_concurrency = max(
                    state.stats.peak_concurrency, state.stats.in_flight
                )
                state.stats.max_rows_seen = max(state.stats.max_rows_seen, rows)
            if state.roll(self.settings.error_rate):
                with state.lock:
                    state.stats.injected_errors += 1
                raise ServiceError(
                    500, "InternalError", "An internal error has occured, please try again later."
                )
            response = produce()
            service_time = (
                self.settings.latency
                + self.settings.latency_per_text * rows
                + state.jitter(self.settings.latency_jitter)
            )
            remaining = service_time - (time.monotonic() - request.arrived_at)
            if remaining > 0:
                await asyncio.sleep(remaining)
            drop = state.roll(self.settings.drop_rate)
            with state.lock:
                state.stats.texts_embedded += rows
                state.stats.tokens += tokens
                if drop:
                    state.stats.wasted_embeddings += rows
            if compatible:
                response.headers.setdefault("x-request-id", request.request_id)
            return Reply(response, delivered=[] if drop else keys(), drop=drop)
        finally:
            with state.lock:
                state.stats.in_flight -= 1
            state.limiter.release()


INSPECTION_FAILED = "DataInspectionFailed"
INSPECTION_MESSAGE = "Input data may contain inappropriate content."


def line_problem(spec: ModelSpec, text: Any) -> str | None:
    """Why the service would refuse one input text, or ``None``."""
    if not isinstance(text, str):
        return "contents is neither str nor list of str."
    if not text.strip():
        return "The content is empty, please check your input."
    tokens = vectors.count_tokens(text, end_of_text=spec.name in EOS_BILLED)
    if tokens > spec.max_tokens_per_row:
        return (
            f"Range of input length should be [1, {spec.max_tokens_per_row}], got {tokens} tokens."
        )
    return None


@dataclass
class TextJob:
    """One validated text-embedding request: what to embed and how to answer."""

    spec: ModelSpec
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
        eos = self.spec.name in EOS_BILLED
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


def parse_json_object(raw: bytes) -> dict[str, Any]:
    # orjson refuses what the service cannot take either: invalid UTF-8, lone surrogate
    # escapes ("\ud800"), and nesting past 1,024 levels (json.loads would recurse out).
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise invalid("Request body is not valid JSON.", "body") from None
    if not isinstance(body, dict):
        raise invalid("Request body must be a JSON object.", "body")
    return body


def _split_path(path: str, prefix: str = "") -> tuple[str | None, str]:
    """The protocol part of ``path`` and the rest, for the real paths only.

    ``/api/v1/...`` and ``/compatible-mode/v1/...`` are served at the root, or below
    ``prefix`` when one is configured (as a proxy mounted there would); any other path
    is not found, so a mistyped base URL fails offline as it would online. The
    emulator's own ``/emulator/...`` is always at the root.
    """
    for marker in (NATIVE_PREFIX, COMPATIBLE_PREFIX, EMULATOR_PREFIX):
        base = marker if marker == EMULATOR_PREFIX else prefix + marker
        if path == base or path == base + "/":
            return marker, "/"
        if path.startswith(base + "/"):
            return marker, path[len(base) :].rstrip("/") or "/"
    return None, path
