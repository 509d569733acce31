"""Pieces both protocols share: request parameters, parsed batches, error replies."""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pydantic_core

from dashscope_embed.errors import APIError, BadResponseError, error_class_for
from dashscope_embed.options import TextParams
from dashscope_embed.types import SparseEmbedding

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray


@dataclass(frozen=True, slots=True)
class ParsedBatch:
    """One request's reply, rows in request order, checked complete. ``dense`` is one
    float32 matrix when the caller asked for arrays (see ``protocol.arrays``)."""

    dense: list[list[float]] | NDArray[np.float32] | None
    sparse: list[SparseEmbedding] | None
    total_tokens: int
    request_id: str | None

    def __repr__(self) -> str:
        rows = len(self.dense if self.dense is not None else self.sparse or [])
        return (
            f"ParsedBatch(rows={rows}, total_tokens={self.total_tokens}, "
            f"request_id={self.request_id!r})"
        )


# Bounds for what a reply can legitimately need: a float printed in full is ~22 bytes,
# a sparse entry ({"index":...,"value":...,"token":"..."}) well under 128, and a text
# has at most one sparse entry per token, so at most one per UTF-8 byte.
_BYTES_PER_FLOAT = 32
_BYTES_PER_SPARSE_ENTRY = 128
_REPLY_OVERHEAD = 64 * 1024


def reply_byte_limit(texts: Sequence[str], params: TextParams) -> int:
    """The most bytes a correct reply to embedding ``texts`` with ``params`` can have.

    Anything longer is not an embedding reply, so it is not read past this (a runaway or
    hostile server costs a bounded amount of memory, whatever it sends).
    """
    limit = _REPLY_OVERHEAD + len(texts) * 256
    if params.wants_dense:
        limit += len(texts) * params.expected_dimension * _BYTES_PER_FLOAT
    if params.wants_sparse:
        limit += _BYTES_PER_SPARSE_ENTRY * sum(
            min(4 * len(text), params.spec.max_tokens_per_row) for text in texts
        )
    return limit


def _encode_with_json(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


try:  # the fastest parser there is for float-heavy JSON, and ~20x json's encoder
    import orjson

    def _fast_loads(content: bytes) -> Any:
        return orjson.loads(content)

    def encode_json(body: Any) -> bytes:
        """Compact UTF-8 JSON, non-ASCII kept as is (smaller than ``\\u`` escapes)."""
        try:
            return orjson.dumps(body)
        except TypeError:
            # What orjson refuses and json writes (an int past 64 bits, a non-string
            # key) is written, or refused, exactly as json does.
            return _encode_with_json(body)

except ImportError:  # pragma: no cover - depends on the environment

    def _fast_loads(content: bytes) -> Any:
        return pydantic_core.from_json(content)

    encode_json = _encode_with_json


def load_json(content: bytes, request_id: str | None = None) -> Any:
    """Parse a reply body: orjson if installed (~45 ms per 1,000 vectors of 1,024
    floats), else pydantic-core's parser (~66 ms); both Rust, both strict UTF-8."""
    try:
        return _fast_loads(content)
    except ValueError as exc:
        raise BadResponseError(
            f"reply is not valid JSON ({exc}); first bytes: {content[:200]!r}",
            request_id=request_id,
        ) from None


def reply_object(content: bytes) -> tuple[dict[str, Any], str | None]:
    """A 2xx reply's JSON object and request id.

    A 2xx reply that carries the service's error fields instead of a result (``code``
    and ``message``, or OpenAI's ``error`` object) is the service's answer, not a broken
    reply: it is raised as the typed error it names, as if it had come with its status.
    """
    return checked_reply(load_json(content))


def checked_reply(body: Any) -> tuple[dict[str, Any], str | None]:
    """:func:`reply_object` for a body already parsed."""
    if not isinstance(body, dict):
        raise BadResponseError(f"reply is not a JSON object: {body!r:.80}")
    request_id = _as_str(body.get("request_id")) or _as_str(body.get("id"))
    nested = body.get("error")
    code = _as_str(nested.get("code")) if isinstance(nested, dict) else _as_str(body.get("code"))
    if code is not None and "output" not in body and "data" not in body:
        raise error_from_body(200, {}, body)
    return body, request_id


def native_embeddings(content: bytes) -> tuple[dict[str, Any], str | None, list[Any]]:
    """A native 2xx reply's body, ``request_id`` and ``output.embeddings`` list; a reply
    without that list is a :class:`BadResponseError`."""
    body, request_id = reply_object(content)
    output = body.get("output")
    rows = output.get("embeddings") if isinstance(output, dict) else None
    if not isinstance(rows, list):
        raise BadResponseError("reply has no output.embeddings list", request_id=request_id)
    return body, request_id, rows


def usage_tokens(usage: Any, *keys: str, request_id: str | None) -> int:
    """The first of ``keys`` present in a reply's ``usage`` object, as a token count."""
    if usage is None:
        return 0
    if not isinstance(usage, dict):
        raise BadResponseError(f"usage is not an object: {usage!r:.80}", request_id=request_id)
    for key in keys:
        value = usage.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadResponseError(
                f"usage.{key} is not a token count: {value!r:.40}", request_id=request_id
            )
        return value
    return 0


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


_NUMBERS = frozenset({float, int})
_ALL_FLOATS: set[type] = {float}  # never mutated: the kinds of an all-float vector


def dense_problem(vector: Any, dimension: int) -> str | None:
    """Why ``vector`` is not a dense vector of ``dimension`` finite numbers, or ``None``.

    JSON allows what a vector must not hold: strings, ``null``, booleans, and (in the
    lenient parsers every client uses) ``NaN``, ``Infinity`` and overflowing literals.
    """
    return _dense_problem(vector, dimension)[1]


def _dense_problem(vector: Any, dimension: int) -> tuple[set[type], str | None]:
    """The vector's component types (one pass, in C) and what is wrong with it."""
    if type(vector) is not list:
        found = type(vector).__name__
        return set(), f"expected a dense vector of {dimension} floats, got {found}"
    if len(vector) != dimension:
        return set(), f"expected a dense vector of {dimension} floats, got {len(vector)}"
    # Counting the float components (in C, over a list of their types) is twice as
    # fast as collecting the set of types, and a vector from the service is all floats.
    if list(map(type, vector)).count(float) == dimension:
        kinds = _ALL_FLOATS
    else:
        kinds = set(map(type, vector))
    if not kinds <= _NUMBERS:
        position, bad = next((i, x) for i, x in enumerate(vector) if type(x) not in _NUMBERS)
        problem = f"component {position} is {bad!r:.30} ({type(bad).__name__}), not a number"
        return kinds, problem
    # One pass in C: the sum of finite components is finite (they are at most ~1).
    if not math.isfinite(sum(vector)):
        for position, value in enumerate(vector):
            if not math.isfinite(value):
                return kinds, f"component {position} is {value!r}, not a finite number"
    return kinds, None


def check_dense(vectors: list[Any], dimension: int, request_id: str | None) -> list[list[float]]:
    """Every dense vector must be a list of ``dimension`` finite numbers (ints become floats)."""
    for row, vector in enumerate(vectors):
        kinds, problem = _dense_problem(vector, dimension)
        if problem is not None:
            raise BadResponseError(f"row {row}: {problem}", request_id=request_id)
        if int in kinds:
            vectors[row] = [float(x) for x in vector]
    return vectors


def parse_sparse(raw: Any, row: int, request_id: str | None) -> SparseEmbedding:
    """One row's ``sparse_embedding``: ``[{"index": int, "value": finite float, "token"}]``."""
    if not isinstance(raw, list):
        raise BadResponseError(
            f"row {row}: sparse output was requested but the reply has no sparse_embedding list",
            request_id=request_id,
        )
    indices: list[int] = []
    values: list[float] = []
    tokens: list[str] = []
    for position, entry in enumerate(raw):
        fields: dict[str, Any] = entry if isinstance(entry, dict) else {}
        index: Any = fields.get("index")
        value: Any = fields.get("value")
        token: Any = fields.get("token", "")
        if (
            type(index) is not int
            or index < 0
            or type(value) not in _NUMBERS
            or not math.isfinite(value)
            or not isinstance(token, str)
        ):
            raise BadResponseError(
                f"row {row}: sparse_embedding[{position}] is not "
                f'{{"index": int >= 0, "value": finite number, "token": str}}: {entry!r:.80}',
                request_id=request_id,
            )
        indices.append(index)
        values.append(float(value))
        tokens.append(token)
    return SparseEmbedding(indices=indices, values=values, tokens=tokens)


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
    try:
        body = pydantic_core.from_json(content) if content else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        return error_from_body(status_code, headers, body)
    text = content.decode("utf-8", errors="replace").strip()
    return error_from_body(
        status_code, headers, {}, text[:500] if text else f"HTTP {status_code} with an empty body"
    )


def error_from_body(
    status_code: int, headers: Mapping[str, str], body: dict[str, Any], fallback: str = ""
) -> APIError:
    """The typed error a reply's error fields (and headers) describe."""
    nested = body.get("error")
    if isinstance(nested, dict):
        code = _as_str(nested.get("code")) or _as_str(nested.get("type"))
        message = _as_str(nested.get("message")) or ""
    else:
        code = _as_str(body.get("code"))
        message = _as_str(body.get("message")) or _as_str(body.get("msg")) or ""
    request_id = (
        _as_str(body.get("request_id"))
        or _as_str(body.get("id"))
        or headers.get("x-request-id")
        or None
    )
    message = message or fallback or f"HTTP {status_code} with an error body and no message"
    should_retry_header = headers.get("x-should-retry")
    should_retry = (
        None if should_retry_header is None else should_retry_header.strip().lower() == "true"
    )
    cls = error_class_for(status_code, code, message)
    return cls(
        message[:2000],
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
