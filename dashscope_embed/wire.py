"""HTTP/1.1 on plain sockets, for the requests this package sends on its own pools.

Why not httpx all the way down: per request, httpx + httpcore + h11 cost ~0.5 ms of CPU
to send a 10-text batch and read its ~220 KB reply, and about twice that when replies
take 300 ms (a cold cache after each wait). At a few thousand requests a minute that is
more CPU than parsing the vectors. This module does the same exchange in ~0.15 ms: one
write per request, and one wake-up per reply once its length is known.

What it does not do, it leaves to httpx (the transport falls back per request): proxies
(from the environment), multipart uploads, and any httpx client a caller passed in.

Its promises are the transport's: bounded reads (the reply is handed on piece by piece,
never buffered whole before the size check), the attempt's deadline on every connect,
read and write, fork- and loop-safe pools (owned by :class:`~dashscope_embed.transport.
Transport`), and no reuse of a connection whose last reply was not read exactly to its
end: a server that sends more than it declared, or anything unasked, loses the
connection, so no request can read another's reply.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Generic, Protocol, TypeVar

import httpx

MAX_HEAD_BYTES = 64 * 1024
"""A reply's status line and headers; more is refused (h11's limit is 16 KB)."""

MAX_CHUNK_LINE = 4096

KEEPALIVE_EXPIRY = 5.0
"""An idle connection older than this is closed, not reused (httpx's default): servers
close idle connections after a while, and one closing as a request is sent loses it."""

READ_BYTES = 256 * 1024
"""Largest single read: a reply of ten 1,024-dim vectors is ~220 KB."""

_PAUSE_BYTES = 1024 * 1024
"""Async: bytes buffered before the socket is paused until the reader takes them."""

_NO_BODY_STATUS = frozenset({204, 304})

Origin = tuple[str, str, int]


class _Pooled(Protocol):
    origin: Origin
    idle_since: float

    def stale(self, now: float) -> bool: ...

    def close(self) -> None: ...


C = TypeVar("C", bound=_Pooled)


class ProtocolProblem(httpx.RemoteProtocolError):
    """The server's reply is not HTTP/1.1 this client can trust."""


def _refuse(problem: str) -> ProtocolProblem:
    return ProtocolProblem(f"the server's reply is malformed: {problem}")


# ---------------------------------------------------------------------- the reply
class ReplyParser:
    """One HTTP/1.1 reply, without I/O: fed the bytes as they arrive, it knows the
    status and headers once they are complete, hands on the body piece by piece
    (de-chunked), and says whether the connection may carry another request."""

    __slots__ = (
        "_buffer",
        "_left",
        "_mode",
        "_pieces",
        "_reusable",
        "_searched",
        "done",
        "headers",
        "status",
    )

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._searched = 0
        self._pieces: list[bytes | memoryview] = []
        self._mode = "head"  # head | length | chunk-size | chunk-data | chunk-end | trailer | close
        self._left = 0
        self._reusable = True
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.done = False

    @property
    def reusable(self) -> bool:
        """Whether the connection may carry another request: the reply was read exactly
        to its declared end and the server did not ask to close."""
        return self.done and self._reusable

    @property
    def wanted(self) -> int:
        """Bytes the reply surely still needs (1 when its end is not known)."""
        if self._mode == "length":
            return max(self._left, 1)
        return 1

    def take_body(self) -> bytes | memoryview:
        """The body bytes received since the last call (``b""`` if none)."""
        pieces, self._pieces = self._pieces, []
        if not pieces:
            return b""
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def feed(self, data: bytes | memoryview) -> None:
        """Take the next bytes read from the connection.

        A body with a length is handed on as the pieces that arrived (views, not
        copies): a reply of ten 1,024-dim vectors is ~220 KB, and every copy of it
        costs more than parsing its head."""
        if self.done:
            if data:
                self._reusable = False  # bytes nobody asked for: never reuse
            return
        mode = self._mode
        if mode == "length" and not self._buffer:
            if len(data) <= self._left:
                self._pieces.append(data)
                self._left -= len(data)
                self.done = self._left == 0
                return
            self._pieces.append(data[: self._left])
            self._left = 0
            self.done = True
            self._reusable = False  # more than it declared: the rest is nobody's reply
            return
        if mode == "close":
            self._pieces.append(data)
            return
        if mode == "head" and not self._buffer and isinstance(data, bytes):
            rest = self._heads_from(data)
            if rest:
                self.feed(rest)
            return
        self._buffer += data
        self._advance()

    def _heads_from(self, data: bytes) -> memoryview | None:
        """Read the head (after any interim ones) straight from ``data``; the rest of
        it, uncopied, or ``None`` when the head is not complete (then ``data`` is kept)."""
        offset = 0
        while self._mode == "head":
            end, skip = _head_end(data, offset)
            if end < 0:
                self._buffer += memoryview(data)[offset:]
                self._check_head_size(len(self._buffer))
                self._searched = len(self._buffer)
                return None
            self._check_head_size(end - offset)
            self._read_head(data[offset:end].decode("latin-1"))
            offset = end + skip
        return memoryview(data)[offset:]

    def feed_eof(self) -> None:
        """The server closed its side; an unfinished reply is an error."""
        if self.done:
            return
        if self._mode == "close":
            self.done = True
            self._reusable = False
            return
        if self.status is None and not self._buffer:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        raise httpx.RemoteProtocolError(
            "the server closed the connection before the reply was complete"
        )

    # ------------------------------------------------------------------ parsing
    def _advance(self) -> None:
        while not self.done:
            mode = self._mode
            if mode == "close":
                return
            if mode == "head":
                if not self._parse_head():
                    return
            elif mode == "length":
                take = min(self._left, len(self._buffer))
                if take:
                    self._pieces.append(bytes(self._buffer[:take]))
                    del self._buffer[:take]
                    self._left -= take
                if self._left == 0:
                    self.done = True
                else:
                    return
            elif mode == "chunk-size":
                line = self._line(MAX_CHUNK_LINE, "a chunk size line")
                if line is None:
                    return
                size_text = line.split(b";", 1)[0].strip()
                if not size_text or size_text.strip(b"0123456789abcdefABCDEF"):
                    raise _refuse(f"chunk size {bytes(size_text[:20])!r} is not hexadecimal")
                self._left = int(size_text, 16)
                self._mode = "chunk-data" if self._left else "trailer"
            elif mode == "chunk-data":
                take = min(self._left, len(self._buffer))
                if not take:
                    return
                self._pieces.append(bytes(self._buffer[:take]))
                del self._buffer[:take]
                self._left -= take
                if self._left:
                    return
                self._mode = "chunk-end"
            elif mode == "chunk-end":
                if len(self._buffer) < 2:
                    return
                if self._buffer[:2] != b"\r\n":
                    raise _refuse("a chunk does not end where its size says")
                del self._buffer[:2]
                self._mode = "chunk-size"
            else:  # trailer
                line = self._line(MAX_CHUNK_LINE, "a trailer line")
                if line is None:
                    return
                if not line:
                    self.done = True
        if self._buffer:
            self._reusable = False  # more than the reply: the connection is not ours to reuse
            self._buffer.clear()

    def _line(self, limit: int, what: str) -> bytes | None:
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > limit:
                raise _refuse(f"{what} is longer than {limit} bytes")
            return None
        line = bytes(self._buffer[:end]).rstrip(b"\r")
        del self._buffer[: end + 1]
        return line

    def _parse_head(self) -> bool:
        buffer = self._buffer
        end, skip = _head_end(buffer, max(0, self._searched - 3))
        if end < 0:
            self._check_head_size(len(buffer))
            self._searched = len(buffer)
            return False
        self._check_head_size(end)
        head = bytes(buffer[:end]).decode("latin-1")
        del buffer[: end + skip]
        self._searched = 0
        self._read_head(head)
        if self._mode == "close" and buffer:
            self._pieces.append(bytes(buffer))
            buffer.clear()
        return True

    @staticmethod
    def _check_head_size(size: int) -> None:
        if size > MAX_HEAD_BYTES:
            raise _refuse(f"its headers are longer than {MAX_HEAD_BYTES:,} bytes")

    def _read_head(self, head: str) -> None:
        """Take a complete head (status line and headers, no blank line)."""
        lines = head.split("\n")
        status_line = lines[0].rstrip("\r")
        version, _, rest = status_line.partition(" ")
        code = rest[:3]
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise _refuse(f"status line {status_line[:40]!r} is not HTTP/1.x")
        if len(code) != 3 or not code.isdigit() or rest[3:4] not in ("", " "):
            raise _refuse(f"status line {status_line[:40]!r} has no three-digit status")
        status = int(code)
        headers: dict[str, str] = {}
        unfolded: list[str] = []
        for raw in lines[1:]:
            line = raw.rstrip("\r")
            if line[:1] in (" ", "\t") and unfolded:
                # Obsolete line folding: a client reads it as one space (RFC 9112 5.2).
                unfolded[-1] = unfolded[-1] + " " + line.lstrip(" \t")
            else:
                unfolded.append(line)
        for line in unfolded:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip() or not _is_token(name):
                raise _refuse(f"header line {line[:40]!r} is not 'name: value'")
            key = name.lower()
            value = value.strip(" \t")
            if key in headers:
                if key == "content-length" and headers[key] != value:
                    raise _refuse("it declares two different Content-Length values")
                if key != "content-length":
                    headers[key] = headers[key] + ", " + value
            else:
                headers[key] = value
        if 100 <= status < 200:
            if status == 101:
                raise _refuse("the server switched protocols, which was not asked for")
            return  # an interim reply (100 Continue): the real one follows
        self.status = status
        self.headers = headers
        connection = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        if version == "HTTP/1.0" or "close" in connection:
            self._reusable = False
        transfer = headers.get("transfer-encoding")
        if status in _NO_BODY_STATUS:
            self.done = True
            if transfer is not None or headers.get("content-length", "0") != "0":
                self._reusable = False
        elif transfer is not None:
            codings = [t.strip().lower() for t in transfer.split(",")]
            if codings != ["chunked"]:
                raise _refuse(f"Transfer-Encoding {transfer[:40]!r} is not supported")
            if "content-length" in headers:
                self._reusable = False  # both framings given: trust neither for reuse
            self._mode = "chunk-size"
        elif "content-length" in headers:
            declared = headers["content-length"]
            if not declared.isdigit() or len(declared) > 18:
                raise _refuse(f"Content-Length {declared[:20]!r} is not a length")
            self._left = int(declared)
            self._mode = "length"
            if self._left == 0:
                self.done = True
        else:
            self._mode = "close"
            self._reusable = False


def _head_end(data: bytes | bytearray, start: int) -> tuple[int, int]:
    """Where the head ends in ``data`` (searching from ``start``) and the length of its
    blank line; ``(-1, 0)`` when it has not ended yet."""
    end = data.find(b"\r\n\r\n", start)
    if end >= 0:
        return end, 4
    end = data.find(b"\n\n", start)
    return (end, 2) if end >= 0 else (-1, 0)


_is_token = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z").match
"""Whether a header name is an HTTP token (RFC 9110 5.6.2)."""


# ---------------------------------------------------------------------- the request
def request_head(
    method: str, url: httpx.URL, headers: dict[str, str], content_length: int | None
) -> bytes:
    """The request line and headers, ready to write. A header value holding a line
    break (or anything but printable ASCII) is refused by name, its value unquoted:
    it may be the key."""
    lines = [
        f"{method} {url.raw_path.decode('ascii')} HTTP/1.1",
        f"Host: {url.netloc.decode('ascii')}",
    ]
    for name, value in headers.items():
        if not (value.isascii() and value.isprintable()) or not _is_token(name):
            raise httpx.LocalProtocolError(
                f"header {name!r} cannot be sent: its value must be printable ASCII"
            )
        lines.append(f"{name}: {value}")
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("ascii")


def origin_of(url: httpx.URL) -> Origin:
    scheme = url.scheme
    port = url.port or (443 if scheme == "https" else 80)
    return scheme, url.raw_host.decode("ascii"), port


# ---------------------------------------------------------------------- sync
Remaining = Callable[[float | None, type[Exception]], float | None]
"""``(timeout, failure) -> seconds``: a timeout shortened to the attempt's deadline
(raising ``failure`` when it has passed)."""


class _Connection:
    __slots__ = ("idle_since", "origin", "sock")

    def __init__(self, sock: socket.socket, origin: Origin) -> None:
        self.sock = sock
        self.origin = origin
        self.idle_since = 0.0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def stale(self, now: float) -> bool:
        """Expired, or readable while idle: closed by the server, or sent unasked bytes."""
        if now - self.idle_since > KEEPALIVE_EXPIRY:
            return True
        sock = self.sock
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        return socket_readable(sock)


def socket_readable(sock: socket.socket) -> bool:
    """Whether a read would return at once: data, or the end of a closed connection."""
    fileno = sock.fileno()
    if fileno < 0:
        return True  # gone: the next read returns the end
    if not hasattr(select, "poll"):  # Windows
        return bool(select.select([fileno], [], [], 0)[0])
    poller = select.poll()
    poller.register(fileno, select.POLLIN)
    return bool(poller.poll(0))


class _PoolBook(Generic[C]):
    """What both pools decide, without I/O or locking: which idle connection a request
    reuses, when a new one may be opened, what is kept after a reply. The sync pool
    calls it under its lock; the async pool on its loop."""

    def __init__(
        self,
        tls_context: Callable[[], ssl.SSLContext],
        *,
        max_connections: int,
        timeout: float,
        connect_timeout: float,
        remaining: Remaining,
    ) -> None:
        self._tls_context = tls_context  # called on the first https connection only
        self._max = max_connections
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._remaining = remaining
        self._idle: list[C] = []
        self._open = 0
        self._closed = False
        self._start()

    def _start(self) -> None:
        """The pool's own waiting machinery (a lock, or the loop's futures)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(open={self._open}, idle={len(self._idle)})"

    def _pick(self, origin: Origin) -> C | bool:
        """An idle connection to ``origin`` to reuse (the most recent that is not
        stale); ``True``: open a new one (counted already); ``False``: wait."""
        if self._closed:
            raise httpx.ConnectError("the connection pool is closed")
        now = time.monotonic()
        for index in range(len(self._idle) - 1, -1, -1):
            candidate = self._idle[index]
            if candidate.origin != origin:
                continue
            del self._idle[index]
            if not candidate.stale(now):
                return candidate
            self._discard(candidate)
        if self._open >= self._max and self._idle:
            self._discard(self._idle.pop(0))  # full, but idle towards other hosts
        if self._open < self._max:
            self._open += 1
            return True
        return False

    def _keep(self, connection: C, reusable: bool) -> None:
        """After a reply: back to the idle list if it may carry another, else closed."""
        if reusable and not self._closed:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            self._discard(connection)

    def _discard(self, connection: C) -> None:
        connection.close()
        self._open -= 1

    def _close_idle(self) -> None:
        self._closed = True
        for connection in self._idle:
            self._discard(connection)
        self._idle.clear()


class SyncPool(_PoolBook["_Connection"]):
    """Keep-alive connections for one process, shared by threads; at most
    ``max_connections`` open at once (a request waits for one within its timeout)."""

    def _start(self) -> None:
        self._cond = threading.Condition()

    def send(self, url: httpx.URL, head: bytes, body: bytes | None) -> SyncReply:
        """Write one request and read its reply's head; the body is read by the reply."""
        connection = self._acquire(origin_of(url))
        try:
            sock = connection.sock
            sock.settimeout(self._remaining(self._timeout, httpx.WriteTimeout))
            try:
                if body and len(body) > 65536:
                    sock.sendall(head)
                    sock.sendall(body)
                else:
                    sock.sendall(head + body if body else head)
            except TimeoutError:
                raise httpx.WriteTimeout("timed out sending the request") from None
            except OSError as exc:
                raise httpx.WriteError(_describe(exc)) from None
            parser = ReplyParser()
            while parser.status is None:
                _receive(connection, parser, self._remaining, self._timeout)
        except BaseException:
            self._release(connection, reusable=False)
            raise
        return SyncReply(self, connection, parser)

    def _acquire(self, origin: Origin) -> _Connection:
        with self._cond:
            while True:
                picked = self._pick(origin)
                if isinstance(picked, _Connection):
                    return picked
                if picked:
                    break
                wait = self._remaining(self._timeout, httpx.PoolTimeout)
                if not self._cond.wait(wait) and wait is not None:
                    raise httpx.PoolTimeout("no connection became free in time")
        try:
            return self._connect(origin)
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise

    def _connect(self, origin: Origin) -> _Connection:
        scheme, host, port = origin
        timeout = self._remaining(self._connect_timeout, httpx.ConnectTimeout)
        try:
            sock = socket.create_connection((host, port), timeout)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(_describe(exc)) from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                sock.settimeout(self._remaining(self._connect_timeout, httpx.ConnectTimeout))
                sock = self._tls_context().wrap_socket(sock, server_hostname=host)
        except TimeoutError:
            sock.close()
            raise httpx.ConnectTimeout(f"the TLS handshake with {host} timed out") from None
        except OSError as exc:
            sock.close()
            raise httpx.ConnectError(_describe(exc)) from None
        except BaseException:
            sock.close()
            raise
        return _Connection(sock, origin)

    def _release(self, connection: _Connection, *, reusable: bool) -> None:
        with self._cond:
            self._keep(connection, reusable)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._close_idle()
            self._cond.notify_all()


def _receive(
    connection: _Connection, parser: ReplyParser, remaining: Remaining, timeout: float
) -> None:
    sock = connection.sock
    sock.settimeout(remaining(timeout, httpx.ReadTimeout))
    try:
        data = sock.recv(min(max(parser.wanted, 65536), READ_BYTES))
    except TimeoutError:
        raise httpx.ReadTimeout("timed out reading the reply") from None
    except OSError as exc:
        raise httpx.ReadError(_describe(exc)) from None
    if data:
        parser.feed(data)
    else:
        parser.feed_eof()


def _describe(exc: OSError) -> str:
    return str(exc) or type(exc).__name__


P = TypeVar("P", bound=_PoolBook[Any])


class _ReplyHead(Generic[P, C]):
    """A reply whose head is read: ``status_code``, ``headers`` (lower-case names); the
    body is read from its connection, which goes back to ``pool`` when it is closed."""

    __slots__ = ("_connection", "_parser", "_pool", "headers", "status_code")

    def __init__(self, pool: P, connection: C, parser: ReplyParser) -> None:
        self._pool = pool
        self._connection: C | None = connection
        self._parser = parser
        assert parser.status is not None
        self.status_code: int = parser.status
        self.headers = parser.headers

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300


class SyncReply(_ReplyHead[SyncPool, _Connection]):
    """The body through :meth:`iter_raw`; :meth:`close` gives the connection back."""

    __slots__ = ()

    def iter_raw(self) -> Iterator[bytes | memoryview]:
        parser = self._parser
        while True:
            piece = parser.take_body()
            if piece:
                yield piece
            if parser.done or self._connection is None:
                return
            _receive(self._connection, parser, self._pool._remaining, self._pool._timeout)

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool._release(connection, reusable=self._parser.reusable)


# ---------------------------------------------------------------------- async
class _AsyncConnection(asyncio.Protocol):
    """One connection on the event loop. Bytes are gathered here and the reader is
    woken once, when as many have arrived as the reply is known to need."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.idle_since = 0.0
        self.transport: asyncio.Transport | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._want = 1
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._paused = False
        self._problem: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size >= _PAUSE_BYTES and not self._paused and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True
        if self._size >= self._want:
            self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if exc is not None:
            self._problem = _describe(exc) if isinstance(exc, OSError) else type(exc).__name__
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def stale(self, now: float) -> bool:
        return (
            now - self.idle_since > KEEPALIVE_EXPIRY
            or self._eof
            or self._size > 0
            or self.transport is None
            or self.transport.is_closing()
        )

    async def read(self, want: int, timeout: float | None) -> list[bytes]:
        """The pieces received (at least ``want`` bytes unless the connection ends
        first), not joined; none at the end. ``timeout`` bounds the wait
        (``httpx.ReadTimeout``)."""
        # Never wait for more than pauses the socket: past that, nothing more arrives
        # until this read takes what is buffered.
        want = min(want, _PAUSE_BYTES)
        if self._size < want and not self._eof:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            self._want = want
            timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                self._want = 1
                if timer is not None:
                    timer.cancel()
        if not self._chunks:
            if self._problem is not None:
                raise httpx.ReadError(self._problem)
            return []
        chunks, self._chunks, self._size = self._chunks, [], 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return chunks

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.ReadTimeout("timed out reading the reply"))


class AsyncPool(_PoolBook["_AsyncConnection"]):
    """Keep-alive connections for one event loop; at most ``max_connections`` open."""

    def _start(self) -> None:
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def send(self, url: httpx.URL, head: bytes, body: bytes | None) -> AsyncReply:
        connection = await self._acquire(origin_of(url))
        try:
            transport = connection.transport
            if transport is None or transport.is_closing():
                raise httpx.WriteError("the connection closed before the request was sent")
            transport.write(head + body if body else head)
            parser = ReplyParser()
            while parser.status is None:
                await _areceive(connection, parser, self._remaining, self._timeout)
        except BaseException:
            self._release(connection, reusable=False)
            raise
        return AsyncReply(self, connection, parser)

    async def _acquire(self, origin: Origin) -> _AsyncConnection:
        while True:
            picked = self._pick(origin)
            if isinstance(picked, _AsyncConnection):
                return picked
            if picked:
                break
            wait = self._remaining(self._timeout, httpx.PoolTimeout)
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, wait)
            except (asyncio.TimeoutError, TimeoutError):
                raise httpx.PoolTimeout("no connection became free in time") from None
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
        try:
            return await self._connect(origin)
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    async def _connect(self, origin: Origin) -> _AsyncConnection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        timeout = self._remaining(self._connect_timeout, httpx.ConnectTimeout)
        tls = self._tls_context() if scheme == "https" else None
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _AsyncConnection(origin),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls is not None else None,
                ),
                timeout,
            )
        except (asyncio.TimeoutError, TimeoutError):
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(_describe(exc)) from None
        return connection

    def _release(self, connection: _AsyncConnection, *, reusable: bool) -> None:
        self._keep(connection, reusable)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._close_idle()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        await asyncio.sleep(0)  # let the aborted transports close their sockets


async def _areceive(
    connection: _AsyncConnection, parser: ReplyParser, remaining: Remaining, timeout: float
) -> None:
    pieces = await connection.read(parser.wanted, remaining(timeout, httpx.ReadTimeout))
    for piece in pieces:
        parser.feed(piece)
    if not pieces:
        parser.feed_eof()


class AsyncReply(_ReplyHead[AsyncPool, _AsyncConnection]):
    """The async twin of :class:`SyncReply`."""

    __slots__ = ()

    async def aiter_raw(self) -> AsyncIterator[bytes | memoryview]:
        parser = self._parser
        while True:
            piece = parser.take_body()
            if piece:
                yield piece
            if parser.done or self._connection is None:
                return
            await _areceive(self._connection, parser, self._pool._remaining, self._pool._timeout)

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool._release(connection, reusable=self._parser.reusable)


Reply = httpx.Response | SyncReply | AsyncReply
"""What the transport's exchange reads: an httpx response or one of ours."""

__all__ = [
    "AsyncPool",
    "AsyncReply",
    "Reply",
    "ReplyParser",
    "SyncPool",
    "SyncReply",
    "origin_of",
    "request_head",
    "socket_readable",
]
