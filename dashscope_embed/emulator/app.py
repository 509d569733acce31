"""The emulator as an ASGI application: DashScope's embedding APIs on your machine.

Routes (at the root, or below ``path_prefix`` when one is configured, as behind a proxy;
any other path is 404, as on the service):

* native: ``POST /api/v1/services/embeddings/text-embedding/text-embedding`` (sync, or
  an async batch task with ``X-DashScope-Async: enable``), ``POST /api/v1/services/
  embeddings/multimodal-embedding/multimodal-embedding``, ``GET /api/v1/tasks/{id}``,
  ``POST /api/v1/tasks/{id}/cancel``, ``GET /api/v1/tasks``, ``GET /api/v1/uploads?
  action=getPolicy`` (the temporary upload storage's policy)
* OpenAI-compatible: ``POST /compatible-mode/v1/embeddings``, ``/files`` and
  ``/batches`` (the Batch API)
* rerank: ``POST /compatible-api/v1/reranks`` (qwen3-rerank) and ``POST /api/v1/services/
  rerank/text-rerank/text-rerank`` (gte-rerank-v2, qwen3-vl-rerank)
* the emulator's own: ``GET /emulator/stats``, ``POST /emulator/reset``,
  ``PUT /emulator/files/{name}`` (store an input file), ``GET /emulator/files/{name}``,
  ``POST /emulator/oss`` (the upload host an upload policy names)
"""

from __future__ import annotations

import asyncio
from urllib.parse import unquote

from dashscope_embed.emulator import selfhosted, text, uploads, vectors
from dashscope_embed.emulator.files import FILES_MARKER, StoredFile
from dashscope_embed.emulator.http import (
    ClientGone,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    compatible_error,
    native_error,
)
from dashscope_embed.emulator.jobs import JobStore
from dashscope_embed.emulator.multimodal import embed_multimodal
from dashscope_embed.emulator.rerank import rerank_native, rerank_openai
from dashscope_embed.emulator.service import Reply, Service, ServiceError, parse_json_object
from dashscope_embed.emulator.state import EmulatorSettings
from dashscope_embed.emulator.uploads import UPLOAD_PATH

NATIVE_PREFIX = "/api/v1"
COMPATIBLE_PREFIX = "/compatible-mode/v1"
COMPATIBLE_API_PREFIX = "/compatible-api/v1"
EMULATOR_PREFIX = "/emulator"
TEXT_EMBEDDING = "/services/embeddings/text-embedding/text-embedding"
MULTIMODAL_EMBEDDING = "/services/embeddings/multimodal-embedding/multimodal-embedding"
TEXT_RERANK = "/services/rerank/text-rerank/text-rerank"


class EmulatorApp(Service):
    """ASGI app. ``EmulatorApp(EmulatorSettings(latency=0.2, rpm=600))``: routes each
    request to its endpoint module."""

    def __init__(self, settings: EmulatorSettings | None = None) -> None:
        super().__init__(settings)
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
                # Load the tokenizer now: loading it on the first request would stall
                # that request ~1 s, a hiccup clients would take for the service's own.
                await asyncio.to_thread(vectors.count_tokens, "warm up")
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
                return await self._handle_emulator(request, rest)
            except ServiceError as error:
                return Reply(self._render_error(error, protocol, request.request_id))
        if self.settings.self_hosted is not None:
            return await selfhosted.serve(self, request)
        with self.state.lock:
            self.state.stats.requests += 1
            self.state.stats.by_endpoint[f"{request.method} {protocol or ''}{rest}"] += 1
        self.state.log_request(request.method, path, request.headers, request.body, request.query)
        try:
            if protocol is None:
                raise ServiceError(404, "NotFound", f"No route for {request.method} {path}")
            self._authenticate(request, protocol)
            if protocol == NATIVE_PREFIX:
                return await self._route_native(request, rest)
            if protocol == COMPATIBLE_API_PREFIX:
                if rest == "/reranks" and request.method == "POST":
                    return await rerank_openai(self, request)
                raise ServiceError(404, "NotFound", f"No route for {request.method} {path}")
            return await self._route_compatible(request, rest)
        except ServiceError as error:
            return Reply(self._render_error(error, protocol, request.request_id))

    def _render_error(self, error: ServiceError, protocol: str | None, request_id: str) -> Response:
        if protocol in (COMPATIBLE_PREFIX, COMPATIBLE_API_PREFIX):
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
                if protocol in (COMPATIBLE_PREFIX, COMPATIBLE_API_PREFIX)
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
            return await text.serve_texts(
                self, request, text.native_job(self, parse_json_object(request.body))
            )
        if rest == MULTIMODAL_EMBEDDING and request.method == "POST":
            return await embed_multimodal(self, request)
        if rest == TEXT_RERANK and request.method == "POST":
            return await rerank_native(self, request)
        if rest == "/tasks" or rest.startswith("/tasks/"):
            return await self.jobs.route_tasks(request, rest)
        if rest == "/uploads" and request.method == "GET":
            return uploads.get_policy(self, request)
        raise ServiceError(404, "NotFound", f"No route for {request.method} {NATIVE_PREFIX}{rest}")

    async def _route_compatible(self, request: Request, rest: str) -> Reply:
        if rest == "/embeddings" and request.method == "POST":
            job = text.compatible_job(self, parse_json_object(request.body))
            return await text.serve_texts(self, request, job)
        if rest.startswith(("/files", "/batches")):
            return await self.jobs.route_batch_api(request, rest)
        raise ServiceError(
            404,
            "NotFound",
            f"No route for {request.method} {COMPATIBLE_PREFIX}{rest}",
            compatible_code="not_found",
        )

    # ------------------------------------------------------------------ /emulator
    async def _handle_emulator(self, request: Request, rest: str) -> Reply:
        if rest == "/stats" and request.method == "GET":
            with self.state.lock:
                return Reply(Response.json(200, self.state.stats.as_dict()))
        if rest == "/requests" and request.method == "GET":
            with self.state.lock:
                return Reply(Response.json(200, list(self.state.request_log)))
        if rest == "/reset" and request.method == "POST":
            self.state.reset()
            return Reply(Response.json(200, {"reset": True}))
        if rest == UPLOAD_PATH.removeprefix(EMULATOR_PREFIX) and request.method == "POST":
            return uploads.receive_upload(self, request)
        if rest == "/health":
            return Reply(Response.json(200, {"status": "ok"}))
        if rest.startswith("/files/"):
            name = unquote(rest[len("/files/") :])
            if request.method in ("PUT", "POST"):
                self.files[name] = StoredFile(
                    name, name.rsplit("/", 1)[-1], "emulator", request.body
                )
                url = f"{request.origin}{FILES_MARKER}{name}"
                return Reply(
                    Response.json(200, {"name": name, "bytes": len(request.body), "url": url})
                )
            if request.method == "GET":
                stored = self.files.get(name)
                if stored is None:
                    raise ServiceError(404, "NotFound", f"No emulator file named {name!r}")
                kind = "application/gzip" if name.endswith(".gz") else "application/octet-stream"
                return Reply(Response(200, stored.content, kind))
        raise ServiceError(404, "NotFound", f"No route for {request.method} /emulator{rest}")


def _split_path(path: str, prefix: str = "") -> tuple[str | None, str]:
    """The protocol part of ``path`` and the rest, for the real paths only.

    ``/api/v1/...`` and ``/compatible-mode/v1/...`` are served at the root, or below
    ``prefix`` when one is configured (as a proxy mounted there would); any other path
    is not found, so a mistyped base URL fails offline as it would online. The
    emulator's own ``/emulator/...`` is always at the root.
    """
    for marker in (NATIVE_PREFIX, COMPATIBLE_PREFIX, COMPATIBLE_API_PREFIX, EMULATOR_PREFIX):
        base = marker if marker == EMULATOR_PREFIX else prefix + marker
        if path == base or path == base + "/":
            return marker, "/"
        if path.startswith(base + "/"):
            return marker, path[len(base) :].rstrip("/") or "/"
    return None, path
