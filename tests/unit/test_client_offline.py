"""The client end to end over an in-memory HTTP transport (no sockets)."""

from __future__ import annotations

import json
import logging
import pickle
import threading
from collections.abc import Callable

import httpx
import pytest

from dashscope_embed import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    DashScopeClient,
    InvalidInputError,
    PartialEmbeddingError,
    RateLimitError,
    RetryPolicy,
    ServerError,
)

SECRET = "sk-never-print-me-42"
FAST = RetryPolicy(max_retries=3, initial_delay=0.001, max_delay=0.002, total_timeout=5)
Handler = Callable[[httpx.Request], httpx.Response]


def ok_reply(request: httpx.Request, dim: int = 1024) -> httpx.Response:
    body = json.loads(request.content)
    texts = body["input"]["texts"]
    rows = [
        {"text_index": i, "embedding": [float(len(t))] + [0.0] * (dim - 1)}
        for i, t in enumerate(texts)
    ]
    rows.reverse()  # the service's array order is not a promise
    return httpx.Response(
        200,
        json={
            "output": {"embeddings": rows},
            "usage": {"total_tokens": len(texts)},
            "request_id": f"rid-{texts[0]}",
        },
    )


class Recorder:
    """Wraps a handler; remembers every request body (thread-safe)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.bodies: list[dict[str, object]] = []
        self.headers: list[httpx.Headers] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.bodies.append(json.loads(request.content))
            self.headers.append(request.headers)
        return self.handler(request)

    def texts_sent(self) -> list[str]:
        return [t for b in self.bodies for t in b["input"]["texts"]]  # type: ignore[index]


def make_client(handler: Handler, **kwargs: object) -> DashScopeClient:
    kwargs.setdefault("retry", FAST)
    return DashScopeClient(
        api_key=SECRET, http_client=httpx.Client(transport=httpx.MockTransport(handler)), **kwargs
    )  # type: ignore[arg-type]


def test_results_come_back_in_input_order_across_concurrent_batches() -> None:
    recorder = Recorder(ok_reply)
    client = make_client(recorder, max_concurrency=4)
    texts = ["x" * (i + 1) for i in range(37)]
    result = client.embed(texts)
    assert [v[0] for v in result.require_dense()] == [float(i + 1) for i in range(37)]
    assert len(recorder.bodies) == 4  # 10 + 10 + 10 + 7
    assert max(len(b["input"]["texts"]) for b in recorder.bodies) == 10  # type: ignore[index]
    assert result.usage.total_tokens == 37 and len(result.request_ids) == 4


def test_identical_texts_are_sent_once() -> None:
    recorder = Recorder(ok_reply)
    result = make_client(recorder).embed(["a", "bb", "a", "a", "bb"])
    assert sorted(recorder.texts_sent()) == ["a", "bb"]
    assert [v[0] for v in result.require_dense()] == [1.0, 2.0, 1.0, 1.0, 2.0]


def test_request_carries_auth_workspace_and_json() -> None:
    recorder = Recorder(ok_reply)
    make_client(recorder, workspace="llm-ws9").embed(
        ["q"], text_type="query", instruct="Find answers"
    )
    headers = recorder.headers[0]
    assert headers["authorization"] == f"Bearer {SECRET}"
    assert headers["x-dashscope-workspace"] == "llm-ws9"
    assert headers["content-type"] == "application/json"
    assert recorder.bodies[0] == {
        "model": "text-embedding-v4",
        "input": {"texts": ["q"]},
        "parameters": {"text_type": "query", "instruct": "Find answers"},
    }


def test_transient_failures_are_retried_until_success() -> None:
    failures = {"count": 0}

    def flaky(request: httpx.Request) -> httpx.Response:
        if failures["count"] < 2:
            failures["count"] += 1
            if failures["count"] == 1:
                raise httpx.RemoteProtocolError("peer closed connection", request=request)
            return httpx.Response(503, json={"code": "ServiceUnavailable", "message": "busy"})
        return ok_reply(request)

    recorder = Recorder(flaky)
    result = make_client(recorder).embed(["hello"])
    assert len(recorder.bodies) == 3 and len(result) == 1


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [(400, "InvalidParameter", BadRequestError), (401, "InvalidApiKey", AuthenticationError)],
)
def test_client_errors_are_not_retried(status: int, code: str, cls: type[Exception]) -> None:
    recorder = Recorder(
        lambda r: httpx.Response(
            status, json={"code": code, "message": "no", "request_id": "rid-e"}
        )
    )
    with pytest.raises(cls) as info:
        make_client(recorder).embed(["hello"])
    assert len(recorder.bodies) == 1
    assert info.value.request_id == "rid-e"  # type: ignore[attr-defined]


def test_a_finished_batch_is_never_resent_when_another_fails() -> None:
    third_sent = threading.Event()

    def one_batch_always_fails(request: httpx.Request) -> httpx.Response:
        texts = json.loads(request.content)["input"]["texts"]
        if "t20" in texts:
            third_sent.set()
        if "poison" in texts:
            # Fail only once the third batch is under way: a failure for good stops the
            # batches not yet sent (as it should), so otherwise what fails would depend
            # on how fast this machine ran the retries.
            third_sent.wait(10)
            return httpx.Response(
                500, json={"code": "InternalError", "message": "boom", "request_id": "rid-500"}
            )
        return ok_reply(request)

    recorder = Recorder(one_batch_always_fails)
    client = make_client(recorder, max_concurrency=2)
    texts = [f"t{i}" for i in range(25)]
    texts[14] = "poison"
    with pytest.raises(PartialEmbeddingError) as info:
        client.embed(texts)
    error = info.value
    assert error.failed_positions == list(range(10, 20))
    assert isinstance(error.errors[0], ServerError) and error.errors[0].request_id == "rid-500"
    sent = recorder.texts_sent()
    for finished in texts[:10] + texts[20:]:
        assert sent.count(finished) == 1  # never paid twice
    assert sent.count("poison") == 1 + FAST.max_retries
    partial = error.partial
    assert partial.dense is not None
    assert partial.dense[9] is not None and partial.dense[10] is None
    # Resume: only the missing texts are sent, and the merge is complete and ordered.
    fixed = list(texts)
    fixed[14] = "cured"
    recorder.bodies.clear()
    rest = client.embed([fixed[i] for i in error.failed_positions])
    whole = partial.complete_with(rest)
    assert sorted(recorder.texts_sent()) == sorted(fixed[10:20])
    assert [v[0] for v in whole.require_dense()] == [float(len(t)) for t in fixed]


def test_authentication_failure_stops_remaining_batches() -> None:
    recorder = Recorder(
        lambda r: httpx.Response(
            401, json={"code": "InvalidApiKey", "message": "Invalid API-key provided."}
        )
    )
    with pytest.raises(AuthenticationError):
        make_client(recorder, max_concurrency=1).embed([f"t{i}" for i in range(50)])
    assert len(recorder.bodies) == 1


def test_bad_input_is_refused_before_any_request() -> None:
    recorder = Recorder(ok_reply)
    client = make_client(recorder)
    with pytest.raises(InvalidInputError, match=r"texts\[1\]: empty text"):
        client.embed(["fine", "", "also fine"])
    with pytest.raises(InvalidInputError, match="dimension=333"):
        client.embed(["fine"], dimension=333)
    assert recorder.bodies == []


def test_batch_size_cannot_exceed_the_row_limit() -> None:
    client = make_client(Recorder(ok_reply))
    with pytest.raises(ValueError, match=r"outside 1\.\.10"):
        client.embed(["a"], batch_size=11)
    recorder = Recorder(ok_reply)
    make_client(recorder).embed([f"t{i}" for i in range(9)], batch_size=3)
    assert len(recorder.bodies) == 3


def test_short_reply_is_retried_then_reported_never_padded() -> None:
    def short(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            json={
                "output": {"embeddings": [{"text_index": 0, "embedding": [0.0] * 1024}]},
                "usage": {"total_tokens": 1},
                "request_id": "rid-short",
            },
        )

    recorder = Recorder(short)
    with pytest.raises(Exception, match=r"rows \[1\] missing") as info:
        make_client(recorder).embed(["a", "b"])
    assert getattr(info.value, "request_id", None) == "rid-short"
    assert len(recorder.bodies) == 1 + FAST.max_retries


def test_key_never_reaches_logs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    def dropped(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    caplog.set_level(logging.DEBUG)
    with pytest.raises(APIConnectionError) as info:
        make_client(dropped).embed(["hello"])
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    assert SECRET not in pickle.dumps(info.value).decode("latin-1")
    assert SECRET not in caplog.text
    assert "retry 1" in caplog.text  # retries are logged (INFO), without the key


def test_typed_errors_survive_pickling() -> None:
    recorder = Recorder(
        lambda r: httpx.Response(
            429,
            headers={"retry-after": "0"},
            json={"code": "Throttling.RateQuota", "message": "slow", "request_id": "rid-q"},
        )
    )
    client = make_client(recorder, retry=RetryPolicy(max_retries=0))
    with pytest.raises(RateLimitError) as info:
        client.embed(["a"])
    clone = pickle.loads(pickle.dumps(info.value))
    assert type(clone) is type(info.value)
    assert (clone.status_code, clone.code, clone.request_id) == (
        429,
        "Throttling.RateQuota",
        "rid-q",
    )


async def test_async_embed_matches_sync_and_retries() -> None:
    calls = {"n": 0}

    def flaky(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            return httpx.Response(500, json={"code": "InternalError", "message": "x"})
        return ok_reply(request)

    transport = httpx.MockTransport(flaky)
    client = DashScopeClient(
        api_key=SECRET,
        retry=FAST,
        max_concurrency=3,
        async_http_client=httpx.AsyncClient(transport=transport),
    )
    texts = ["y" * (i + 1) for i in range(23)]
    result = await client.aembed(texts, dimension=1024)
    assert [v[0] for v in result.require_dense()] == [float(i + 1) for i in range(23)]
    assert calls["n"] == 4  # 3 batches + 1 retry


async def test_async_partial_failure_keeps_finished_work() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        texts = json.loads(request.content)["input"]["texts"]
        if "bad" in texts:
            return httpx.Response(400, json={"code": "DataInspectionFailed", "message": "no"})
        return ok_reply(request)

    client = DashScopeClient(
        api_key=SECRET,
        retry=FAST,
        async_http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
    )
    texts = [f"t{i}" for i in range(20)]
    texts[3] = "bad"
    with pytest.raises(PartialEmbeddingError) as info:
        await client.aembed(texts)
    assert info.value.failed_positions == list(range(10))
    assert info.value.completed_positions == list(range(10, 20))


def test_result_files_are_downloaded_without_the_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b'{"text_index": 0, "embedding": [1.0]}\n')

    client = make_client(handler)
    content = client._transport.download("https://result-bucket.example.com/out.txt.gz?sig=1")
    assert content.startswith(b'{"text_index"')
    assert "authorization" not in seen[0].headers
    assert SECRET not in str(seen[0].headers)
