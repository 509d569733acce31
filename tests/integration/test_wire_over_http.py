"""The package's own HTTP/1.1 connections against servers that frame replies every
legal way, send what nobody asked for, sit behind a proxy or speak TLS.

Each vector is checked against the text it belongs to: a reply read on the wrong
connection, a body cut or joined wrong, would show up as a wrong number, not a crash.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import json
import random
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dashscope_embed import APIConnectionError, DashScopeClient, RetryPolicy
from dashscope_embed import transport as transport_module
from dashscope_embed.wire import AsyncPool, SyncPool
from tests.integration.hostile import Conn, RawRequest, hostile, native_reply, response_bytes
from tests.leaks import secret_leaks

KEY = "sk-wire-3c9e1f7a0d5b"
MODES = ["sync", "async"]
SPEC = {"model": "text-embedding-v4", "dimension": 64}
TEXTS = [f"t{i}" for i in range(120)]


def vector_for(text: str) -> list[float]:
    """The vector a text must get back: its number in the first component."""
    return [int(text[1:]) / 1000] + [0.01] * 63


def rows_for(request: RawRequest) -> bytes:
    return native_reply([vector_for(t) for t in request.json()["input"]["texts"]])


def client_for(base_url: str, **kwargs: Any) -> DashScopeClient:
    kwargs.setdefault("retry", RetryPolicy(max_retries=0))
    kwargs.setdefault("max_concurrency", 4)
    return DashScopeClient(api_key=KEY, base_url=base_url, **kwargs)


def embed(client: DashScopeClient, mode: str, texts: list[str]) -> list[list[float]]:
    if mode == "sync":
        return client.embed(texts, **SPEC).require_dense()
    return asyncio.run(client.aembed(texts, **SPEC)).require_dense()


def assert_right(texts: list[str], vectors: list[list[float]]) -> None:
    assert [v[0] for v in vectors] == [vector_for(t)[0] for t in texts]


def chunked_head(headers: dict[str, str]) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{lines}".encode() + b"\r\n"


def chunked(body: bytes, rng: random.Random) -> bytes:
    out, rest = [], body
    while rest:
        size = rng.randrange(1, 700)
        piece, rest = rest[:size], rest[size:]
        out.append(f"{len(piece):x};n=1\r\n".encode() + piece + b"\r\n")
    return b"".join(out) + b"0\r\nX-Trailer: done\r\n\r\n"


def in_pieces(conn: Conn, data: bytes, rng: random.Random) -> None:
    """Write ``data`` in a few pieces with pauses, so reads end anywhere in it."""
    cuts = sorted(rng.randrange(len(data)) for _ in range(4))
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        conn.send(data[start:end])
        time.sleep(0.002)


# ----------------------------------------------------------------- framing
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
def test_chunked_replies_written_in_pieces_give_each_text_its_vector(
    mode: str, gzipped: bool
) -> None:
    rng = random.Random(7)
    lock = threading.Lock()

    def handler(request: RawRequest, conn: Conn) -> None:
        body = rows_for(request)
        headers = {"Transfer-Encoding": "chunked"}
        if gzipped:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        with lock:
            data = chunked_head(headers) + chunked(body, rng)
        in_pieces(conn, data, random.Random(len(data)))

    with hostile(handler) as server:
        assert_right(TEXTS, embed(client_for(server.base_url), mode, TEXTS))
        # Twelve requests, at most four at a time: chunked replies keep the connection.
        assert len(server.requests) == 12 and server.connections <= 4


@pytest.mark.parametrize("mode", MODES)
def test_an_interim_100_continue_is_skipped_and_an_http10_reply_read_to_the_close(
    mode: str,
) -> None:
    def handler(request: RawRequest, conn: Conn) -> None:
        body = rows_for(request)
        if request.json()["input"]["texts"][0] in ("t0", "t20", "t40"):
            conn.send(b"HTTP/1.1 100 Continue\r\n\r\n" + response_bytes(200, body))
        else:  # HTTP/1.0, no length: the body ends when the server closes
            conn.send(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + body)
            conn.drop()

    with hostile(handler) as server:
        assert_right(TEXTS[:60], embed(client_for(server.base_url), mode, TEXTS[:60]))


# ----------------------------------------------------------------- unasked bytes
def stale_reply() -> bytes:
    """A complete reply nobody asked for, with vectors that belong to no text."""
    return response_bytes(200, native_reply([[9.0] * 64] * 10))


@pytest.mark.parametrize("mode", MODES)
def test_a_reply_followed_by_another_never_answers_the_next_request(mode: str) -> None:
    """A server (or a confused gateway) that writes a second reply after the first:
    were the connection reused, the next request would read those vectors as its own."""

    def handler(request: RawRequest, conn: Conn) -> None:
        conn.send(response_bytes(200, rows_for(request)) + stale_reply())

    with hostile(handler) as server:
        assert_right(TEXTS, embed(client_for(server.base_url), mode, TEXTS))
        assert server.connections == len(server.requests) == 12


@pytest.mark.parametrize("mode", MODES)
def test_bytes_that_arrive_while_a_connection_is_idle_cost_the_connection(mode: str) -> None:
    def handler(request: RawRequest, conn: Conn) -> None:
        conn.send(response_bytes(200, rows_for(request)))
        time.sleep(0.05)
        conn.send(stale_reply())

    async def spaced(client: DashScopeClient) -> list[list[float]]:
        vectors = []
        for start in (0, 10, 20):
            vectors += (await client.aembed(TEXTS[start : start + 10], **SPEC)).require_dense()
            await asyncio.sleep(0.3)  # the stale reply reaches the idle connection
        return vectors

    with hostile(handler) as server:
        client = client_for(server.base_url)
        if mode == "sync":
            vectors = []
            for start in (0, 10, 20):
                vectors += client.embed(TEXTS[start : start + 10], **SPEC).require_dense()
                time.sleep(0.3)
        else:
            vectors = asyncio.run(spaced(client))
        assert_right(TEXTS[:30], vectors)
        assert server.connections == 3


# ----------------------------------------------------------------- proxies
@pytest.mark.parametrize("mode", MODES)
def test_a_proxy_from_the_environment_carries_every_request(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests that need a proxy go through httpx, which honours the environment's."""
    with hostile(lambda request, conn: conn.send(response_bytes(200, rows_for(request)))) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.base_url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        # Nothing listens here: only the proxy can answer.
        client = client_for("http://127.0.0.1:9")
        assert_right(TEXTS[:30], embed(client, mode, TEXTS[:30]))
        target = "http://127.0.0.1:9/api/v1/services/embeddings/text-embedding/text-embedding"
        assert [r.path for r in proxy.requests] == [target] * 3


@pytest.mark.parametrize("mode", MODES)
def test_no_proxy_for_a_host_sends_to_it_directly(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = lambda request, conn: conn.send(response_bytes(200, rows_for(request)))  # noqa: E731
    with hostile(answer) as proxy, hostile(answer) as service:
        monkeypatch.setenv("HTTP_PROXY", proxy.base_url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        assert_right(TEXTS[:30], embed(client_for(service.base_url), mode, TEXTS[:30]))
        assert proxy.requests == [] and len(service.requests) == 3


# ----------------------------------------------------------------- TLS
def _certificates(folder: Path) -> tuple[Path, ssl.SSLContext]:
    """A throwaway CA (its PEM file) and a server context whose certificate it signed."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wire test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    return ca_file, server


@pytest.fixture
def fresh_tls_context() -> Iterator[None]:
    """The client's TLS context is built once per process, from the environment."""
    transport_module._tls_context.cache_clear()
    yield
    transport_module._tls_context.cache_clear()


@pytest.mark.parametrize("mode", MODES)
def test_https_to_a_server_signed_by_the_ca_in_ssl_cert_file(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_tls_context: None
) -> None:
    ca_file, server_tls = _certificates(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    rng = random.Random(3)

    def handler(request: RawRequest, conn: Conn) -> None:
        data = chunked_head({"Transfer-Encoding": "chunked"}) + chunked(rows_for(request), rng)
        in_pieces(conn, data, rng)

    with hostile(handler, tls=server_tls) as server:
        assert_right(TEXTS, embed(client_for(server.base_url), mode, TEXTS))
        assert server.connections <= 4  # kept alive over TLS too
        assert {r.headers["authorization"] for r in server.requests} == {f"Bearer {KEY}"}


@pytest.mark.parametrize("mode", MODES)
def test_https_to_a_server_nobody_vouches_for_is_refused_without_the_key(
    mode: str, tmp_path: Path, fresh_tls_context: None
) -> None:
    _, server_tls = _certificates(tmp_path)
    with hostile(lambda request, conn: None, tls=server_tls) as server:
        with pytest.raises(APIConnectionError, match="CERTIFICATE_VERIFY_FAILED") as info:
            embed(client_for(server.base_url), mode, ["hello"])
        assert server.requests == []
    assert secret_leaks(info.value, KEY) == []


@pytest.mark.parametrize("mode", MODES)
def test_plain_http_never_loads_the_certificate_store(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_tls_context: None
) -> None:
    """The emulator in CI and a self-hosted server inside a cluster speak plain HTTP:
    they work on a machine whose certificate setting is broken, and pay nothing for it."""
    broken = tmp_path / "not-a-certificate.pem"
    broken.write_text("this is not PEM")
    monkeypatch.setenv("SSL_CERT_FILE", str(broken))
    with hostile(lambda request, conn: conn.send(response_bytes(200, rows_for(request)))) as server:
        assert_right(TEXTS, embed(client_for(server.base_url), mode, TEXTS))
    assert transport_module._tls_context.cache_info().currsize == 0
    with pytest.raises(ssl.SSLError):  # what an https URL would have met
        transport_module._tls_context()


# ----------------------------------------------------------------- the pool's limit
def test_the_pools_open_no_more_connections_than_allowed() -> None:
    """Six requests at once through pools of two: two connections, six right replies."""

    def slow(request: RawRequest, conn: Conn) -> None:
        time.sleep(0.1)
        conn.send(response_bytes(200, json.dumps(request.json()).encode()))

    def remaining(timeout: float | None, failure: type[Exception]) -> float | None:
        return timeout

    def body(index: int) -> bytes:
        return json.dumps({"n": index}).encode()

    with hostile(slow) as server:
        url = transport_module.httpx.URL(server.base_url + "/x")
        head = b"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 8\r\n\r\n"
        sync = SyncPool(
            ssl.create_default_context, max_connections=2, timeout=10, connect_timeout=10,
            remaining=remaining,
        )  # fmt: skip
        got: dict[int, bytes] = {}

        def one(index: int) -> None:
            reply = sync.send(url, head, body(index))
            got[index] = b"".join(reply.iter_raw())
            reply.close()

        threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        sync.close()
        assert got == {i: body(i) for i in range(6)}
        assert server.connections == 2

        async def async_run() -> dict[int, bytes]:
            pool = AsyncPool(
                ssl.create_default_context, max_connections=2, timeout=10,
                connect_timeout=10, remaining=remaining,
            )  # fmt: skip

            async def one(index: int) -> bytes:
                reply = await pool.send(url, head, body(index))
                data = b"".join([piece async for piece in reply.aiter_raw()])
                await reply.aclose()
                return data

            results = await asyncio.gather(*(one(i) for i in range(6)))
            await pool.aclose()
            return dict(enumerate(results))

        assert asyncio.run(async_run()) == {i: body(i) for i in range(6)}
        assert server.connections == 4


# ----------------------------------------------------------------- cancelled and large
def test_a_cancelled_call_leaves_no_half_read_reply_for_the_next_one() -> None:
    """A call given up while its reply is on the way (``asyncio.wait_for``, a cancelled
    task): the next request on that loop must not read the abandoned reply."""

    def late(request: RawRequest, conn: Conn) -> None:
        time.sleep(0.3)
        conn.send(response_bytes(200, rows_for(request)))

    async def run(client: DashScopeClient) -> list[list[float]]:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(client.aembed(TEXTS[:10], **SPEC), 0.1)
        return (await client.aembed(TEXTS[10:20], **SPEC)).require_dense()

    with hostile(late) as server:
        assert_right(TEXTS[10:20], asyncio.run(run(client_for(server.base_url))))


def test_cancelled_lone_requests_give_their_slot_back_in_flight_and_queued() -> None:
    """A one-request call runs in its caller's task (no task of its own): cancelled on
    the wire or while queued for the only slot, it must still give the slot back, or the
    next call would wait for ever."""

    def late(request: RawRequest, conn: Conn) -> None:
        time.sleep(0.3)
        conn.send(response_bytes(200, rows_for(request)))

    async def run(client: DashScopeClient) -> list[list[float]]:
        on_the_wire = asyncio.ensure_future(client.aembed(TEXTS[:10], **SPEC))
        queued = asyncio.ensure_future(client.aembed(TEXTS[10:20], **SPEC))
        await asyncio.sleep(0.1)
        assert client.gate.in_flight == 1  # the second waits for the only slot
        queued.cancel()
        on_the_wire.cancel()
        for task in (on_the_wire, queued):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert client.gate.in_flight == 0
        return (await asyncio.wait_for(client.aembed(TEXTS[20:30], **SPEC), 5)).require_dense()

    with hostile(late) as server:
        client = client_for(server.base_url, max_concurrency=1)
        assert_right(TEXTS[20:30], asyncio.run(run(client)))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_reply_of_megabytes_arrives_whole_and_in_order(mode: str, framing: str) -> None:
    """Larger than the async reader buffers before pausing the socket (1 MB): the
    pause and resume must lose and reorder nothing."""
    body = random.Random(5).randbytes(5 * 1024 * 1024)

    def handler(request: RawRequest, conn: Conn) -> None:
        if framing == "length":
            conn.send(response_bytes(200, body, {"Content-Type": "application/octet-stream"}))
        else:
            conn.send(chunked_head({"Transfer-Encoding": "chunked"}))
            conn.send(chunked(body, random.Random(6)))

    with hostile(handler) as server:
        client = client_for(server.base_url)
        url = server.base_url + "/result.bin"
        if mode == "sync":
            got = client._transport.download(url)
        else:

            async def fetch() -> bytes:
                return await client._transport.asend(
                    transport_module.HttpRequest(
                        "GET", url, reply_limit=len(body), authenticated=False
                    )
                )

            got = asyncio.run(fetch())
    assert got == body


def test_a_reply_that_fills_the_buffer_while_nobody_reads_is_still_read_whole() -> None:
    """The async reader pauses the socket past 1 MB buffered. If that happens while the
    caller is busy elsewhere (nobody waiting), the next read must take what is there and
    resume the socket, not wait for more bytes than a paused socket can deliver."""
    body = random.Random(8).randbytes(5 * 1024 * 1024)

    def remaining(timeout: float | None, failure: type[Exception]) -> float | None:
        return timeout

    with hostile(lambda request, conn: conn.send(response_bytes(200, body))) as server:
        url = transport_module.httpx.URL(server.base_url + "/big")
        head = b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

        async def fetch() -> bytes:
            pool = AsyncPool(
                ssl.create_default_context, max_connections=2, timeout=5, connect_timeout=5,
                remaining=remaining,
            )  # fmt: skip
            reply = await pool.send(url, head, None)
            await asyncio.sleep(0.5)  # busy elsewhere while the reply arrives
            data = b"".join([piece async for piece in reply.aiter_raw()])
            await reply.aclose()
            await pool.aclose()
            return data

        assert asyncio.run(fetch()) == body
