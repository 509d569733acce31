"""The send algorithm, sync and async side by side, at concurrency above one, slow replies.

Both modes run the same algorithm through two thin drivers; these tests hold them to it
by counting what reaches the server under the same deterministic faults.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from dashscope_embed import (
    AuthenticationError,
    DashScopeClient,
    DashScopeError,
    PartialEmbeddingError,
    RetryPolicy,
)
from tests.integration.hostile import Conn, RawRequest, hostile, native_reply, response_bytes

MODES = ["sync", "async"]
TEXTS = [f"text {i}" for i in range(60)]  # 6 requests of 10
RETRY = RetryPolicy(max_retries=3, initial_delay=0.01, max_delay=0.02, total_timeout=30)


def row() -> str:
    return "[" + ",".join(["0.01"] * 64) + "]"


def ok(conn: Conn, texts: list[str]) -> None:
    conn.send(response_bytes(200, native_reply([row()] * len(texts))))


class Server:
    """A deterministic misbehaving service: ``behave(first_text, attempt)`` answers."""

    def __init__(self, behave: Callable[[str, int, Conn, list[str]], None]) -> None:
        self.behave = behave
        self.attempts: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, request: RawRequest, conn: Conn) -> None:
        texts = json.loads(request.body)["input"]["texts"]
        with self.lock:
            self.attempts[texts[0]] += 1
            attempt = self.attempts[texts[0]]
        self.behave(texts[0], attempt, conn, texts)


def run(mode: str, base_url: str, **kwargs: Any) -> Any:
    client = DashScopeClient(
        api_key="sk-test", base_url=base_url, retry=RETRY, max_concurrency=4, **kwargs
    )
    if mode == "sync":
        return client.embed(TEXTS, dimension=64)
    return asyncio.run(client.aembed(TEXTS, dimension=64))


def outcome(mode: str, behave: Callable[[str, int, Conn, list[str]], None]) -> tuple[Any, int]:
    server = Server(behave)
    with hostile(server) as box:
        try:
            result: Any = run(mode, box.base_url)
        except DashScopeError as exc:
            result = exc
        return result, len(box.requests)


def slow_401(first: str, attempt: int, conn: Conn, texts: list[str]) -> None:
    time.sleep(0.05)
    conn.send(
        response_bytes(401, b'{"code":"InvalidApiKey","message":"Invalid API-key provided."}')
    )


def one_500_each(first: str, attempt: int, conn: Conn, texts: list[str]) -> None:
    time.sleep(0.02)
    if attempt == 1:
        conn.send(response_bytes(500, b'{"code":"InternalError","message":"boom"}'))
    else:
        ok(conn, texts)


def one_429_each(first: str, attempt: int, conn: Conn, texts: list[str]) -> None:
    time.sleep(0.02)
    if attempt == 1:
        body = b'{"code":"Throttling","message":"Requests throttling triggered."}'
        conn.send(response_bytes(429, body, {"Retry-After": "0.05"}))
    else:
        ok(conn, texts)


def one_drop_each(first: str, attempt: int, conn: Conn, texts: list[str]) -> None:
    time.sleep(0.02)
    if attempt == 1:
        conn.send(response_bytes(200, native_reply([row()] * len(texts)))[:50])
        conn.drop()
    else:
        ok(conn, texts)


def one_bad_request(first: str, attempt: int, conn: Conn, texts: list[str]) -> None:
    time.sleep(0.02)
    if first == "text 20":
        conn.send(response_bytes(400, b'{"code":"InvalidParameter","message":"no"}'))
    else:
        ok(conn, texts)


@pytest.mark.parametrize(
    ("behave", "expected_requests", "expected"),
    [
        # An account-level failure: requests not yet started are never sent, whichever
        # mode, even with four in flight and the failing replies slow to come.
        (slow_401, 4, AuthenticationError),
        (one_500_each, 12, None),
        (one_429_each, 12, None),
        (one_drop_each, 12, None),
        # An input-specific 400 stops nothing else.
        (one_bad_request, 6, PartialEmbeddingError),
    ],
    ids=["slow-401", "500-once", "429-once", "drop-once", "one-400"],
)
def test_both_modes_send_exactly_the_same_requests(
    behave: Any, expected_requests: int, expected: type[Exception] | None
) -> None:
    results = {mode: outcome(mode, behave) for mode in MODES}
    for mode, (result, sent) in results.items():
        assert sent == expected_requests, f"{mode} sent {sent}"
        if expected is None:
            assert len(result.require_dense()) == 60, mode
        else:
            assert isinstance(result, expected), (mode, result)
    if expected is PartialEmbeddingError:
        for result, _ in results.values():
            assert result.failed_positions == list(range(20, 30))
