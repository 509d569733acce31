"""Pieces both protocols share: request parameters, parsed batches, error replies."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic_core

from dashscope_embed.errors import APIError, BadResponseError, error_class_for
from dashscope_embed.models import ModelSpec, OutputType, TextType
from dashscope_embed.types import SparseEmbedding


@dataclass(frozen=True, slots=True)
class EmbedParams:
    """Validated parameters of one embedding call (the same for all its requests)."""

    spec: ModelSpec
    text_type: TextType | None
    instruct: str | None
    dimension: int | None
    output_type: OutputType

    @property
    def expected_dimension(self) -> int:
        """Length every dense vector in the reply must have."""
        return self.dimension if self.dimension is not None else self.spec.default_dimension

    @property
    def wants_dense(self) -> bool:
        return self.output_type != "sparse"

    @property
    def wants_sparse(self) -> bool:
        return self.output_type != "dense"


@dataclass(frozen=True, slots=True)
class ParsedBatch:
    """One request's reply, rows in request order, checked complete."""

    dense: list[list[float]] | None
    sparse: list[SparseEmbedding] | None
    total_tokens: int
    request_id: str | None

    def __repr__(self) -> str:
        rows = len(self.dense if self.dense is not None else self.sparse or [])
        return (
            f"ParsedBatch(rows={rows}, total_tokens={self.total_tokens}, "
            f"request_id={self.request_id!r})"
        )


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """What to send: a path below the protocol's base URL and a JSON body."""

    path: str
    body: dict[str, Any]


def load_json(content: bytes, request_id: str | None = None) -> Any:
    """Parse a reply body with pydantic-core's Rust parser (fast, no extra copies)."""
    try:
        return pydantic_core.from_json(content)
    except ValueError as exc:
        raise BadResponseError(
            f"reply is not valid JSON ({exc}); first bytes: {content[:200]!r}",
            request_id=request_id,
        ) from None


def native_embeddings(content: bytes) -> tuple[dict[str, Any], str | None, list[Any]]:
    """A native 2xx reply's body, ``request_id`` and ``output.embeddings`` list; a reply
    without that list is a :class:`BadResponseError` quoting the service's code if any."""
    body = load_json(content)
    if not isinstance(body, dict):
        raise BadResponseError("reply is not a JSON object")
    request_id = body.get("request_id")
    output = body.get("output")
    rows = output.get("embeddings") if isinstance(output, dict) else None
    if not isinstance(rows, list):
        code = body.get("code")
        raise BadResponseError(
            "reply has no output.embeddings list"
            + (f" (code {code!r}: {body.get('message')!r})" if code else ""),
            request_id=request_id,
        )
    return body, request_id, rows


def place_rows(rows: Sequence[tuple[Any, Any]], expected: int, request_id: str | None) -> list[Any]:
    """Put ``(index, value)`` rows at their index; fail on any gap, repeat or stray index.

    The service numbers its rows (``text_index`` / ``index``); array order is not a
    promise, so a reply that lists rows out of order is still placed correctly.
    """
    placed: list[Any] = [None] * expected
    seen = bytearray(expected)
    problems: list[str] = []
    for index, value in rows:
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < expected:
            problems.append(f"row index {index!r} outside 0..{expected - 1}")
            continue
        if seen[index]:
            problems.append(f"row {index} returned twice")
            continue
        seen[index] = 1
        placed[index] = value
    missing = [i for i in range(expected) if not seen[i]]
    if missing:
        problems.append(f"rows {missing[:10]} missing")
    if problems:
        raise BadResponseError(
            f"reply does not match the request's {expected} input(s): {'; '.join(problems)}",
            request_id=request_id,
        )
    return placed


def check_dense(vectors: list[Any], dimension: int, request_id: str | None) -> list[list[float]]:
    """Every dense vector must be a list of numbers of the expected length."""
    for row, vector in enumerate(vectors):
        if not isinstance(vector, list) or len(vector) != dimension:
            got = len(vector) if isinstance(vector, list) else type(vector).__name__
            raise BadResponseError(
                f"row {row}: expected a dense vector of {dimension} floats, got {got}",
                request_id=request_id,
            )
    return vectors


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or HTTP date)."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def parse_error_reply(status_code: int, headers: Mapping[str, str], content: bytes) -> APIError:
    """Turn a non-2xx reply into the matching typed error.

    Understands the native body (``{"code", "message", "request_id"}``, or ``msg``), the
    OpenAI-compatible one (``{"error": {"code", "message", "type"}, "request_id"}``) and
    anything else a proxy may send (kept as text).
    """
    header_request_id = headers.get("x-request-id") or None
    code: str | None = None
    message = ""
    request_id = header_request_id
    try:
        body = pydantic_core.from_json(content) if content else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        nested = body.get("error")
        if isinstance(nested, dict):
            code = _as_str(nested.get("code")) or _as_str(nested.get("type"))
            message = _as_str(nested.get("message")) or ""
        else:
            code = _as_str(body.get("code"))
            message = _as_str(body.get("message")) or _as_str(body.get("msg")) or ""
        request_id = _as_str(body.get("request_id")) or _as_str(body.get("id")) or request_id
    if not message:
        text = content.decode("utf-8", errors="replace").strip()
        message = text[:500] if text else f"HTTP {status_code} with an empty body"
    should_retry_header = headers.get("x-should-retry")
    should_retry = (
        None if should_retry_header is None else should_retry_header.strip().lower() == "true"
    )
    cls = error_class_for(status_code, code, message)
    return cls(
        message,
        status_code=status_code,
        code=code,
        request_id=request_id,
        retry_after=parse_retry_after(headers),
        should_retry=should_retry,
    )


def _as_str(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)
