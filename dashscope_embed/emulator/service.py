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
        self.uploads = FileStore()  # the temporary upload storage, by object key
        self._waiting_room: tuple[int, asyncio.Semaphore] | None = None

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
        offload: bool = False,
    ) -> Reply:
        """Admission (concurrency, RPM, TPM), injected faults, latency, then the work.

        With ``queue_excess``, a request over ``max_concurrency`` waits for a free slot
        (its round trip grows, as with a service that queues) instead of a 429. With
        ``offload``, ``produce`` runs in a worker thread: heavy work (ranking hundreds
        of documents) must not stall the loop, or the requests arriving meanwhile would
        be read late and their latency would include this one's work."""
        cap = self.settings.max_concurrency
        if self.settings.queue_excess and cap is not None:
            async with self._queue(cap):
                return await self._admitted(
                    request, rows, tokens, produce, keys, compatible, offload
                )
        return await self._admitted(request, rows, tokens, produce, keys, compatible, offload)

    def _queue(self, cap: int) -> asyncio.Semaphore:
        # One per cap, made on the server's loop at first use.
        if self._waiting_room is None or self._waiting_room[0] != cap:
            self._waiting_room = (cap, asyncio.Semaphore(cap))
        return self._waiting_room[1]

    async def _admitted(
        self,
        request: Request,
        rows: int,
        tokens: int,
        produce: Callable[[], Response],
        keys: Callable[[], list[bytes]],
        compatible: bool,
        offload: bool,
    ) -> Reply:
        state = self.state
        admitted_at = time.monotonic()
        throttle = state.limiter.admit(tokens)
        if throttle is not None:
            with state.lock:
                state.stats.throttled += 1
            raise ServiceError(
                429,
                throttle.code,
                throttle.message,
                headers=(
                    retry_after_headers(throttle.retry_after)
                    if throttle.retry_after is not None
                    else {}
                ),
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
            response = await asyncio.to_thread(produce) if offload else produce()
            service_time = (
                self.settings.latency
                + self.settings.latency_per_text * rows
                + state.jitter(self.settings.latency_jitter)
            )
            # Service time runs from arrival, or from admission after a wait in the queue.
            started = max(request.arrived_at, admitted_at if self.settings.queue_excess else 0)
            remaining = service_time - (time.monotonic() - started)
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
