"""A hostile HTTP server on loopback: every reply is scripted by the test, byte for byte.

The emulator behaves like the service; this server behaves like whatever a test needs
the other end to be: a liar (``NaN`` in a vector, an error in a 200, ``gzip`` on a
plain body), a bomb (a reply of hundreds of MB, a gzip bomb), a slowloris (a byte a
second), a service asking for a wait of a day. It speaks just enough HTTP/1.1 to be
talked to by httpx (keep-alive included) and records what each request carried.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RawRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Conn:
    """The server side of one connection, handed to a handler to write its reply."""

    sock: socket.socket
    sent: int = 0

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += len(data)

    def drop(self) -> None:
        """Cut the connection now (the reader's file object would keep a plain close
        from reaching the client)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()

    def trickle(self, data: bytes, interval: float) -> None:
        """Send ``data`` a byte at a time, ``interval`` seconds apart."""
        for byte in data:
            self.send(bytes([byte]))
            time.sleep(interval)


Handler = Callable[[RawRequest, Conn], None]


def response_bytes(
    status: int = 200, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    """A complete HTTP/1.1 response; ``Content-Length`` is added unless given."""
    merged = {"Content-Type": "application/json", **(headers or {})}
    if not any(k.lower() == "content-length" for k in merged):
        merged["Content-Length"] = str(len(body))
    head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in merged.items())
    return head.encode("latin-1") + b"\r\n" + body


def reply(
    status: int = 200, body: bytes | str | Any = b"", headers: dict[str, str] | None = None
) -> Handler:
    """A handler that answers every request the same way (``body`` may be JSON data)."""
    if isinstance(body, str):
        raw = body.encode()
    elif isinstance(body, bytes):
        raw = body
    else:
        raw = json.dumps(body).encode()
    data = response_bytes(status, raw, headers)
    return lambda request, conn: conn.send(data)


def native_reply(vectors: list[Any], *, tokens: int = 3, request_id: str = "rid-hostile") -> bytes:
    """A native text-embedding reply body with the given ``embedding`` values (raw JSON
    text for each, so a test can put ``NaN`` or ``"0.1"`` where a number belongs)."""
    rows = ",".join(
        f'{{"text_index":{i},"embedding":{v if isinstance(v, str) else json.dumps(v)}}}'
        for i, v in enumerate(vectors)
    )
    return (
        f'{{"output":{{"embeddings":[{rows}]}},"usage":{{"total_tokens":{tokens}}},'
        f'"request_id":"{request_id}"}}'
    ).encode()


def gzip_bomb(decoded_bytes: int) -> bytes:
    """Gzip of ``decoded_bytes`` spaces: about a thousandth of that size on the wire."""
    out = gzip.compress(b" " * decoded_bytes, compresslevel=9)
    return out


@dataclass
class HostileServer:
    """``with HostileServer(handler) as server: ... server.base_url ...``"""

    handler: Handler
    requests: list[RawRequest] = field(default_factory=list)
    connections: int = 0
    tls: ssl.SSLContext | None = None
    """Serve HTTPS with this server-side context (plain HTTP without)."""

    def __post_init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        scheme = "http" if self.tls is None else "https"
        return f"{scheme}://127.0.0.1:{self.port}"

    def __enter__(self) -> HostileServer:
        # Set here, not in the thread: a test that ends at once closes the listener
        # before the thread runs.
        self._listener.settimeout(0.1)
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self.connections += 1
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        if self.tls is not None:
            try:
                sock = self.tls.wrap_socket(sock, server_side=True)
            except OSError:  # the client refused our certificate, or went away
                sock.close()
                return
        conn = Conn(sock)
        reader = sock.makefile("rb")
        try:
            while not self._stop.is_set():
                request = _read_request(reader)
                if request is None:
                    return
                with self._lock:
                    self.requests.append(request)
                self.handler(request, conn)
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                sock.close()


def _read_request(reader: Any) -> RawRequest | None:
    line = reader.readline()
    if not line:
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        header = reader.readline().decode("latin-1")
        if header in ("\r\n", "\n", ""):
            break
        name, _, value = header.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    return RawRequest(method, path, headers, reader.read(length) if length else b"")


@contextlib.contextmanager
def hostile(handler: Handler, tls: ssl.SSLContext | None = None) -> Iterator[HostileServer]:
    with HostileServer(handler, tls=tls) as server:
        yield server
