"""Request bodies and reply parsing for both protocols: pure functions, no network."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest

from dashscope_embed import (
    APIError,
    AuthenticationError,
    BadRequestError,
    BadResponseError,
    ContentFilterError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
)
from dashscope_embed.config import ClientSettings
from dashscope_embed.models import resolve_model
from dashscope_embed.options import TextEmbeddingOptions, TextParams, text_params
from dashscope_embed.protocol import endpoint_for, native, openai_compatible
from dashscope_embed.protocol.common import parse_error_reply, parse_retry_after

NATIVE = endpoint_for("text-embedding", "native")
COMPAT = endpoint_for("text-embedding", "openai-compatible")
SETTINGS = ClientSettings(base_url="https://dashscope.aliyuncs.com")


def params(model: str = "text-embedding-v4", **kw: Any) -> TextParams:
    text_type = kw.pop("text_type", None)
    return text_params(resolve_model(model), text_type, TextEmbeddingOptions(**kw))


def body_of(endpoint: Any, items: list[str], p: TextParams) -> dict[str, Any]:
    request = endpoint.request(SETTINGS, items, p)
    assert request.json is not None
    return dict(request.json)


# ----------------------------------------------------------------------- request bodies
@pytest.mark.parametrize(
    ("kwargs", "expected_parameters"),
    [
        ({}, {}),
        ({"text_type": "query"}, {"text_type": "query"}),
        ({"text_type": "document", "dimension": 512}, {"text_type": "document", "dimension": 512}),
        ({"output_type": "sparse"}, {"output_type": "sparse"}),
        (
            {"output_type": "dense&sparse", "dimension": 2048},
            {"dimension": 2048, "output_type": "dense&sparse"},
        ),
        (
            {"text_type": "query", "instruct": "Given a question, retrieve passages"},
            {"text_type": "query", "instruct": "Given a question, retrieve passages"},
        ),
        (
            {
                "text_type": "query",
                "instruct": "Find code",
                "dimension": 64,
                "output_type": "dense&sparse",
            },
            {
                "text_type": "query",
                "dimension": 64,
                "output_type": "dense&sparse",
                "instruct": "Find code",
            },
        ),
    ],
)
def test_native_body_sends_exactly_what_is_set(
    kwargs: dict[str, object], expected_parameters: dict[str, object]
) -> None:
    request = NATIVE.request(SETTINGS, ["a", "b"], params(**kwargs))
    assert request.url == (
        "https://dashscope.aliyuncs.com/api/v1/services/embeddings/text-embedding/text-embedding"
    )
    assert request.json == {
        "model": "text-embedding-v4",
        "input": {"texts": ["a", "b"]},
        "parameters": expected_parameters,
    }


def test_native_body_never_sends_dimension_to_fixed_size_models() -> None:
    body = body_of(NATIVE, ["a"], params("text-embedding-v2", dimension=1536, text_type="query"))
    assert body["parameters"] == {"text_type": "query"}


def test_compatible_body_uses_openai_names() -> None:
    body = body_of(COMPAT, ["x", "y"], params(dimension=256))
    assert body == {
        "model": "text-embedding-v4",
        "input": ["x", "y"],
        "encoding_format": "float",
        "dimensions": 256,
    }
    assert "dimensions" not in body_of(COMPAT, ["x"], params())


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"text_type": "query"}, "text_type"),
        ({"instruct": "x"}, "instruct"),
        ({"output_type": "sparse"}, "output_type"),
    ],
)
def test_compatible_protocol_refuses_native_only_parameters(
    kwargs: dict[str, object], named: str
) -> None:
    with pytest.raises(InvalidInputError, match=f"{named}.*protocol='native'"):
        COMPAT.check(params(**kwargs))


def test_compatible_protocol_refuses_models_it_does_not_serve() -> None:
    with pytest.raises(InvalidInputError, match="not served by the OpenAI-compatible"):
        COMPAT.check(params("text-embedding-v2"))


# ----------------------------------------------------------------------- native replies
def native_reply(rows: list[dict[str, object]], tokens: int = 7) -> bytes:
    return json.dumps(
        {"output": {"embeddings": rows}, "usage": {"total_tokens": tokens}, "request_id": "rid-1"}
    ).encode()


def test_native_rows_are_placed_by_text_index_not_array_order() -> None:
    p = params(dimension=64)
    rows = [
        {"text_index": 2, "embedding": [2.0] * 64},
        {"text_index": 0, "embedding": [0.0] * 64},
        {"text_index": 1, "embedding": [1.0] * 64},
    ]
    parsed = native.parse_reply(native_reply(rows), 3, p)
    assert parsed.dense is not None
    assert [v[0] for v in parsed.dense] == [0.0, 1.0, 2.0]
    assert parsed.total_tokens == 7 and parsed.request_id == "rid-1"
    assert parsed.sparse is None


def test_native_sparse_and_dense_halves_from_one_reply() -> None:
    rows = [
        {
            "text_index": 0,
            "embedding": [0.5] * 1024,
            "sparse_embedding": [
                {"index": 7149, "value": 0.829, "token": "wind"},
                {"index": 11, "value": 0.1, "token": "a"},
            ],
        }
    ]
    parsed = native.parse_reply(native_reply(rows), 1, params(output_type="dense&sparse"))
    assert parsed.dense is not None and len(parsed.dense[0]) == 1024
    assert parsed.sparse is not None
    assert parsed.sparse[0].indices == [7149, 11]
    assert parsed.sparse[0].as_dict() == {7149: 0.829, 11: 0.1}
    assert parsed.sparse[0].tokens == ["wind", "a"]


def test_sparse_only_reply_needs_no_dense_vector() -> None:
    rows = [{"text_index": 0, "sparse_embedding": [{"index": 1, "value": 0.5, "token": "x"}]}]
    parsed = native.parse_reply(native_reply(rows), 1, params(output_type="sparse"))
    assert parsed.dense is None and parsed.sparse is not None


@pytest.mark.parametrize(
    ("rows", "expected", "message"),
    [
        ([{"text_index": 0, "embedding": [0.0] * 64}], 2, r"rows \[1\] missing"),
        (
            [
                {"text_index": 0, "embedding": [0.0] * 64},
                {"text_index": 0, "embedding": [0.0] * 64},
            ],
            2,
            "returned twice",
        ),
        ([{"text_index": 5, "embedding": [0.0] * 64}], 1, "outside"),
        ([{"text_index": 0, "embedding": [0.0] * 63}], 1, "64 floats, got 63"),
        ([{"text_index": 0}], 1, "64 floats, got NoneType"),
        ([{"text_index": "0", "embedding": [0.0] * 64}], 1, "outside"),
    ],
)
def test_short_duplicated_or_misshapen_replies_are_errors(
    rows: list[dict[str, object]], expected: int, message: str
) -> None:
    with pytest.raises(BadResponseError, match=message) as info:
        native.parse_reply(native_reply(rows), expected, params(dimension=64))
    assert info.value.request_id == "rid-1"
    assert info.value.retryable


def test_requested_sparse_half_missing_is_an_error() -> None:
    rows = [{"text_index": 0, "embedding": [0.0] * 1024}]
    with pytest.raises(BadResponseError, match="no sparse_embedding"):
        native.parse_reply(native_reply(rows), 1, params(output_type="dense&sparse"))


def test_non_json_success_body_is_a_bad_response() -> None:
    with pytest.raises(BadResponseError, match="not valid JSON"):
        native.parse_reply(b"<html>proxy</html>", 1, params())


# ----------------------------------------------------------------------- compatible replies
def test_compatible_reply_with_floats_or_base64() -> None:
    p = params(dimension=64)
    floats = [0.25] * 64
    packed = base64.b64encode(struct.pack("<64f", *([0.5] * 64))).decode()
    content = json.dumps(
        {
            "data": [
                {"embedding": packed, "index": 1, "object": "embedding"},
                {"embedding": floats, "index": 0, "object": "embedding"},
            ],
            "model": "text-embedding-v4",
            "object": "list",
            "usage": {"prompt_tokens": 6, "total_tokens": 6},
            "id": "rid-c",
        }
    ).encode()
    parsed = openai_compatible.parse_reply(content, 2, p)
    assert parsed.dense == [floats, [0.5] * 64]
    assert parsed.total_tokens == 6 and parsed.request_id == "rid-c"


def test_compatible_bad_base64_is_a_bad_response() -> None:
    content = json.dumps({"data": [{"embedding": "!!notbase64", "index": 0}]}).encode()
    with pytest.raises(BadResponseError, match="base64"):
        openai_compatible.parse_reply(content, 1, params())


# ----------------------------------------------------------------------- error replies
@pytest.mark.parametrize(
    ("status", "body", "cls", "code"),
    [
        (
            401,
            {"code": "InvalidApiKey", "message": "Invalid API-key provided.", "request_id": "r1"},
            AuthenticationError,
            "InvalidApiKey",
        ),
        (
            400,
            {"code": "InvalidParameter", "message": "batch size is invalid", "request_id": "r1"},
            BadRequestError,
            "InvalidParameter",
        ),
        (
            400,
            {"code": "Arrearage", "message": "Access denied", "request_id": "r1"},
            PermissionDeniedError,
            "Arrearage",
        ),
        (
            403,
            {"code": "AccessDenied.Unpurchased", "message": "no", "request_id": "r1"},
            PermissionDeniedError,
            "AccessDenied.Unpurchased",
        ),
        (
            400,
            {"code": "InvalidParameter", "message": "Model not exist.", "request_id": "r1"},
            NotFoundError,
            "InvalidParameter",
        ),
        (
            400,
            {"code": "DataInspectionFailed", "message": "inappropriate", "request_id": "r1"},
            ContentFilterError,
            "DataInspectionFailed",
        ),
        (
            429,
            {"code": "Throttling.RateQuota", "message": "slow down", "request_id": "r1"},
            RateLimitError,
            "Throttling.RateQuota",
        ),
        (
            500,
            {"code": "InternalError", "message": "oops", "request_id": "r1"},
            ServerError,
            "InternalError",
        ),
        (
            503,
            {"code": "ServiceUnavailable", "msg": "legacy msg key", "request_id": "r1"},
            ServerError,
            "ServiceUnavailable",
        ),
        (
            401,
            {
                "error": {
                    "message": "Incorrect API key provided.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                },
                "request_id": "r1",
                "id": "r1",
            },
            AuthenticationError,
            "invalid_api_key",
        ),
        (
            404,
            {
                "error": {
                    "message": "The model `x` does not exist",
                    "code": "model_not_found",
                    "type": "invalid_request_error",
                },
                "id": "r1",
            },
            NotFoundError,
            "model_not_found",
        ),
    ],
)
def test_error_bodies_of_both_protocols_map_to_typed_errors(
    status: int, body: dict[str, object], cls: type[APIError], code: str
) -> None:
    error = parse_error_reply(status, {}, json.dumps(body).encode())
    assert type(error) is cls
    assert error.status_code == status and error.code == code and error.request_id == "r1"
    assert error.message


def test_non_json_error_body_keeps_text_and_header_request_id() -> None:
    error = parse_error_reply(502, {"x-request-id": "gw-9"}, b"<html>Bad Gateway</html>")
    assert isinstance(error, ServerError)
    assert error.request_id == "gw-9" and "Bad Gateway" in error.message
    assert error.retryable
    empty = parse_error_reply(504, {}, b"")
    assert "504" in empty.message and empty.retryable


def test_retry_after_headers() -> None:
    assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None


def test_free_quota_exhaustion_is_not_retried_but_tpm_throttling_is() -> None:
    free = parse_error_reply(
        429,
        {},
        json.dumps(
            {"code": "Throttling.AllocationQuota", "message": "Free allocated quota exceeded."}
        ).encode(),
    )
    tpm = parse_error_reply(
        429,
        {},
        json.dumps(
            {"code": "Throttling.AllocationQuota", "message": "Allocated quota exceeded."}
        ).encode(),
    )
    assert not free.retryable and tpm.retryable


def test_should_retry_header_overrides_the_status_rule() -> None:
    assert not parse_error_reply(503, {"x-should-retry": "false"}, b"{}").retryable
    assert parse_error_reply(400, {"x-should-retry": "true"}, b"{}").retryable


def test_error_text_renders_status_code_and_request_id() -> None:
    error = parse_error_reply(
        400,
        {},
        json.dumps({"code": "InvalidParameter", "message": "bad", "request_id": "rid-7"}).encode(),
    )
    assert str(error) == "[400 InvalidParameter] bad (request_id=rid-7)"
