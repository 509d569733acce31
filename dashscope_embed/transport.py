"""One HTTP request at a time, sync or async: JSON body in, reply bytes or a typed error out.

What this layer promises, whatever the server at the other end does:

* **Bounded replies.** A reply is read up to a byte limit the caller sets (decoded size:
  a gzip bomb stops at the limit, not after inflating), never whole and unchecked.
* **A deadline per attempt.** ``timeout`` bounds a whole attempt, connecting, sending
  and reading included; a server that trickles a byte a second cannot hold it longer.
  A call-wide deadline (:func:`call_deadline`) can shorten it further.
* **The key stays in.** The ``Authorization`` header is added by an ``httpx.Auth`` at
  send time, only for the configured service origin; no frame of ours holds it, and
  our errors are raised outside ``except`` blocks, so no httpx exception (whose request
  carries the header) hides in ``__context__``.
* **Fork-safe pools.** Connections never cross ``os.fork()``: a child process starts
  with fresh pools (a shared keep-alive socket would hand one process the other's
  reply). An ``httpx`` client *you* passed cannot be renewed, so using it after a fork
  is an error rather than a silent swap.
* **One async pool per event loop, closed with it.** Each loop gets its own
  ``httpx.AsyncClient``; it is closed when ``asyncio.run`` shuts the loop down, so many
  ``asyncio.run`` calls do not pile up sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import platform
import ssl
import threading
import time
import weakref
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from typing import Any

import httpcore
import httpx

from dashscope_embed import __version__
from dashscope_embed.config import ClientSettings
from dashscope_embed.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    BadResponseError,
    ConfigurationError,
)
from dashscope_embed.forksafe import renew_after_fork
from dashscope_embed.protocol.base import HttpRequest
from dashscope_embed.protocol.common import encode_json, parse_error_reply
from dashscope_embed.wire import (
    AsyncPool,
    AsyncReply,
    Reply,
    SyncPool,
    SyncReply,
    request_head,
    socket_readable,
)

logger = logging.getLogger("dashscope_embed")

USER_AGENT = (
    f"dashscope-embed/{__version__} httpx/{httpx.__version__} python/{platform.python_version()}"
)

DEFAULT_MAX_REPLY_BYTES = 64 * 1024 * 1024
"""Reply limit for calls that do not say what they expect (polls, uploads)."""

DOWNLOAD_MAX_BYTES = 4 * 1024 * 1024 * 1024
"""Limit for job result files, which grow with the job (50,000 vectors is ~1 GB)."""

ERROR_REPLY_MAX_BYTES = 1024 * 1024
"""An error reply is a short JSON object; more than this is not read."""


# ---------------------------------------------------------------------- deadlines
_CALL_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "dashscope_call_deadline", default=None
)
_ATTEMPT_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "dashscope_attempt_deadline", default=None
)


@contextlib.contextmanager
def call_deadline(deadline: float | None) -> Iterator[None]:
    """Within the block, no attempt runs past ``deadline`` (a ``time.monotonic()`` time)."""
    token = _CALL_DEADLINE.set(deadline)
    try:
        yield
    finally:
        _CALL_DEADLINE.reset(token)


def _remaining(timeout: float | None, failure: type[Exception]) -> float | None:
    """``timeout`` shortened to what is left of the current attempt's deadline."""
    deadline = _ATTEMPT_DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise failure("the attempt's deadline passed")
    return left if timeout is None else min(timeout, left)


# A reply of ten 1,024-dimension vectors is ~220 KB: read in one go what the socket
# holds, rather than in httpcore's 64 KB steps, each a wake-up and a pass through
# every layer of the HTTP stack.
READ_BYTES = 1024 * 1024


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every read and write stops at the attempt's deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(
            max(max_bytes, READ_BYTES), _remaining(timeout, httpcore.ReadTimeout)
        )

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _remaining(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(
            self._stream.start_tls(
                ssl_context, server_hostname, _remaining(timeout, httpcore.ConnectTimeout)
            )
        )

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(
            self._inner.connect_tcp(
                host,
                port,
                _remaining(timeout, httpcore.ConnectTimeout),
                local_address,
                socket_options,
            )
        )

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(
            self._inner.connect_unix_socket(
                path, _remaining(timeout, httpcore.ConnectTimeout), socket_options
            )
        )

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _AsyncDeadlineStream(httpcore.AsyncNetworkStream):
    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream
        self._socket: Any = _UNKNOWN

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._stream.read(
            max(max_bytes, READ_BYTES), _remaining(timeout, httpcore.ReadTimeout)
        )

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._stream.write(buffer, _remaining(timeout, httpcore.WriteTimeout))

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        return _AsyncDeadlineStream(
            await self._stream.start_tls(
                ssl_context, server_hostname, _remaining(timeout, httpcore.ConnectTimeout)
            )
        )

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # Asked of every pooled connection each time a request picks one; anyio
            # builds a dict of all its attributes per question. The socket is asked once.
            if self._socket is _UNKNOWN:
                self._socket = self._stream.get_extra_info("socket")
            return self._socket is None or socket_readable(self._socket)
        return self._stream.get_extra_info(info)


_UNKNOWN = object()


class _AsyncDeadlineBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        return _AsyncDeadlineStream(
            await self._inner.connect_tcp(
                host,
                port,
                _remaining(timeout, httpcore.ConnectTimeout),
                local_address,
                socket_options,
            )
        )

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        return _AsyncDeadlineStream(
            await self._inner.connect_unix_socket(
                path, _remaining(timeout, httpcore.ConnectTimeout), socket_options
            )
        )

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _install_deadlines(client: httpx.Client | httpx.AsyncClient) -> None:
    """Put the deadline-aware socket layer under a client this module created.

    httpx has no public hook for the network backend, so this reaches the connection
    pool's; if a future httpx moves it, attempts are still bounded between reads by
    :func:`_read_bounded`, only not inside one slow read.
    """
    transports = [getattr(client, "_transport", None), *getattr(client, "_mounts", {}).values()]
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if isinstance(backend, httpcore.NetworkBackend):
            pool._network_backend = _DeadlineBackend(backend)  # type: ignore[union-attr]
        elif isinstance(backend, httpcore.AsyncNetworkBackend):
            pool._network_backend = _AsyncDeadlineBackend(backend)  # type: ignore[union-attr]
        _use_linear_pool(pool)


# httpcore's pool, on every request start and end, asks each idle connection whether
# the pool holds more than its keep-alive limit by listing every connection's idleness:
# quadratic in the connections. At 64 in flight that doubled the client's CPU per
# vector (651 against 308 ms per 1,000, async). The same decisions, in the same order,
# in linear time; only for httpcore versions whose pool this was checked against, and
# only for the pools this module made (a proxy's pool is another class, left alone).
_LINEAR_POOL_VERSIONS = {f"1.0.{n}" for n in range(3, 10)}


def _assign_linearly(pool: Any) -> list[Any]:
    """httpcore 1.0.3-1.0.9's ``_assign_requests_to_connections``, without the
    quadratic count (the list it measured always held every connection)."""
    closing = []
    for connection in list(pool._connections):
        if connection.is_closed():
            pool._connections.remove(connection)
        elif connection.has_expired() or (
            connection.is_idle() and len(pool._connections) > pool._max_keepalive_connections
        ):
            pool._connections.remove(connection)
            closing.append(connection)
    for pool_request in [request for request in pool._requests if request.is_queued()]:
        origin = pool_request.request.url.origin
        available = next(
            (c for c in pool._connections if c.can_handle_request(origin) and c.is_available()),
            None,
        )
        if available is not None:
            pool_request.assign_to_connection(available)
            continue
        if len(pool._connections) >= pool._max_connections:
            idle = next((c for c in pool._connections if c.is_idle()), None)
            if idle is None:
                continue  # stays queued until a connection frees up
            pool._connections.remove(idle)
            closing.append(idle)
        connection = pool.create_connection(origin)
        pool._connections.append(connection)
        pool_request.assign_to_connection(connection)
    return closing


class _LinearPool(httpcore.ConnectionPool):
    def _assign_requests_to_connections(self) -> list[Any]:
        return _assign_linearly(self)


class _AsyncLinearPool(httpcore.AsyncConnectionPool):
    def _assign_requests_to_connections(self) -> list[Any]:
        return _assign_linearly(self)


def _use_linear_pool(pool: Any) -> None:
    if httpcore.__version__ not in _LINEAR_POOL_VERSIONS:
        return
    if type(pool) is httpcore.ConnectionPool:
        pool.__class__ = _LinearPool
    elif type(pool) is httpcore.AsyncConnectionPool:
        pool.__class__ = _AsyncLinearPool


# ---------------------------------------------------------------------- the key
class _ServiceAuth(httpx.Auth):
    """Adds ``Authorization`` at send time, and only for the configured service origin.

    Holding the config (never the key) keeps the key out of every object and frame of
    ours; it is read from the config the moment the header is written.
    """

    def __init__(self, config: ClientSettings) -> None:
        self._config = config
        self._origin = httpx.URL(config.root_url)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self.serves(request.url):
            token = self._config.bearer_token()
            if token is not None:
                request.headers["Authorization"] = "Bearer " + token
        yield request

    def serves(self, url: httpx.URL) -> bool:
        """Whether ``url`` is on the configured service origin (the key goes nowhere else)."""
        origin = self._origin
        return (url.scheme, url.host, url.port) == (origin.scheme, origin.host, origin.port)

    def head_for(
        self, request: HttpRequest, url: httpx.URL, headers: dict[str, str], length: int | None
    ) -> bytes:
        """The request head for :mod:`dashscope_embed.wire`, the key in it when ``url``
        is the service's. The key lives only in this frame, and only while it runs."""
        token = self._config.bearer_token() if request.authenticated and self.serves(url) else None
        try:
            if token is not None:
                headers = {**headers, "Authorization": "Bearer " + token}
            return request_head(request.method, url, headers, length)
        finally:
            del token, headers


# ---------------------------------------------------------------------- reading replies
class _BoundedDecoder:
    """Decodes a reply body chunk by chunk and refuses to produce more than ``limit``
    bytes; only ``gzip``, ``deflate`` and no encoding are accepted (we ask for no other)."""

    def __init__(self, encoding: str, limit: int, url: str) -> None:
        self.limit = limit
        self.url = url
        self.buffer = bytearray()  # what zlib decoded
        # Undecoded replies are kept as the pieces that arrived and joined once.
        self._pieces: list[bytes | memoryview] = []
        self._size = 0
        encoding = encoding.strip().lower()
        if encoding in ("", "identity"):
            self._zlib = None
        elif encoding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS)
        else:
            raise BadResponseError(
                f"reply from {url} uses content-encoding {encoding!r}, which was not asked for"
            )
        self.encoding = encoding

    def feed(self, chunk: bytes | memoryview) -> str | None:
        """Add a raw chunk; returns a problem description, or ``None`` if all is well."""
        if self._zlib is None:
            self._pieces.append(chunk)
            self._size += len(chunk)
            return self._over()
        data = chunk
        try:
            while data:
                self.buffer += self._zlib.decompress(data, self.limit + 1 - len(self.buffer))
                if problem := self._over():
                    return problem
                data = self._zlib.unconsumed_tail
        except zlib.error as exc:
            return f"its {self.encoding} body cannot be decoded ({exc})"
        return None

    def finish(self) -> str | None:
        if self._zlib is None:
            return None
        try:
            self.buffer += self._zlib.flush()
        except zlib.error as exc:
            return f"its {self.encoding} body cannot be decoded ({exc})"
        if not self._zlib.eof:
            return f"its {self.encoding} body ends early"
        return self._over()

    def body(self) -> bytes:
        """The decoded body (call after :meth:`finish`)."""
        return bytes(self.buffer) if self._zlib is not None else b"".join(self._pieces)

    def _over(self) -> str | None:
        if max(self._size, len(self.buffer)) > self.limit:
            return f"it is larger than the {self.limit:,} bytes this request can need"
        return None


def _past_deadline() -> bool:
    deadline = _ATTEMPT_DEADLINE.get()
    return deadline is not None and time.monotonic() >= deadline


def _already_read(response: Reply, limit: int, url: str) -> bytes | None:
    """The body of a reply that arrived already read (an ``httpx.MockTransport`` reply, or
    one from a custom transport), checked against the limit; ``None`` for a live stream."""
    if not isinstance(response, httpx.Response) or not response.is_stream_consumed:
        return None
    if len(response.content) > limit:
        raise _bad_reply(response, url, f"it is larger than the {limit:,} bytes allowed")
    return response.content


def _reply_limit(response: Reply, limit: int) -> int:
    return limit if response.is_success else min(limit, ERROR_REPLY_MAX_BYTES)


def _declared_too_large(response: Reply, limit: int) -> bool:
    declared = response.headers.get("content-length", "")
    encoded = "content-encoding" in response.headers
    return declared.isdigit() and not encoded and int(declared) > limit


def _bad_reply(response: Reply, url: str, problem: str) -> BadResponseError:
    return BadResponseError(
        f"reply from {url} (HTTP {response.status_code}) was not read: {problem}",
        status_code=response.status_code,
        request_id=response.headers.get("x-request-id") or None,
    )


def _timed_out(url: str, what: str) -> APITimeoutError:
    return APITimeoutError(f"request to {url} timed out ({what})")


def _map_http_error(exc: httpx.HTTPError, url: str) -> APIError:
    """httpx's failures as this package's typed errors (the one place they are mapped).

    Only text is taken from ``exc``: its ``request`` (and the key in its headers) stays
    behind, and callers raise the result outside their ``except`` block so ``exc`` is not
    chained either.
    """
    if isinstance(exc, httpx.TimeoutException):
        return _timed_out(url, type(exc).__name__)
    detail = str(exc) or type(exc).__name__
    return APIConnectionError(f"no complete reply from {url}: {type(exc).__name__}: {detail}")


def _result(response: Reply, body: bytes) -> bytes:
    if response.is_success:
        return body
    error = parse_error_reply(response.status_code, response.headers, body)
    logger.debug("DashScope error reply: %s", error)
    raise error


# ---------------------------------------------------------------------- the transport
@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context for every pool: loading the certificate store takes ~30 ms, which
    each new event loop's pool (every ``asyncio.run``) would otherwise pay again. The
    pools build it on their first https connection, so a plain-HTTP base URL (the
    emulator, a self-hosted server inside a cluster) never pays for it."""
    return httpx.create_ssl_context()


class Transport:
    """Sends requests for one :class:`ClientSettings`; owns the pooled HTTP clients it made."""

    def __init__(
        self,
        config: ClientSettings,
        *,
        http_client: httpx.Client | None = None,
        async_http_client: httpx.AsyncClient | None = None,
        max_connections: int = 20,
    ) -> None:
        self.config = config
        self._given_client = http_client
        self._given_async_client = async_http_client
        self._max_connections = max_connections
        self._auth = _ServiceAuth(config)
        self._pid = os.getpid()
        self._client: httpx.Client | None = None
        self._wire: SyncPool | None = None
        self._proxy_probe: httpx.Client | None = None
        self._async_clients: dict[asyncio.AbstractEventLoop, _LoopPools] = {}
        self._lock = threading.Lock()
        self._abandoned: object = None
        renew_after_fork(self)

    def __repr__(self) -> str:
        return f"Transport(root_url={self.config.root_url!r})"

    # Pickling: settings travel, sockets and the key do not.
    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "max_connections": self._max_connections}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"], max_connections=state["max_connections"])  # type: ignore[misc]

    def _after_fork(self) -> None:
        """In a forked child: set the parent's pools aside, never closing or finalising
        them (their sockets and event loops are still the parent's), and start afresh."""
        self._abandoned = (self._client, self._wire, self._async_clients)
        self._lock = threading.Lock()
        self._client = None
        self._wire = None
        self._async_clients = {}
        if self._given_client is None and self._given_async_client is None:
            self._pid = os.getpid()
        # else: the caller's clients cannot be renewed; _check_pid refuses them here.

    def headers(self) -> dict[str, str]:
        """Request headers, without the key (the auth adds it at send time)."""
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Accept-Encoding": "gzip, deflate",
            "User-Agent": USER_AGENT,
        }
        if self.config.workspace and self.config.server is None:
            headers["X-DashScope-WorkSpace"] = self.config.workspace
        return headers

    def _timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.config.timeout, connect=self.config.connect_timeout)

    def _limits(self) -> httpx.Limits:
        return httpx.Limits(
            max_connections=self._max_connections,
            max_keepalive_connections=self._max_connections,
        )

    def _check_pid(self) -> None:
        if os.getpid() == self._pid:
            return
        if self._given_client is not None or self._given_async_client is not None:
            raise ConfigurationError(
                f"the httpx client passed to this DashScope client was created in process "
                f"{self._pid} and is being used in process {os.getpid()} after os.fork(): its "
                "pooled connections are shared with the parent, so replies could be swapped. "
                "Create the DashScope client (and your httpx client) in the child process"
            )
        self._after_fork()

    @property
    def client(self) -> httpx.Client:
        self._check_pid()
        if self._given_client is not None:
            return self._given_client
        with self._lock:
            if self._client is None:
                client = httpx.Client(
                    timeout=self._timeout(), limits=self._limits(), verify=_tls_context()
                )
                _install_deadlines(client)
                self._client = client
                # Closed with this transport if nobody calls close(): most users never
                # do (an embed model lives as long as the app), and an abandoned pool
                # leaves its sockets to the garbage collector.
                weakref.finalize(self, _close_in_process, client, os.getpid())
            return self._client

    def _proxy_router(self) -> httpx.Client:
        """An httpx client that never sends: it only says, by httpx's own rule, whether
        the environment routes a URL through a proxy. Its TLS context loads no
        certificates (a request it sent to an https URL would fail verification)."""
        router = self._proxy_probe
        if router is None:
            with self._lock:
                if self._proxy_probe is None:
                    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                    self._proxy_probe = httpx.Client(verify=bare)
                router = self._proxy_probe
        return router

    def _pool_limits(self) -> dict[str, Any]:
        return {
            "max_connections": self._max_connections,
            "timeout": self.config.timeout,
            "connect_timeout": self.config.connect_timeout,
            "remaining": _remaining,
        }

    def _wire_pool(self) -> SyncPool:
        """This process's pool of plain-socket connections (see :mod:`dashscope_embed.wire`)."""
        with self._lock:
            if self._wire is None:
                self._wire = SyncPool(_tls_context, **self._pool_limits())
                weakref.finalize(self, _close_in_process, self._wire, os.getpid())
            return self._wire

    async def async_client(self) -> httpx.AsyncClient:
        """The running loop's pooled httpx client, created (and tied to the loop's end)
        on first use; most loops never need one (see :mod:`dashscope_embed.wire`)."""
        self._check_pid()
        if self._given_async_client is not None:
            return self._given_async_client
        pools = await self._loop_pools()
        if pools.http is None:
            pools.http = httpx.AsyncClient(
                timeout=self._timeout(), limits=self._limits(), verify=_tls_context()
            )
            _install_deadlines(pools.http)
        return pools.http

    async def _loop_pools(self) -> _LoopPools:
        """The running loop's connections, created on first use and closed with the loop."""
        self._check_pid()
        loop = asyncio.get_running_loop()
        pools = self._async_clients.get(loop)
        if pools is not None:
            return pools
        for old in [old for old in self._async_clients if old.is_closed()]:
            # A loop closed without shutting down its async generators: its sockets can
            # no longer be closed politely; drop them so they are freed.
            del self._async_clients[old]
        pools = _LoopPools(AsyncPool(_tls_context, **self._pool_limits()))
        # The loop's first-iteration hook registers the generator; asyncio.run closes it
        # (and so the pools) before closing the loop.
        await pools.closer.__anext__()
        self._async_clients[loop] = pools
        return pools

    # ------------------------------------------------------------------ requests
    def send(self, request: HttpRequest) -> bytes:
        """Send ``request``; return the 2xx body (bounded) or raise the typed error.

        The exchange (:meth:`_exchange`) decides everything; this only does its I/O."""
        self._check_pid()
        exchange = self._exchange(request)
        token = _ATTEMPT_DEADLINE.set(self._deadline(request))
        response: httpx.Response | SyncReply | None = None
        chunks: Iterator[bytes | memoryview] | None = None
        reply: Any = None
        try:
            while True:
                try:
                    step = exchange.send(reply)
                except StopIteration as done:
                    body: bytes = done.value
                    return body
                try:
                    if isinstance(step, _Open):
                        response = self._open(step.request)
                        reply = response
                    else:
                        chunks = chunks or step.response.iter_raw()
                        reply = next(chunks, b"")
                except httpx.HTTPError as exc:
                    reply = _Failed(exc)  # handed over outside this block: nothing chains
        finally:
            exchange.close()
            if response is not None:
                response.close()
            _ATTEMPT_DEADLINE.reset(token)

    async def asend(self, request: HttpRequest) -> bytes:
        """Async twin of :meth:`send`: the same exchange, its I/O done on the event loop."""
        self._check_pid()
        pool = None if self._given_async_client is not None else (await self._loop_pools()).pool
        exchange = self._exchange(request)
        token = _ATTEMPT_DEADLINE.set(self._deadline(request))
        response: httpx.Response | AsyncReply | None = None
        chunks: AsyncIterator[bytes | memoryview] | None = None
        reply: Any = None
        try:
            while True:
                try:
                    step = exchange.send(reply)
                except StopIteration as done:
                    body: bytes = done.value
                    return body
                try:
                    if isinstance(step, _Open):
                        response = await self._aopen(step.request, pool)
                        reply = response
                    else:
                        chunks = chunks or step.response.aiter_raw()
                        reply = await anext(chunks, b"")
                except httpx.HTTPError as exc:
                    reply = _Failed(exc)  # handed over outside this block: nothing chains
        finally:
            exchange.close()
            if response is not None:
                await response.aclose()
            _ATTEMPT_DEADLINE.reset(token)

    def _open(self, request: HttpRequest) -> httpx.Response | SyncReply:
        """Send ``request`` on our own sockets when nothing needs httpx, else through it.

        Only a request that goes through httpx creates its client: a plain-HTTP base URL
        never loads the certificate store."""
        if self._given_client is not None or not _goes_direct(request, self._proxy_router()):
            client = self.client
            return client.send(
                self._build(request, client), auth=self._auth_for(request), stream=True
            )
        url, head, content = self._wire_parts(request)
        try:
            return self._wire_pool().send(url, head, content)
        finally:
            del head

    async def _aopen(
        self, request: HttpRequest, pool: AsyncPool | None
    ) -> httpx.Response | AsyncReply:
        # The environment's proxies are the same for every client we make.
        if pool is None or not _goes_direct(request, self._proxy_router()):
            client = await self.async_client()
            return await client.send(
                self._build(request, client), auth=self._auth_for(request), stream=True
            )
        url, head, content = self._wire_parts(request)
        try:
            return await pool.send(url, head, content)
        finally:
            del head

    def _wire_parts(self, request: HttpRequest) -> tuple[httpx.URL, bytes, bytes | None]:
        """URL, head (the key in it, for the service) and body for :mod:`~.wire`."""
        url = _url_of(request)
        content = encode_json(request.json) if request.json is not None else None
        length = len(content) if content is not None else _empty_length(request)
        head = self._auth.head_for(request, url, self._headers_for(request), length)
        return url, head, content

    def _auth_for(self, request: HttpRequest) -> httpx.Auth | None:
        return self._auth if request.authenticated else None

    def post(
        self,
        url: str,
        body: dict[str, Any],
        extra_headers: dict[str, str] | None = None,
        *,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
    ) -> bytes:
        """POST JSON to a service URL (a job's submit, poll or cancel)."""
        return self.send(
            HttpRequest(
                "POST", url, json=body, headers=extra_headers or {}, reply_limit=max_reply_bytes
            )
        )

    def get(self, url: str, *, max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES) -> bytes:
        """GET a service URL (authenticated)."""
        return self.send(HttpRequest("GET", url, reply_limit=max_reply_bytes))

    def upload(self, url: str, filename: str, content: bytes, fields: dict[str, str]) -> bytes:
        """POST a multipart form with one file (the Batch API's ``/files``)."""
        return self.send(
            HttpRequest(
                "POST",
                url,
                files={"file": (filename, content, "application/jsonl")},
                data=fields,
                whole_timeout=False,
            )
        )

    def download(self, url: str, *, max_bytes: int = DOWNLOAD_MAX_BYTES) -> bytes:
        """GET a result file by its signed URL, *without* the API key (it is another host)."""
        return self.send(
            HttpRequest("GET", url, reply_limit=max_bytes, authenticated=False, whole_timeout=False)
        )

    def _deadline(self, request: HttpRequest) -> float | None:
        if not request.whole_timeout:
            return None
        deadline = time.monotonic() + self.config.timeout
        outer = _CALL_DEADLINE.get()
        return deadline if outer is None else min(deadline, outer)

    def _headers_for(self, request: HttpRequest) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "gzip, deflate"}
        if request.authenticated:
            headers |= self.headers()
            if request.files is not None:
                headers.pop("Content-Type")  # httpx sets the multipart boundary
        headers |= request.headers
        return headers

    def _build(
        self, request: HttpRequest, client: httpx.Client | httpx.AsyncClient
    ) -> httpx.Request:
        headers = self._headers_for(request)
        return client.build_request(
            request.method,
            _url_of(request),
            content=encode_json(request.json) if request.json is not None else None,
            files=request.files,
            data=request.data,
            headers=headers,
        )

    def _exchange(self, request: HttpRequest) -> Generator[_Step, Any, bytes]:
        """One request and its reply, with no I/O of its own: it yields what to do
        (open, read a chunk) and gets the result back from a driver, sync or async.

        Everything that decides anything lives here once: the bounded, decoding read,
        the attempt's deadline, the mapping of httpx's errors to ours (raised outside
        any ``except`` block, so nothing carrying the key is chained)."""
        url = request.url
        opened = yield _Open(request)
        if isinstance(opened, _Failed):
            raise _map_http_error(opened.pop(), url)
        response: Reply = opened
        limit = _reply_limit(response, request.reply_limit)
        if (body := _already_read(response, limit, url)) is not None:
            return _result(response, body)
        if _declared_too_large(response, limit):
            raise _bad_reply(response, url, f"it declares more than the {limit:,} bytes allowed")
        decoder = _BoundedDecoder(response.headers.get("content-encoding", ""), limit, url)
        while True:
            chunk = yield _Read(response)
            if isinstance(chunk, _Failed):
                raise _map_http_error(chunk.pop(), url)
            if not chunk:
                break
            if problem := decoder.feed(chunk):
                raise _bad_reply(response, url, problem)
            if _past_deadline():
                raise _timed_out(url, "the attempt's deadline passed while reading the reply")
        if problem := decoder.finish():
            raise _bad_reply(response, url, problem)
        return _result(response, decoder.body())

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Close the HTTP clients this transport created (not ones the caller passed)."""
        with self._lock:
            if os.getpid() == self._pid:
                if self._client is not None:
                    self._client.close()
                if self._wire is not None:
                    self._wire.close()
                if self._proxy_probe is not None:
                    self._proxy_probe.close()
            self._client = None
            self._wire = None
            self._proxy_probe = None

    async def aclose(self) -> None:
        """Close the async client of the running loop (if this transport created it)."""
        pools = self._async_clients.pop(asyncio.get_running_loop(), None)
        if pools is not None:
            await pools.closer.aclose()  # closes the pool and the httpx client


@functools.lru_cache(maxsize=64)
def _parsed_url(url: str) -> httpx.URL:
    # A call sends hundreds of requests to one service URL: parse it once (a third of
    # the cost of building each request).
    return httpx.URL(url)


def _close_in_process(client: httpx.Client | SyncPool, pid: int) -> None:
    if os.getpid() == pid:  # a forked child must not close its parent's sockets
        client.close()


def _goes_direct(request: HttpRequest, client: httpx.Client | httpx.AsyncClient) -> bool:
    """Whether ``request`` can skip httpx: a JSON (or empty) body, and no proxy from the
    environment for its URL (httpx's own rule decides, ``NO_PROXY`` included)."""
    if request.files is not None or request.data is not None:
        return False
    mounts = getattr(client, "_mounts", None)
    if mounts is None:
        return False  # an httpx that keeps proxies elsewhere: let it do everything
    if not mounts:
        return True
    transport_for = getattr(client, "_transport_for_url", None)
    return transport_for is not None and transport_for(_url_of(request)) is getattr(
        client, "_transport", None
    )


def _url_of(request: HttpRequest) -> httpx.URL:
    # Service URLs repeat: parsed once. A signed download URL is used once, not kept.
    return _parsed_url(request.url) if request.authenticated else httpx.URL(request.url)


def _empty_length(request: HttpRequest) -> int | None:
    """``Content-Length`` of a request without a body: none for a GET, 0 otherwise."""
    return None if request.method in ("GET", "HEAD") else 0


# ---------------------------------------------------------------------- the drivers
class _Open:
    """Send this request; reply with the response (headers read) or a :class:`_Failed`."""

    __slots__ = ("request",)

    def __init__(self, request: HttpRequest) -> None:
        self.request = request


class _Read:
    """Reply with the response's next raw chunk (``b""`` at its end) or a :class:`_Failed`."""

    __slots__ = ("response",)

    def __init__(self, response: Any) -> None:
        self.response = response  # an httpx.Response or a wire reply


class _Failed:
    """An httpx failure handed to the exchange, which maps it to a typed error. Its
    ``repr`` says nothing: the httpx exception's request carries the key."""

    __slots__ = ("_error",)

    def __init__(self, error: httpx.HTTPError) -> None:
        self._error: httpx.HTTPError | None = error

    def pop(self) -> httpx.HTTPError:
        error, self._error = self._error, None
        assert error is not None
        return error

    def __repr__(self) -> str:
        return "_Failed(<httpx error>)"


_Step = _Open | _Read


class _LoopPools:
    """One event loop's connections: our pool, and an httpx client made only when a
    request needs httpx (a proxy, an upload); both closed when the loop ends."""

    __slots__ = ("closer", "http", "pool")

    def __init__(self, pool: AsyncPool) -> None:
        self.pool = pool
        self.http: httpx.AsyncClient | None = None
        self.closer = _close_when_loop_ends(self)


async def _close_when_loop_ends(pools: _LoopPools) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await pools.pool.aclose()
        if pools.http is not None:
            await pools.http.aclose()
