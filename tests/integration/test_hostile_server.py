"""The client against a server that lies, bombs, stalls or names an error in a 200.

Every promise is checked in sync and async mode: a vector is right or the call raises;
a reply costs bounded memory and time; the key never leaves in an error.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import threading
import time
import tracemalloc
from typing import Any

import pytest

from dashscope_embed import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadResponseError,
    DashScopeClient,
    DashScopeError,
    EmbedStreamError,
    PartialEmbeddingError,
    RateLimitError,
    RetryPolicy,
    ServerError,
)
from tests.integration.hostile import (
    Conn,
    RawRequest,
    gzip_bomb,
    hostile,
    native_reply,
    reply,
    response_bytes,
)
from tests.leaks import secret_leaks

KEY = "sk-hostile-5f2a9c1e0b7d4a3c8e6f"
DIM = 4
NO_RETRY = RetryPolicy(max_retries=0)
MODES = ["sync", "async"]


def client_for(base_url: str, **kwargs: Any) -> DashScopeClient:
    kwargs.setdefault("retry", NO_RETRY)
    return DashScopeClient(api_key=KEY, base_url=base_url, **kwargs)


def embed(client: DashScopeClient, mode: str, texts: list[str], **kwargs: Any) -> Any:
    """One call in the given mode; the error, if any, is raised as the caller sees it."""
    if mode == "sync":
        return client.embed(texts, **kwargs)
    return asyncio.run(client.aembed(texts, **kwargs))


def failure(client: DashScopeClient, mode: str, texts: list[str], **kwargs: Any) -> Exception:
    with pytest.raises(DashScopeError) as info:
        embed(client, mode, texts, **kwargs)
    return info.value


SPEC = {"model": "text-embedding-v4", "dimension": 64}


def row(values: str) -> str:
    """A 64-component vector, JSON text, whose first component is ``values``."""
    return "[" + ",".join([values] + ["0.01"] * 63) + "]"


# ----------------------------------------------------------------- wrong vectors
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "first", ["NaN", "Infinity", "-Infinity", "1e999", '"0.01"', "null", "true", "[0.1]", "{}"]
)
def test_a_row_that_is_not_finite_numbers_is_never_returned(mode: str, first: str) -> None:
    with hostile(reply(200, native_reply([row(first)]))) as server:
        error = failure(client_for(server.base_url), mode, ["hello"], **SPEC)
    assert isinstance(error, BadResponseError)
    # Named where it is, or (NaN and Infinity are not JSON: a strict parser stops there)
    # the reply refused whole.
    assert "component 0" in str(error) or "not valid JSON" in str(error)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("first", ["[0.1]", "[[0.1]]", "true", '"0.01"', "null", "1e999", "1e39"])
def test_a_numpy_stream_never_holds_a_component_the_reply_did_not_give(
    mode: str, first: str
) -> None:
    # The array path reads replies its own way (pysimdjson, float32): a nested array is
    # not flattened, a boolean not made 1.0, a float past float32's range not made inf.
    def consume(client: DashScopeClient) -> None:
        if mode == "sync":
            list(client.embed_stream(["hello"], as_numpy=True, **SPEC))
            return

        async def drain() -> None:
            async for _ in client.aembed_stream(["hello"], as_numpy=True, **SPEC):
                pass

        asyncio.run(drain())

    with (
        hostile(reply(200, native_reply([row(first)]))) as server,
        pytest.raises(EmbedStreamError) as info,
    ):
        consume(client_for(server.base_url))
    cause = info.value.cause
    assert isinstance(cause, BadResponseError) and info.value.position == 0
    assert "component 0" in str(cause) or "not valid JSON" in str(cause)


@pytest.mark.parametrize("mode", MODES)
def test_a_bad_sparse_weight_is_never_returned(mode: str) -> None:
    body = (
        b'{"output":{"embeddings":[{"text_index":0,"sparse_embedding":'
        b'[{"index":7,"value":"0.5","token":"x"}]}]},"usage":{"total_tokens":2}}'
    )
    with hostile(reply(200, body)) as server:
        error = failure(client_for(server.base_url), mode, ["hello"], output_type="sparse")
    assert isinstance(error, BadResponseError) and "sparse_embedding[0]" in str(error)


@pytest.mark.parametrize("mode", MODES)
def test_integer_components_are_accepted_as_floats(mode: str) -> None:
    with hostile(reply(200, native_reply([row("0")]))) as server:
        result = embed(client_for(server.base_url), mode, ["hello"], **SPEC)
    assert result.require_dense()[0][0] == 0.0 and type(result.require_dense()[0][0]) is float


@pytest.mark.parametrize("mode", MODES)
def test_an_error_body_in_a_200_is_raised_as_that_error_and_not_retried(mode: str) -> None:
    body = {"code": "InvalidApiKey", "message": "Invalid API-key provided.", "request_id": "r-1"}
    with hostile(reply(200, body)) as server:
        client = client_for(server.base_url, retry=RetryPolicy(max_retries=4))
        error = failure(client, mode, ["hello"])
        assert len(server.requests) == 1
    assert isinstance(error, AuthenticationError) and error.request_id == "r-1"


@pytest.mark.parametrize("mode", MODES)
def test_a_server_error_named_in_a_200_is_retried(mode: str) -> None:
    answers = iter(
        [
            response_bytes(200, b'{"code":"InternalError","message":"try later"}'),
            response_bytes(200, native_reply([row("0.5")])),
        ]
    )
    with hostile(lambda request, conn: conn.send(next(answers))) as server:
        client = client_for(server.base_url, retry=RetryPolicy(max_retries=2, initial_delay=0))
        result = embed(client, mode, ["hello"], **SPEC)
    assert result.require_dense()[0][0] == 0.5


# ----------------------------------------------------------------- bounded replies
@pytest.mark.parametrize("mode", MODES)
def test_a_plain_body_labelled_gzip_is_a_package_error_without_the_key(mode: str) -> None:
    handler = reply(200, native_reply([row("0.1")]), {"Content-Encoding": "gzip"})
    with hostile(handler) as server:
        error = failure(client_for(server.base_url), mode, ["hello"], **SPEC)
    assert isinstance(error, BadResponseError) and "gzip" in str(error)
    assert secret_leaks(error, KEY) == []


@pytest.mark.parametrize("mode", MODES)
def test_a_gzip_bomb_costs_bounded_memory(mode: str) -> None:
    bomb = gzip_bomb(300 * 1024 * 1024)
    assert len(bomb) < 400 * 1024
    with hostile(reply(200, bomb, {"Content-Encoding": "gzip"})) as server:
        tracemalloc.start()
        try:
            error = failure(client_for(server.base_url), mode, ["hello"], **SPEC)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert isinstance(error, BadResponseError) and "larger than" in str(error)
    assert peak < 32 * 1024 * 1024, f"peak {peak / 1e6:.0f} MB while refusing a gzip bomb"


@pytest.mark.parametrize("mode", MODES)
def test_an_oversized_reply_is_not_read_and_costs_one_bounded_read_per_attempt(
    mode: str,
) -> None:
    size = 200 * 1024 * 1024
    chunk = b" " * (1024 * 1024)

    def endless(request: RawRequest, conn: Conn) -> None:
        conn.send(response_bytes(200, b"", {"Content-Length": str(size)}))
        for _ in range(size // len(chunk)):
            conn.send(chunk)

    with hostile(endless) as server:
        client = client_for(server.base_url, retry=RetryPolicy(max_retries=2, initial_delay=0))
        started = time.monotonic()
        error = failure(client, mode, ["hello"], **SPEC)
        elapsed = time.monotonic() - started
    assert isinstance(error, BadResponseError) and "declares more than" in str(error)
    assert elapsed < 5


@pytest.mark.parametrize("mode", MODES)
def test_an_undeclared_oversized_reply_stops_at_the_limit(mode: str) -> None:
    def chunked(request: RawRequest, conn: Conn) -> None:
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        conn.send(b"Transfer-Encoding: chunked\r\n\r\n")
        piece = b" " * 65536
        for _ in range(3200):  # 200 MB if read whole
            conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")

    with hostile(chunked) as server:
        tracemalloc.start()
        try:
            error = failure(client_for(server.base_url), mode, ["hello"], **SPEC)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert isinstance(error, BadResponseError) and "larger than" in str(error)
    assert peak < 32 * 1024 * 1024


# ----------------------------------------------------------------- deadlines
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("phase", ["headers", "body"])
def test_a_server_trickling_bytes_cannot_hold_an_attempt_past_its_timeout(
    mode: str, phase: str
) -> None:
    full = response_bytes(200, native_reply([row("0.1")]))
    split = full.index(b"\r\n\r\n") + 4 if phase == "body" else 12

    def slowloris(request: RawRequest, conn: Conn) -> None:
        conn.send(full[:split])
        conn.trickle(full[split:], 0.1)  # each byte well within a read timeout

    with hostile(slowloris) as server:
        client = client_for(server.base_url, timeout=1.0)
        started = time.monotonic()
        error = failure(client, mode, ["hello"], **SPEC)
        elapsed = time.monotonic() - started
    assert isinstance(error, APITimeoutError)
    assert elapsed < 2.0, f"one attempt with timeout=1 took {elapsed:.1f}s"
    assert secret_leaks(error, KEY) == []


@pytest.mark.parametrize("mode", MODES)
def test_total_timeout_bounds_the_attempt_in_progress(mode: str) -> None:
    def silent(request: RawRequest, conn: Conn) -> None:
        time.sleep(5)

    with hostile(silent) as server:
        retry = RetryPolicy(max_retries=5, total_timeout=1.0)
        client = client_for(server.base_url, timeout=30.0, retry=retry)
        started = time.monotonic()
        error = failure(client, mode, ["hello"], **SPEC)
        elapsed = time.monotonic() - started
    assert isinstance(error, APITimeoutError) and elapsed < 2.0


@pytest.mark.parametrize("mode", MODES)
def test_a_retry_after_longer_than_allowed_fails_at_once_with_the_wait(mode: str) -> None:
    body = {"code": "Throttling", "message": "Requests throttling triggered."}
    with hostile(reply(429, body, {"Retry-After": "99999"})) as server:
        client = client_for(server.base_url, retry=RetryPolicy(max_retries=5))
        started = time.monotonic()
        error = failure(client, mode, ["hello"])
        assert len(server.requests) == 1
    assert isinstance(error, RateLimitError) and error.retry_after == 99999
    assert time.monotonic() - started < 1.0


# ----------------------------------------------------------------- the key
def _refused_port() -> str:
    with hostile(reply(200)) as server:
        url = server.base_url
    return url  # closed now: connecting is refused


def _drop(request: RawRequest, conn: Conn) -> None:
    conn.send(response_bytes(200, native_reply([row("0.1")]))[:40])
    conn.drop()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        (reply(401, {"code": "InvalidApiKey", "message": "Invalid API-key provided."}),
         AuthenticationError),
        (reply(500, "<html>upstream died</html>", {"Content-Type": "text/html"}), ServerError),
        (reply(200, b"{not json"), BadResponseError),
        (_drop, APIConnectionError),
        (None, APIConnectionError),
        (lambda request, conn: conn.send(b"HTTP/9 200 OK\r\n\r\n"), APIConnectionError),
        (lambda request, conn: time.sleep(2), APITimeoutError),
    ],
    ids=["401", "500-html", "bad-json", "dropped", "refused", "not-http", "stalled"],
)  # fmt: skip
def test_the_key_is_in_no_error_object_pickle_chain_or_frame(
    mode: str, handler: Any, expected: type[Exception]
) -> None:
    if handler is None:
        error = failure(client_for(_refused_port()), mode, ["hello"], **SPEC)
    else:
        with hostile(handler) as server:
            error = failure(client_for(server.base_url, timeout=0.5), mode, ["hello"], **SPEC)
            assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert type(error) is expected
    assert secret_leaks(error, KEY) == []


def test_the_key_goes_only_to_the_configured_origin() -> None:
    """A redirect or a URL on another host never gets the Authorization header."""
    with hostile(reply(200, {"ok": True})) as other:
        client = client_for("http://localhost:1")
        # Straight through the transport, as a job's result download would go.
        client._transport.get(other.base_url + "/elsewhere")
        assert "authorization" not in other.requests[0].headers


def test_a_partial_failure_keeps_the_key_out_of_every_attached_error() -> None:
    calls = iter(range(100))

    def half(request: RawRequest, conn: Conn) -> None:
        texts = json.loads(request.body)["input"]["texts"]
        if next(calls) % 2:
            conn.send(response_bytes(400, b'{"code":"InvalidParameter","message":"no"}'))
        else:
            conn.send(response_bytes(200, native_reply([row("0.1")] * len(texts))))

    with hostile(half) as server:
        client = client_for(server.base_url, max_concurrency=1)
        error = failure(client, "sync", [f"t{i}" for i in range(30)], **SPEC)
    assert secret_leaks(error, KEY) == []


@pytest.mark.parametrize("mode", MODES)
def test_a_request_that_fails_for_good_says_how_often_it_was_sent_and_what_it_stopped(
    mode: str,
) -> None:
    """A request that fails for good (other than for its own input) stops the call. The
    caller must be able to tell bad luck from a broken service: the error says how many
    times its request was sent, the partial error how many requests were never sent."""

    another_arrived = threading.Event()

    def answer(request: RawRequest, conn: Conn) -> None:
        texts = json.loads(request.body)["input"]["texts"]
        if "t0" in texts:  # the first request fails at once, every time
            # ... once another request is in flight, so that one finishes after the call
            # stopped (a thread started late must not make it "never sent" instead).
            another_arrived.wait(10)
            conn.send(response_bytes(500, b'{"code":"InternalError","message":"down"}'))
            return
        another_arrived.set()
        time.sleep(1.0)  # the others are slow: most are still waiting when it gives up
        rows = [row(str(int(text[1:]) / 1000)) for text in texts]
        conn.send(response_bytes(200, native_reply(rows)))

    texts = [f"t{i}" for i in range(100)]  # ten requests
    with hostile(answer) as server:
        retry = RetryPolicy(max_retries=2, initial_delay=0)
        client = client_for(server.base_url, max_concurrency=2, retry=retry)
        error = failure(client, mode, texts, **SPEC)
        sent = {json.loads(r.body)["input"]["texts"][0] for r in server.requests}
    assert isinstance(error, PartialEmbeddingError)
    (cause,) = error.errors
    assert isinstance(cause, ServerError) and cause.attempts == 3
    assert "sent 3 times" in str(cause) and "sent 3 times" in str(error)
    assert 1 <= error.unsent_requests == 10 - len(sent)
    assert f"{error.unsent_requests} request(s) were never sent" in str(error)
    assert len(error.failed_positions) == 10 * (1 + error.unsent_requests)
    for position in error.completed_positions:
        assert error.partial.dense[position][0] == position / 1000
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) and again.unsent_requests == error.unsent_requests
    assert again.errors[0].attempts == 3


@pytest.mark.parametrize("mode", MODES)
def test_a_slice_waiting_to_be_retried_does_not_idle_the_stream(mode: str) -> None:
    """Results are yielded in order, so a slice waiting for its retry holds back the
    ones after it; the window must be wide enough for the others to keep every request
    slot busy meanwhile (not sit idle, as a window of 2 slices per slot did)."""
    lock = threading.Lock()
    order: list[str] = []

    def handler(request: RawRequest, conn: Conn) -> None:
        texts = request.json()["input"]["texts"]
        with lock:
            order.append(texts[0])
            first_try = texts[0] == "t0" and order.count("t0") == 1
        if first_try:
            conn.send(response_bytes(503, b'{"code":"ServiceUnavailable","message":"busy"}',
                                     {"Retry-After": "1"}))  # fmt: skip
            return
        conn.send(response_bytes(200, native_reply([row("0.1")] * len(texts))))

    texts = [f"t{i}" for i in range(400)]
    with hostile(handler) as server:
        client = client_for(server.base_url, max_concurrency=2, retry=RetryPolicy(max_retries=2))
        if mode == "sync":
            got = [c.count for c in client.embed_stream(texts, **SPEC)]
        else:

            async def consume() -> list[int]:
                return [c.count async for c in client.aembed_stream(texts, **SPEC)]

            got = asyncio.run(consume())
    assert sum(got) == 400
    first, retried = [i for i, text in enumerate(order) if text == "t0"]
    sent_while_waiting = retried - first - 1
    # The window is 8 slices per slot: all but t0 and one sent alongside it go out meanwhile.
    assert sent_while_waiting >= 2 * 8 - 2, f"only {sent_while_waiting} slices sent meanwhile"


# ----------------------------------------------------------------- connections
@pytest.mark.parametrize("mode", MODES)
def test_a_pooled_connection_the_server_closed_is_not_sent_on(mode: str) -> None:
    """Servers and gateways close idle keep-alive connections without saying so in the
    reply. A request sent on such a connection fails (no retries here): the pool must
    see the close and open a new connection instead."""

    def answer_then_hang_up(request: RawRequest, conn: Conn) -> None:
        texts = request.json()["input"]["texts"]
        conn.send(response_bytes(200, native_reply([row("0.5")] * len(texts))))
        time.sleep(0.05)
        conn.drop()

    with hostile(answer_then_hang_up) as server:
        client = client_for(server.base_url)

        async def twice() -> list[Any]:
            first = await client.aembed(["one"], **SPEC)
            await asyncio.sleep(0.3)  # the close reaches the client's idle connection
            return [first, await client.aembed(["two"], **SPEC)]

        if mode == "sync":
            results = [client.embed(["one"], **SPEC)]
            time.sleep(0.3)
            results.append(client.embed(["two"], **SPEC))
        else:
            results = asyncio.run(twice())
        assert [r.require_dense()[0][0] for r in results] == [0.5, 0.5]
        assert server.connections == 2 and len(server.requests) == 2
