"""Dense vectors as float32 NumPy arrays, for callers who asked for arrays.

A stream with ``as_numpy=True`` (and the bulk command) wants one float32 matrix per
request, not a Python list of Python floats per vector. With pysimdjson installed (the
``bulk`` extra) each reply's embedding arrays are parsed straight into float64 buffers in
C and cast into the matrix: no Python float is ever made. Per request of 10 vectors of
1,024 floats that is ~0.35 ms of CPU, against ~0.87 ms for orjson, the component check
and ``np.asarray`` (measured on this project's 2-core machine).

The fast path only ever says "this reply, exactly as the reference parser reads it", or
"not me". Anything it does not fully understand (a duplicate key, a nested array, a
component that is not a number, an error reply, a float beyond float32) goes to the
reference parser, which either reads it or raises its precise error. So the fast path
can make a call cheaper, never different.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

from dashscope_embed.errors import BadResponseError
from dashscope_embed.protocol.common import ParsedBatch, checked_reply, place_rows, usage_tokens

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    Float32Matrix = NDArray[np.float32]

try:
    import simdjson

    HAVE_SIMDJSON = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_SIMDJSON = False

_OPEN_BRACKET = ord("[")
_BYTE_ORDER_MARK = b"\xef\xbb\xbf"


def float32_matrix(vectors: Sequence[Sequence[float]], request_id: str | None) -> Float32Matrix:
    """Checked dense vectors (finite floats, equal lengths) as one float32 matrix.

    A component beyond float32's range (~3.4e38) is finite as a Python float but would
    become ``inf`` in the array: it is refused, naming its row and component.
    """
    import numpy as np

    with np.errstate(over="ignore"):
        matrix = np.asarray(vectors, dtype=np.float32)
    if not np.isfinite(matrix).all():
        row, column = (int(i) for i in np.argwhere(~np.isfinite(matrix))[0])
        raise BadResponseError(
            f"row {row}: component {column} is {vectors[row][column]!r}, beyond the range "
            "of float32 (an array cannot hold it)",
            request_id=request_id,
        )
    return matrix


@dataclass(frozen=True, slots=True)
class DenseReplyLayout:
    """Where a protocol's reply keeps what the fast path reads.

    ``rows_at``: the path of keys to the list of row objects (``("output",
    "embeddings")`` natively, ``("data",)`` OpenAI-compatible); ``index_key``: the row's
    position field; ``token_keys``: the ``usage`` fields that count the billed tokens,
    first present wins.
    """

    rows_at: tuple[str, ...]
    index_key: str
    token_keys: tuple[str, ...]


def fast_dense_batch(
    content: bytes, expected_rows: int, dimension: int, layout: DenseReplyLayout
) -> ParsedBatch | None:
    """A dense-only reply read straight into a float32 matrix (rows placed by the
    layout's index), or ``None`` when the reference parser must read it (pysimdjson
    missing, or anything unusual about the reply)."""
    if not HAVE_SIMDJSON or content.startswith(_BYTE_ORDER_MARK):  # orjson refuses a BOM
        return None
    import numpy as np

    # pysimdjson flattens nested arrays into the buffer without a word, so a reply is
    # only taken if it has no array besides the row list and one per row (every row must
    # have one, so none is left for nesting). Counting the brackets (in strings too:
    # such a reply just takes the reference path) is ~18 us.
    brackets = int(np.count_nonzero(np.frombuffer(content, dtype=np.uint8) == _OPEN_BRACKET))
    if brackets != 1 + expected_rows:
        return None
    parser = _take_parser()
    try:
        parsed = _read(parser, content, expected_rows, dimension, layout)
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError, BadResponseError):
        # Not a number, not an object, a number simdjson cannot hold, a bad usage, a
        # parser still in use: all the reference parser's to judge and to report.
        parsed = None
    # Past the handler, the document's objects are gone (the error's traceback too), so
    # the parser may parse again.
    _give_back(parser)
    return parsed


# Parsers keep their buffers (about twice the largest reply they read), so a few are
# kept for reuse, not one per thread: a stream may run hundreds of threads. A parser
# may not parse again while objects of its last document are alive, so each one is
# used by one parse at a time (list.pop and append are atomic).
_idle_parsers: list[Any] = []
_MAX_IDLE_PARSERS = 4


def _take_parser() -> Any:
    try:
        return _idle_parsers.pop()
    except IndexError:
        return simdjson.Parser()


def _give_back(parser: Any) -> None:
    if len(_idle_parsers) < _MAX_IDLE_PARSERS:
        _idle_parsers.append(parser)


def _read(
    parser: Any, content: bytes, expected_rows: int, dimension: int, layout: DenseReplyLayout
) -> ParsedBatch | None:
    import numpy as np

    document = parser.parse(content)
    if not _plain_object(document):
        return None
    rows_at = layout.rows_at
    fields = {key: _small_value(document[key]) for key in document if key != rows_at[0]}
    fields[rows_at[0]] = {}
    container = document
    for key in rows_at[:-1]:
        inner = container.get(key)
        if not _plain_object(inner):
            return None
        container = inner
    row_list = container.get(rows_at[-1])
    if not isinstance(row_list, simdjson.Array):
        return None
    rows: list[tuple[Any, Any]] = []
    for row in row_list:
        if not _plain_object(row):
            return None
        vector = row.get("embedding")
        if not isinstance(vector, simdjson.Array) or len(vector) != dimension:
            return None
        rows.append((row.get(layout.index_key), vector.as_buffer(of_type="d")))
    placed = place_rows(rows, expected_rows, None)
    matrix = np.empty((expected_rows, dimension), dtype=np.float32)
    with np.errstate(over="ignore"):
        for position, floats in enumerate(placed):
            matrix[position] = np.frombuffer(floats, dtype=np.float64)
    if not np.isfinite(matrix).all():  # beyond float32: the reference path says where
        return None
    # The reply-level checks are the reference parser's own, on the fields beside the rows.
    body, request_id = checked_reply(fields)
    tokens = usage_tokens(body.get("usage"), *layout.token_keys, request_id=request_id)
    return ParsedBatch(dense=matrix, sparse=None, total_tokens=tokens, request_id=request_id)


def _plain_object(value: Any) -> TypeGuard[simdjson.Object]:
    """A JSON object without a repeated key (where parsers disagree on which wins)."""
    if not isinstance(value, simdjson.Object):
        return False
    return len(set(value.keys())) == len(value)


def _small_value(value: Any) -> Any:
    # Everything outside the rows (usage, request_id, code) is small: plain Python.
    if isinstance(value, simdjson.Object):
        if not _plain_object(value):
            raise ValueError("repeated key")
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value
