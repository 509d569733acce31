"""The reply parser under the package's own HTTP/1.1 connections, against h11 as oracle.

h11 (httpx's parser) is the reference: on thousands of random replies, cut into random
pieces, ours must read the same status, headers and body, and agree on whether the
connection may carry another request; on broken replies, both must refuse.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import h11
import httpx
import pytest

from dashscope_embed.wire import MAX_HEAD_BYTES, ReplyParser, request_head

NAMES = ["Content-Type", "X-Request-Id", "Retry-After", "Server", "X-Thing", "Vary"]


def random_reply(rng: random.Random) -> tuple[bytes, bool]:
    """One well-formed reply; and whether it ends only when the server closes."""
    version = "HTTP/1.0" if rng.random() < 0.1 else "HTTP/1.1"
    status = rng.choice([200, 200, 200, 201, 204, 400, 404, 429, 500, 503])
    lines = []
    if version == "HTTP/1.1" and rng.random() < 0.15:
        lines.append(b"HTTP/1.1 100 Continue\r\n\r\n")
    headers = [(rng.choice(NAMES), rng.choice(["a", "b c", "application/json", "1", ""]))
               for _ in range(rng.randrange(4))]  # fmt: skip
    if rng.random() < 0.2:
        headers.append(("Connection", rng.choice(["close", "keep-alive", "Keep-Alive, x"])))
    body = rng.randbytes(rng.choice([0, 1, 10, 300, 3000, 70000]))
    framing = "none" if status == 204 else rng.choice(["length", "chunked", "close"])
    if framing == "chunked" and version == "HTTP/1.0":
        framing = "length"
    if framing == "length":
        headers.append(("Content-Length", str(len(body))))
        payload = body
    elif framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
        parts, rest = [], body
        while rest:
            size = rng.randrange(1, 5000)
            piece, rest = rest[:size], rest[size:]
            extension = ";name=value" if rng.random() < 0.2 else ""
            size_line = f"{len(piece):{rng.choice(['x', 'X'])}}{extension}\r\n"
            parts.append(size_line.encode() + piece + b"\r\n")
        trailer = "X-Trailer: 1\r\n" if rng.random() < 0.2 else ""
        payload = b"".join(parts) + f"0\r\n{trailer}\r\n".encode()
    else:
        payload = b"" if framing == "none" else body
    head = f"{version} {status} Reason Phrase\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    lines.append(head.encode() + b"\r\n" + payload)
    return b"".join(lines), framing == "close"


FOLDED = b"HTTP/1.1 200 OK\r\nX-A: a \r\n \t b\r\nContent-Length: 2\r\n\r\nok"


def test_a_header_folded_over_lines_reads_as_one_as_h11_reads_it() -> None:
    assert ours([FOLDED], eof=False) == oracle(FOLDED, eof=False)


def pieces(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(6)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def ours(parts: list[bytes], eof: bool) -> tuple[int, dict[str, str], bytes, bool]:
    parser = ReplyParser()
    body = b""
    for part in parts:
        parser.feed(part)
        body += parser.take_body()
    if eof:
        parser.feed_eof()
        body += parser.take_body()
    assert parser.done and parser.status is not None
    return parser.status, parser.headers, body, parser.reusable


def h11_client(**options: Any) -> h11.Connection:
    """An h11 client connection that has sent a request and awaits the reply."""
    conn = h11.Connection(h11.CLIENT, **options)
    conn.send(
        h11.Request(method="POST", target="/", headers=[("Host", "x"), ("Content-Length", "0")])
    )
    conn.send(h11.EndOfMessage())
    return conn


def oracle(data: bytes, eof: bool) -> tuple[int, dict[str, str], bytes, bool]:
    conn = h11_client()
    conn.receive_data(data)
    if eof:
        conn.receive_data(b"")
    status, headers, body = 0, {}, b""
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Response):
            status = event.status_code
            for name, value in event.headers:
                key, text = name.decode(), value.decode("latin-1")
                headers[key] = f"{headers[key]}, {text}" if key in headers else text
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            break
        elif event is h11.NEED_DATA:  # pragma: no cover - a generator bug
            raise AssertionError("h11 wants more of a complete reply")
    # A reply that ends with the connection leaves nothing to reuse; otherwise h11 moves
    # to DONE only when the connection may carry the next request (else MUST_CLOSE).
    return status, headers, body, not eof and conn.their_state is h11.DONE


def test_random_replies_in_random_pieces_read_as_h11_reads_them() -> None:
    rng = random.Random(20261204)
    for _ in range(3000):
        data, eof = random_reply(rng)
        assert ours(pieces(data, rng), eof) == oracle(data, eof), data[:300]


BROKEN = {
    "not HTTP/1.x": b"HTTP/2 200 OK\r\n\r\n",
    "a four-digit status": b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    "a two-digit status": b"HTTP/1.1 20 OK\r\nContent-Length: 0\r\n\r\n",
    "a length that is not a number": b"HTTP/1.1 200 OK\r\nContent-Length: 1e3\r\n\r\n",
    "two different lengths":
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    "an unknown transfer coding": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nx",
    "a chunk size that is not hex": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "a chunk longer than its size":
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX\r\n0\r\n\r\n",
    "a space before the colon": b"HTTP/1.1 200 OK\r\nX-A : a\r\nContent-Length: 0\r\n\r\n",
    "a header without a colon": b"HTTP/1.1 200 OK\r\nnonsense\r\nContent-Length: 0\r\n\r\n",
    "a protocol switch": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
    "headers without end": b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * (MAX_HEAD_BYTES + 10),
}  # fmt: skip


@pytest.mark.parametrize("data", list(BROKEN.values()), ids=list(BROKEN))
def test_a_broken_reply_is_refused_as_h11_refuses_it(data: bytes) -> None:
    with pytest.raises(httpx.RemoteProtocolError, match="malformed"):
        ReplyParser().feed(data)
    conn = h11_client(max_incomplete_event_size=MAX_HEAD_BYTES)
    conn.receive_data(data)
    with pytest.raises(h11.RemoteProtocolError):
        all_events(conn)


def all_events(conn: h11.Connection) -> None:
    while conn.next_event() is not h11.NEED_DATA:
        pass


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "without sending a response"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "before the reply was complete"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", "before the reply was complete"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", "before"),
    ],
)
def test_a_reply_cut_short_by_the_server_is_an_error_not_a_short_body(
    data: bytes, message: str
) -> None:
    parser = ReplyParser()
    parser.feed(data)
    with pytest.raises(httpx.RemoteProtocolError, match=message):
        parser.feed_eof()


REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


@pytest.mark.parametrize(
    "extra",
    [REPLY, b"\r\n", b"X"],
    ids=["a second reply", "a stray line break", "one byte"],
)
def test_bytes_after_the_reply_cost_the_connection_and_never_join_the_body(extra: bytes) -> None:
    """Whatever follows a complete reply, in the same read or a later one, must not be
    read by the next request on this connection: it would take it for its own reply."""
    together = ReplyParser()
    together.feed(REPLY + extra)
    later = ReplyParser()
    later.feed(REPLY)
    assert later.reusable
    later.feed(extra)
    for parser in (together, later):
        assert parser.take_body() == b"hello"
        assert parser.done and not parser.reusable


def test_a_length_or_chunked_reply_says_how_much_it_still_needs() -> None:
    """The async reader is woken once per reply, when this many bytes have arrived."""
    parser = ReplyParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
    assert parser.wanted == 900
    parser.feed(b"x" * 900)
    assert parser.done and parser.wanted == 1 and len(parser.take_body()) == 1000
    chunked = ReplyParser()
    chunked.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert chunked.wanted == 1


@pytest.mark.parametrize(
    "value", ["a\r\nX-Injected: 1", "tab\there", "caf\u00e9", "null\x00"], ids=repr
)
def test_a_header_value_that_could_break_the_request_is_refused_without_quoting_it(
    value: str,
) -> None:
    url = httpx.URL("http://127.0.0.1:1/api")
    with pytest.raises(httpx.LocalProtocolError) as info:
        request_head("POST", url, {"Authorization": value}, 0)
    assert "'Authorization'" in str(info.value)
    assert value not in str(info.value) and value not in repr(info.value.args)


def test_the_request_head_names_the_host_path_query_and_length() -> None:
    url = httpx.URL("http://[::1]:8080/api/v1/x?a=1&b=%20")
    head = request_head("POST", url, {"Content-Type": "application/json"}, 12)
    assert head == (
        b"POST /api/v1/x?a=1&b=%20 HTTP/1.1\r\nHost: [::1]:8080\r\n"
        b"Content-Type: application/json\r\nContent-Length: 12\r\n\r\n"
    )
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head + b"x" * 12)
    request = conn.next_event()
    assert isinstance(request, h11.Request)
    assert request.target == b"/api/v1/x?a=1&b=%20"
    assert (b"host", b"[::1]:8080") in list(request.headers)
