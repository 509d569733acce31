"""One HTTP request at a time, sync or async: JSON body in, reply bytes or a typed error out.

Clients are created lazily and kept out of pickles. An ``httpx.AsyncClient`` is tied to
the event loop it first ran on, so one is kept per loop: calling the async API from
several ``asyncio.run`` calls (notebooks, LlamaIndex's sync wrappers) just works.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import platform
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import httpx

from dashscope_embed import __version__
from dashscope_embed.config import ClientConfig
from dashscope_embed.errors import APIConnectionError, APITimeoutError
from dashscope_embed.protocol.common import parse_error_reply

logger = logging.getLogger("dashscope_embed")

USER_AGENT = (
    f"dashscope-embed/{__version__} httpx/{httpx.__version__} python/{platform.python_version()}"
)


def encode_body(body: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, non-ASCII kept as is (smaller than ``\\u`` escapes)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class Transport:
    """Sends requests for one :class:`ClientConfig`; owns the pooled HTTP clients it made."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        http_client: httpx.Client | None = None,
        async_http_client: httpx.AsyncClient | None = None,
        max_connections: int = 20,
    ) -> None:
        self.config = config
        self._given_client = http_client
        self._given_async_client = async_http_client
        self._max_connections = max_connections
        self._client: httpx.Client | None = None
        self._async_clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, httpx.AsyncClient
        ] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    # Pickling: settings travel, sockets and the key do not.
    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "max_connections": self._max_connections}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"], max_connections=state["max_connections"])  # type: ignore[misc]

    def headers(self) -> dict[str, str]:
        """Request headers; the key is read here, at send time, never stored elsewhere."""
        headers = {
            "Authorization": f"Bearer {self.config.resolve_api_key()}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        if self.config.workspace:
            headers["X-DashScope-WorkSpace"] = self.config.workspace
        return headers

    def _timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.config.timeout, connect=self.config.connect_timeout)

    def _limits(self) -> httpx.Limits:
        return httpx.Limits(
            max_connections=self._max_connections,
            max_keepalive_connections=self._max_connections,
        )

    @property
    def client(self) -> httpx.Client:
        if self._given_client is not None:
            return self._given_client
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(timeout=self._timeout(), limits=self._limits())
            return self._client

    def async_client(self) -> httpx.AsyncClient:
        if self._given_async_client is not None:
            return self._given_async_client
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            client = httpx.AsyncClient(timeout=self._timeout(), limits=self._limits())
            self._async_clients[loop] = client
        return client

    def post(
        self, url: str, body: dict[str, Any], extra_headers: dict[str, str] | None = None
    ) -> bytes:
        """POST JSON; return the 2xx body or raise the typed error."""
        headers = self.headers() | (extra_headers or {})
        content = encode_body(body)
        with _mapped_errors(url, "request to"):
            response = self.client.post(url, content=content, headers=headers)
        return _check(response)

    async def apost(
        self, url: str, body: dict[str, Any], extra_headers: dict[str, str] | None = None
    ) -> bytes:
        """Async twin of :meth:`post`."""
        headers = self.headers() | (extra_headers or {})
        content = encode_body(body)
        with _mapped_errors(url, "request to"):
            response = await self.async_client().post(url, content=content, headers=headers)
        return _check(response)

    def get(self, url: str) -> bytes:
        """GET a service URL (authenticated); return the 2xx body or raise the typed error."""
        with _mapped_errors(url, "request to"):
            response = self.client.get(url, headers=self.headers())
        return _check(response)

    def upload(self, url: str, filename: str, content: bytes, fields: dict[str, str]) -> bytes:
        """POST a multipart form with one file (the Batch API's ``/files``)."""
        headers = {k: v for k, v in self.headers().items() if k != "Content-Type"}
        with _mapped_errors(url, "upload to"):
            response = self.client.post(
                url,
                files={"file": (filename, content, "application/jsonl")},
                data=fields,
                headers=headers,
            )
        return _check(response)

    def download(self, url: str) -> bytes:
        """GET a result file by its signed URL, *without* the API key (it is another host)."""
        with _mapped_errors(url, "download of"):
            response = self.client.get(url, headers={"User-Agent": USER_AGENT})
        return _check(response)

    def close(self) -> None:
        """Close the HTTP clients this transport created (not ones the caller passed)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    async def aclose(self) -> None:
        """Close the async client of the running loop (if this transport created it)."""
        loop = asyncio.get_running_loop()
        client = self._async_clients.pop(loop, None)
        if client is not None:
            await client.aclose()


@contextlib.contextmanager
def _mapped_errors(url: str, action: str) -> Iterator[None]:
    """httpx's failures as this package's typed errors (the one place they are mapped)."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise APITimeoutError(f"{action} {url} timed out ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        raise APIConnectionError(_describe(exc, url)) from None


def _describe(exc: httpx.TransportError, url: str) -> str:
    # httpx's message names the failure; the request object (with its headers) is never
    # attached to our error, so the key cannot leak through it.
    detail = str(exc) or type(exc).__name__
    return f"no complete reply from {url}: {type(exc).__name__}: {detail}"


def _check(response: httpx.Response) -> bytes:
    if response.is_success:
        return response.content
    error = parse_error_reply(response.status_code, response.headers, response.content)
    logger.debug("DashScope error reply: %s", error)
    raise error
