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
from dashscope_embed.retry import RetryAllowance
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


# ---------------------------------------------------------------- extra retries
class UnluckyServer:
    """Request "text 0" fails ``failures`` times in a row; the others succeed, slowly
    (20 ms each), so they are still coming in while it retries. Before each failure past
    the client's ``max_retries`` the server waits, on the client's own count, until
    another request succeeded while this one was out and enough succeeded overall to
    have earned the extra retry (one per ten): the test does not race the client."""

    def __init__(self, failures: int) -> None:
        self.allowance = RetryAllowance()  # the client's, once it exists
        self.failures = failures
        self.server = Server(self.behave)

    def behave(self, first: str, attempt: int, conn: Conn, texts: list[str]) -> None:
        if first != "text 0" or attempt > self.failures:
            time.sleep(0.02)
            ok(conn, texts)
            return
        extra = attempt - RETRY.max_retries  # the retry this failure asks for is extra
        if extra >= 1:
            arrived = self.allowance.successes
            wanted = max(10 * extra, arrived + 1)
            deadline = time.monotonic() + 20
            while self.allowance.successes < wanted and time.monotonic() < deadline:
                time.sleep(0.002)
        conn.send(response_bytes(500, b'{"code":"InternalError","message":"unlucky"}'))


def fixed_gate_client(base_url: str) -> DashScopeClient:
    # A fixed gate of four: these tests are about retries, not about finding capacity.
    return DashScopeClient(
        api_key="sk-test",
        base_url=base_url,
        retry=RETRY,
        max_concurrency=4,
        adaptive_concurrency=False,
    )


@pytest.mark.parametrize("mode", MODES)
def test_one_unlucky_request_does_not_stop_a_call_whose_others_succeed(mode: str) -> None:
    """Six failures in a row of one request (max_retries=3) while the others succeed:
    bad luck, not a service in trouble, so the call completes, every vector in place."""
    texts = [f"text {i}" for i in range(3000)]
    unlucky = UnluckyServer(failures=6)
    with hostile(unlucky.server) as box:
        client = fixed_gate_client(box.base_url)
        unlucky.allowance = client._engine.allowance
        if mode == "sync":
            result = client.embed(texts, dimension=64)
        else:
            result = asyncio.run(client.aembed(texts, dimension=64))
    assert len(result.require_dense()) == 3000
    assert unlucky.server.attempts["text 0"] == 7  # 1 + 3 retries + 3 extra ones
    assert sum(unlucky.server.attempts.values()) == 300 + 6


@pytest.mark.parametrize("mode", MODES)
def test_a_service_that_is_down_still_fails_after_max_retries(mode: str) -> None:
    """Tokens saved by a healthy call buy nothing when no other request succeeds while
    one is out: a lone query against a service gone down is sent 1 + max_retries times."""
    down = threading.Event()

    def behave(first: str, attempt: int, conn: Conn, texts: list[str]) -> None:
        if down.is_set():
            conn.send(response_bytes(500, b'{"code":"InternalError","message":"down"}'))
        else:
            ok(conn, texts)

    server = Server(behave)
    with hostile(server) as box:
        client = fixed_gate_client(box.base_url)

        def embed(texts: list[str]) -> Any:
            if mode == "sync":
                return client.embed(texts, dimension=64)
            return asyncio.run(client.aembed(texts, dimension=64))

        embed([f"healthy {i}" for i in range(300)])  # 30 successes: three tokens saved
        down.set()
        with pytest.raises(DashScopeError, match="sent 4 times"):
            embed(["query"])
    assert server.attempts["query"] == 4
