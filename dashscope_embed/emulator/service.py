"""The emulated service's core: errors in the service's shape, admission, faults, latency.

Every endpoint module (text, multimodal, jobs) builds on :class:`Service`; none of them
imports the ASGI app, which routes to them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from dashscope_embed.emulator.files import FileStore
from dashscope_embed.emulator.http import Request, Response, retry_after_headers
from dashscope_embed.emulator.state import EmulatorSettings, EmulatorState


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


INSPECTION_FAILED = "DataInspectionFailed"
INSPECTION_MESSAGE = "Input data may contain inappropriate content."


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


class Service:
    """Settings, state and stored files of one emulator, and the path every piece of
    work goes through (:meth:`serve_work`)."""

    def __init__(self, settings: EmulatorSettings | None = None) -> None:
        self.settings = settings or EmulatorSettings()
        self.state = EmulatorState(self.settings)
        self.files = FileStore()

    def blocked(self, text: str) -> bool:
        """Whether content inspection refuses ``text`` (see ``blocked_phrase``)."""
        phrase = self.settings.blocked_phrase
        return phrase is not None and phrase != "" and phrase in text

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
