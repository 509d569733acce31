"""A minimal ASGI request/response layer: enough for a JSON API, no framework needed."""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class DroppedConnection(Exception):  # noqa: N818 - it is an event, not an error of ours
    """Raised after a partial reply so the server cuts the connection (an injected fault)."""


class ClientGone(Exception):  # noqa: N818 - an event
    """The client disconnected before its request body arrived whole: nothing to answer."""


class _HideInjectedDrops(logging.Filter):
    """Injected dropped connections are a feature; keep them out of the error log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DroppedConnection)


INJECTED_DROPS_FILTER = _HideInjectedDrops()
"""Add to uvicorn's error logger wherever the emulator is served."""


def new_request_id() -> str:
    return str(uuid.uuid4())


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    query: dict[str, list[str]]
    body: bytes
    scheme: str = "http"
    host: str = "127.0.0.1"
    request_id: str = field(default_factory=new_request_id)
    # When the request began arriving: the emulated latency is measured from here, so the
    # emulator's own work is part of it, as the service's compute is part of its latency.
    arrived_at: float = field(default_factory=time.monotonic)

    @classmethod
    async def read(cls, scope: Scope, receive: Receive) -> Request:
        arrived_at = time.monotonic()
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        return cls(
            method=scope["method"],
            path=scope["path"],
            headers=headers,
            query=parse_qs(scope.get("query_string", b"").decode("latin-1")),
            body=b"".join(chunks),
            scheme=scope.get("scheme", "http"),
            host=headers.get("host", "127.0.0.1"),
            arrived_at=arrived_at,
        )

    def query_value(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.host}"


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
        # orjson writes NumPy vectors natively: ~30x faster than json.dumps on float lists,
        # which would otherwise make the emulator the bottleneck of any benchmark.
        data = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
        return cls(status, data, "application/json", dict(headers or {}))

    async def send(self, send: Send, *, drop: bool = False) -> None:
        headers = [
            (b"content-type", self.content_type.encode()),
            (b"content-length", str(len(self.body)).encode()),
        ]
        headers += [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        if drop:
            await send(
                {
                    "type": "http.response.body",
                    "body": self.body[: len(self.body) // 2],
                    "more_body": True,
                }
            )
            raise DroppedConnection
        await send({"type": "http.response.body", "body": self.body})


def retry_after_headers(seconds: float) -> dict[str, str]:
    return {
        "Retry-After": str(max(1, math.ceil(seconds))),
        "retry-after-ms": str(max(1, round(seconds * 1000))),
    }


def native_error(
    status: int, code: str, message: str, request_id: str, headers: dict[str, str] | None = None
) -> Response:
    """The native protocol's error body."""
    return Response.json(
        status,
        {"code": code, "message": message, "request_id": request_id},
        {"x-request-id": request_id, **(headers or {})},
    )


def compatible_error(
    status: int,
    code: str,
    message: str,
    request_id: str,
    *,
    error_type: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """The OpenAI-compatible protocol's error body (OpenAI's shape plus the ids)."""
    return Response.json(
        status,
        {
            "error": {"message": message, "type": error_type or code, "param": param, "code": code},
            "id": request_id,
            "request_id": request_id,
        },
        {"x-request-id": request_id, **(headers or {})},
    )
