"""Replies read straight into float32 arrays (NumPy callers) are read exactly as the
reference parser reads them, or refused with the reference parser's error.

The fast path (pysimdjson) must never be a second opinion: for every reply below, a
lying server's included, its answer is compared with the reference parser's (orjson,
the component check, then the float32 conversion).
"""

from __future__ import annotations

import base64
import json
import random
import threading
from typing import Any

import numpy as np
import pydantic_core
import pytest

from dashscope_embed import BadResponseError, DashScopeError
from dashscope_embed.models import resolve_model
from dashscope_embed.options import TextEmbeddingOptions, TextParams, text_params
from dashscope_embed.protocol import common, endpoint_for
from dashscope_embed.protocol.arrays import HAVE_SIMDJSON, fast_dense_batch, float32_matrix
from dashscope_embed.protocol.common import ParsedBatch

DIM = 64  # the smallest dimension text-embedding-v4 allows
PARAMS: TextParams = text_params(
    resolve_model("text-embedding-v4"), None, TextEmbeddingOptions(dimension=DIM)
)
NATIVE = endpoint_for("text-embedding", "native", "text-embedding-v4")
COMPATIBLE = endpoint_for("text-embedding", "openai-compatible", "text-embedding-v4")
GOOD = ["0.5", "-0.25", "0.125", "1"]


def native(
    rows: list[str], *, extra: str = ',"usage":{"total_tokens":7},"request_id":"r-1"'
) -> bytes:
    """A native reply; each row is the raw JSON text of one row object."""
    return ('{"output":{"embeddings":[' + ",".join(rows) + "]}" + extra + "}").encode()


def row(index: Any = 0, vector: list[str] | str = GOOD, key: str = "text_index") -> str:
    """One row object; a list of component texts is padded with zeros to ``DIM``."""
    if isinstance(vector, str):  # raw JSON text, padded with zeros inside the array
        values = vector[:-1] + ",0" * (DIM - 4) + "]"
    else:
        values = "[" + ",".join(vector + ["0"] * (DIM - len(vector))) + "]"
    return f'{{"{key}":{json.dumps(index)},"embedding":{values}}}'


def fast_native(content: bytes, count: int) -> ParsedBatch | None:
    """The fast path alone on a native reply (``None``: it leaves the reply to the
    reference parser)."""
    layout = NATIVE.dense_layout
    assert layout is not None
    return fast_dense_batch(content, count, DIM, layout)


def reference(endpoint: Any, content: bytes, count: int) -> ParsedBatch | str:
    """What the reference parser makes of a reply, float32 included, or its error."""
    try:
        parsed: ParsedBatch = endpoint.parse(content, count, PARAMS)
        assert parsed.dense is not None
        return ParsedBatch(
            float32_matrix(parsed.dense, parsed.request_id),  # type: ignore[arg-type]
            None,
            parsed.total_tokens,
            parsed.request_id,
        )
    except DashScopeError as error:
        return f"{type(error).__name__}: {error}"


def fast(endpoint: Any, content: bytes, count: int) -> ParsedBatch | str:
    try:
        parsed: ParsedBatch = endpoint.parse_float32(content, count, PARAMS)
        return parsed
    except DashScopeError as error:
        return f"{type(error).__name__}: {error}"


def same(a: ParsedBatch | str, b: ParsedBatch | str) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    assert isinstance(a.dense, np.ndarray) and isinstance(b.dense, np.ndarray)
    return (
        a.dense.dtype == b.dense.dtype == np.float32
        and np.array_equal(a.dense, b.dense)
        and (a.total_tokens, a.request_id) == (b.total_tokens, b.request_id)
    )


HOSTILE_NATIVE: dict[str, tuple[bytes, int]] = {
    "clean": (native([row(0), row(1, ["0", "0", "0", "1"])]), 2),
    "rows out of order": (native([row(1), row(0, ["0.1", "0.2", "0.3", "0.4"])]), 2),
    "integers": (native([row(0, ["1", "0", "-1", "2"])]), 1),
    "pretty printed": (json.dumps(json.loads(native([row(0)])), indent=2).encode(), 1),
    "escaped key": (native([row(0, key="text_\\u0069ndex")]), 1),
    # A nested singleton: pysimdjson would flatten it to the same four numbers.
    "nested singleton": (native([row(0, "[[0.5],-0.25,0.125,1]")]), 1),
    "nested pair": (native([row(0, "[[0.5,-0.25],0.125,1]")]), 1),
    "empty nested": (native([row(0, "[[],0.5,-0.25,0.125,1]")]), 1),
    "boolean": (native([row(0, ["true", "0", "0", "0"])]), 1),
    "string": (native([row(0, ['"0.5"', "0", "0", "0"])]), 1),
    "null": (native([row(0, ["null", "0", "0", "0"])]), 1),
    "object": (native([row(0, ["{}", "0", "0", "0"])]), 1),
    "NaN": (native([row(0, ["NaN", "0", "0", "0"])]), 1),
    "overflowing literal": (native([row(0, ["1e999", "0", "0", "0"])]), 1),
    # Finite for Python, infinite for float32: an array cannot hold it.
    "beyond float32": (native([row(0, ["1e39", "0", "0", "0"])]), 1),
    "negative beyond float32": (native([row(0, ["-3.5e38", "0", "0", "0"])]), 1),
    "huge integer": (native([row(0, ["18446744073709551616", "0", "0", "0"])]), 1),
    "short vector": (native([row(0, "[0.5,0.5,0.5]")]), 1),
    "long vector": (native([row(0, ["0.5"] * (DIM + 1))]), 1),
    "vector is an object": (native(['{"text_index":0,"embedding":{"a":1}}']), 1),
    "vector missing": (native(['{"text_index":0}']), 1),
    "row is a list": (native(["[" + ",".join(["0.5"] * DIM) + "]"]), 1),
    "row repeated": (native([row(0), row(0)]), 2),
    "row missing": (native([row(0)]), 2),
    "index out of range": (native([row(5)]), 1),
    "index is a string": (native([row("0")]), 1),
    "index is true": (native([row(True)]), 1),
    "index is a float": (native([row(0.0)]), 1),
    # Parsers disagree on which of two equal keys wins: orjson takes the last.
    "duplicate index key": (
        native([row(1)[:-1] + ',"text_index":0}', row(1, GOOD[::-1])]),
        2,
    ),
    "duplicate embedding key": (native([row(0)[:-1] + "," + row(0, GOOD[::-1])[16:]]), 1),
    "duplicate output key": (
        b'{"output":{"embeddings":[]},"output":{"embeddings":[' + row(0).encode() + b"]}}",
        1,
    ),
    "duplicate usage key": (
        native([row(0)], extra=',"usage":{"total_tokens":1},"usage":{"total_tokens":9}'),
        1,
    ),
    "usage is a boolean": (native([row(0)], extra=',"usage":{"total_tokens":true}'), 1),
    "usage negative": (native([row(0)], extra=',"usage":{"total_tokens":-3}'), 1),
    "usage is a list": (native([row(0)], extra=',"usage":[7]'), 1),
    "bracket in the request id": (native([row(0)], extra=',"request_id":"r[1]"'), 1),
    "error fields beside output": (native([row(0)], extra=',"code":"Throttling"'), 1),
    "error reply": (b'{"code":"InvalidParameter","message":"no","request_id":"r"}', 1),
    "output is a list": (b'{"output":[' + row(0).encode() + b"]}", 1),
    "not an object": (b"[" + row(0).encode() + b"]", 1),
    "trailing garbage": (native([row(0)]) + b"x", 1),
    "truncated": (native([row(0)])[:-5], 1),
    "invalid UTF-8": (native([row(0)], extra=',"request_id":"@"').replace(b"@", b"\xff"), 1),
    "lone surrogate": (native([row(0)], extra=',"request_id":"\\ud800"'), 1),
    "control character in a string": (
        native([row(0)], extra=',"request_id":"@"').replace(b"@", b"\x01"),
        1,
    ),
    "byte order mark": (b"\xef\xbb\xbf" + native([row(0)]), 1),
    "leading whitespace": (b" \t\r\n" + native([row(0)]), 1),
    "number forms": (native([row(0, ["-0", "1E-5", "1e+5", "-0.0e0"])]), 1),
    "leading zero": (native([row(0, ["01", "0", "0", "0"])]), 1),
    "plus sign": (native([row(0, ["+1", "0", "0", "0"])]), 1),
    "bare fraction": (native([row(0, [".5", "0", "0", "0"])]), 1),
    "trailing dot": (native([row(0, ["1.", "0", "0", "0"])]), 1),
    "trailing comma": (native([row(0)]).replace(b"]}]}", b",]}]}"), 1),
    "deeply nested field": (native([row(0)], extra=',"x":' + '{"a":' * 2000 + "1" + "}" * 2000), 1),
    "empty": (b"", 1),
}


@pytest.fixture(params=["orjson", "pydantic-core"], autouse=True)
def reference_json_parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference parser is orjson where installed, else pydantic-core's: the fast
    path must agree with either."""
    if request.param == "pydantic-core":
        monkeypatch.setattr(common, "_fast_loads", pydantic_core.from_json)
    else:
        import orjson

        monkeypatch.setattr(common, "_fast_loads", orjson.loads)


@pytest.mark.parametrize("case", sorted(HOSTILE_NATIVE))
def test_a_native_reply_reads_as_the_reference_parser_reads_it(case: str) -> None:
    content, count = HOSTILE_NATIVE[case]
    want, got = reference(NATIVE, content, count), fast(NATIVE, content, count)
    assert same(got, want), (got, want)


def test_what_float32_cannot_hold_is_refused_not_turned_into_infinity() -> None:
    content, count = HOSTILE_NATIVE["beyond float32"]
    with pytest.raises(BadResponseError, match=r"row 0: component 0 is 1e\+39, beyond the range"):
        NATIVE.parse_float32(content, count, PARAMS)
    # The list path, which keeps Python floats, has no such limit.
    assert NATIVE.parse(content, count, PARAMS).dense[0][0] == 1e39


BASE64_ROW = base64.b64encode((np.arange(DIM, dtype="<f4") / DIM).tobytes()).decode()


def compatible(rows: list[str], extra: str = ',"usage":{"prompt_tokens":5}') -> bytes:
    return ('{"object":"list","data":[' + ",".join(rows) + "]" + extra + ',"id":"c-1"}').encode()


HOSTILE_COMPATIBLE: dict[str, tuple[bytes, int]] = {
    "clean": (compatible([row(0, key="index"), row(1, key="index")]), 2),
    "out of order": (compatible([row(1, key="index"), row(0, GOOD[::-1], key="index")]), 2),
    "nested singleton": (compatible([row(0, "[[0.5],-0.25,0.125,1]", key="index")]), 1),
    "boolean": (compatible([row(0, ["true", "0", "0", "0"], key="index")]), 1),
    "beyond float32": (compatible([row(0, ["1e39", "0", "0", "0"], key="index")]), 1),
    "base64": (compatible(['{"index":0,"embedding":"' + BASE64_ROW + '"}']), 1),
    "duplicate index key": (
        compatible([row(1, key="index")[:-1] + ',"index":0}', row(1, GOOD[::-1], key="index")]),
        2,
    ),
    "error object beside no data": (b'{"error":{"code":"x","message":"m"}}', 1),
    "total tokens win": (
        compatible([row(0, key="index")], ',"usage":{"prompt_tokens":5,"total_tokens":6}'),
        1,
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_COMPATIBLE))
def test_an_openai_compatible_reply_reads_as_the_reference_parser_reads_it(case: str) -> None:
    content, count = HOSTILE_COMPATIBLE[case]
    want, got = reference(COMPATIBLE, content, count), fast(COMPATIBLE, content, count)
    assert same(got, want), (got, want)


def test_random_replies_read_identically() -> None:
    rng = random.Random(7)
    for trial in range(200):
        count = rng.randint(1, 10)
        order = list(range(count))
        rng.shuffle(order)
        rows = []
        for index in order:
            values = [repr(rng.uniform(-1, 1)) for _ in range(DIM)]
            if rng.random() < 0.1:  # one hostile component now and then
                values[rng.randrange(DIM)] = rng.choice(["true", "null", '"1"', "[1]", "1e39"])
            rows.append(row(index, values))
        content = native(rows, extra=f',"usage":{{"total_tokens":{trial}}}')
        want, got = reference(NATIVE, content, count), fast(NATIVE, content, count)
        assert same(got, want), (trial, got, want)


@pytest.mark.skipif(not HAVE_SIMDJSON, reason="the fast path needs the bulk extra")
@pytest.mark.parametrize("case", ["clean", "rows out of order", "integers", "pretty printed"])
def test_a_clean_reply_takes_the_fast_path(case: str) -> None:
    # Otherwise every comparison above would hold with the fast path never taken.
    content, count = HOSTILE_NATIVE[case]
    taken = fast_native(content, count)
    assert taken is not None and taken.request_id == "r-1" and taken.total_tokens == 7


def test_the_fast_path_is_installed_where_the_tests_run() -> None:
    # The test environment installs every extra; without pysimdjson the comparisons
    # above would only ever compare the reference parser with itself.
    assert HAVE_SIMDJSON


def test_replies_parsed_at_once_on_many_threads_all_take_the_fast_path() -> None:
    # A parser may not parse while its last document lives: each parse needs its own.
    rows = [row(i, [repr(i / 100 + k / 10_000) for k in range(DIM)]) for i in range(10)]
    content = native(rows[::-1])
    want = np.asarray([[i / 100 + k / 10_000 for k in range(DIM)] for i in range(10)], "f4")
    results: list[ParsedBatch | None] = []

    def parse_many() -> None:
        for _ in range(200):
            results.append(fast_native(content, 10))

    threads = [threading.Thread(target=parse_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 1600
    assert all(r is not None and np.array_equal(r.dense, want) for r in results)
