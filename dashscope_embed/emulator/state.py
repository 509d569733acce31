"""Emulator settings, injected faults, rate limits and the statistics tests assert on."""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass
class EmulatorSettings:
    """How the emulator behaves. Every field is also a command-line flag.

    Attributes:
        api_key: if set, only this key is accepted; otherwise any ``sk-`` key is.
        latency: seconds an embedding request takes, from its arrival to its reply
            (the emulator's own work is counted in it, as the service's compute is in
            the service's latency; a reply never comes sooner).
        latency_per_text: seconds added per text (or content) in a request.
        latency_jitter: up to this many seconds more, drawn at random (from ``seed``) for
            each request, as the service's latency varies; replies then come back out of
            order.
        max_concurrency: requests served at once; more get 429 ``Throttling`` (or wait,
            with ``queue_excess``).
        queue_excess: requests over ``max_concurrency`` wait in a queue for a free slot
            instead of being refused: their latency grows, as a service that queues.
        rpm: requests per minute per emulator; more get 429 ``Throttling.RateQuota``.
        tpm: tokens per minute; more get 429 ``Throttling.AllocationQuota``.
        error_rate: share of requests answered 500 ``InternalError`` (nothing embedded).
        drop_rate: share of requests whose connection is cut mid-reply after the work
            was done (the client sees a dropped connection; the vectors were wasted).
        seed: seed for which requests get faults.
        throttle_retry_after: ``Retry-After`` seconds sent with concurrency 429s; by
            default none, as the service's pages document none.
        rate_retry_after: rate-limit 429s (RPM, TPM) carry ``Retry-After``: the time
            until the window frees up. Whether the service sends it is unconfirmed;
            ``False`` answers without it, so a client can be tested both ways.
        task_delay: seconds an async task stays PENDING before it runs.
        task_seconds_per_line: simulated work per line of an async task.
        base64_as_float: answer ``encoding_format="base64"`` with float arrays anyway (a
            stricter reading of the docs, which say only float is supported).
        blocked_phrase: a text containing it is refused as the service's content
            inspection refuses one (400 ``DataInspectionFailed``; a failed line in batch
            jobs), so an application's handling of that can be tested.
        self_hosted: answer as a self-hosted server instead of DashScope: ``"vllm"``,
            ``"sglang"``, ``"tei"``, ``"ollama"`` or ``"infinity"`` (their paths, bodies
            and refusals), serving the open Qwen3-Embedding and Qwen3-Reranker models.
        matryoshka: with ``self_hosted="vllm"`` or ``"sglang"``: started with
            ``is_matryoshka``, so ``dimensions`` is taken instead of refused.
        server_token: with ``self_hosted``: the bearer token the server requires (none
            by default, as most self-hosted servers).
        served_model: with ``self_hosted="tei"``: the one model the server was started
            with (default ``Qwen/Qwen3-Embedding-0.6B``).
        path_prefix: serve the APIs below this path (e.g. ``/gateway/dashscope``), as a
            proxy mounted there would; by default they are at the root, and any other
            path is 404, so a mistyped base URL fails here as it would on the service.
    """

    api_key: str | None = None
    latency: float = 0.0
    latency_per_text: float = 0.0
    latency_jitter: float = 0.0
    max_concurrency: int | None = None
    queue_excess: bool = False
    rpm: int | None = None
    tpm: int | None = None
    error_rate: float = 0.0
    drop_rate: float = 0.0
    seed: int = 0
    throttle_retry_after: float | None = None
    rate_retry_after: bool = True
    task_delay: float = 0.2
    task_seconds_per_line: float = 0.0
    base64_as_float: bool = False
    blocked_phrase: str | None = None
    self_hosted: str | None = None
    matryoshka: bool = False
    server_token: str | None = None
    served_model: str | None = None
    path_prefix: str = ""

    def __post_init__(self) -> None:
        if self.self_hosted not in (None, "vllm", "sglang", "tei", "ollama", "infinity"):
            raise ValueError(
                "self_hosted must be one of vllm, sglang, tei, ollama, infinity, "
                f"got {self.self_hosted!r}"
            )
        if self.path_prefix and (
            not self.path_prefix.startswith("/") or self.path_prefix.endswith("/")
        ):
            raise ValueError(
                f"path_prefix must start with '/' and not end with one, got {self.path_prefix!r}"
            )
        for name in ("error_rate", "drop_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        for name in (
            "latency",
            "latency_per_text",
            "latency_jitter",
            "task_delay",
            "task_seconds_per_line",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("max_concurrency", "rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None")


@dataclass
class Throttle:
    """Why a request was refused, as the service words it."""

    code: str
    message: str
    retry_after: float | None


class _Window:
    """What was admitted within the last ``seconds``, with its running total: checking a
    request costs the same at 60 requests a minute as at 60,000."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._entries: deque[tuple[float, int]] = deque()
        self.used = 0

    def _expire(self, now: float) -> None:
        while self._entries and now - self._entries[0][0] >= self.seconds:
            self.used -= self._entries.popleft()[1]

    def wait(self, amount: int, quota: int, now: float) -> float | None:
        """Seconds until ``amount`` more fits under ``quota``, or ``None`` if it fits now.
        Something always fits an empty window, however large."""
        self._expire(now)
        if self.used and self.used + amount > quota:
            return max(self.seconds - (now - self._entries[0][0]), 0.01)
        return None

    def add(self, amount: int, now: float) -> None:
        self._expire(now)
        if amount:
            self._entries.append((now, amount))
            self.used += amount


class _Quota:
    """A per-minute quota, enforced per second too (the service: RPS = RPM / 60)."""

    def __init__(self) -> None:
        self._minute = _Window(60.0)
        self._second = _Window(1.0)

    def wait(self, amount: int, per_minute: int, now: float) -> float | None:
        per_second = max(1, -(-per_minute // 60))
        minute = self._minute.wait(amount, per_minute, now)
        return minute if minute is not None else self._second.wait(amount, per_second, now)

    def add(self, amount: int, now: float) -> None:
        self._minute.add(amount, now)
        self._second.add(amount, now)


class Limiter:
    """Concurrency cap and sliding request/token windows (per minute and per second)."""

    def __init__(self, settings: EmulatorSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._requests = _Quota()
        self._tokens = _Quota()
        self.in_flight = 0

    def admit(self, tokens: int) -> Throttle | None:
        """Admit a request of ``tokens`` tokens, or say why not. Call :meth:`release`
        after an admitted request finishes."""
        s = self.settings
        with self._lock:
            now = time.monotonic()
            if s.max_concurrency is not None and self.in_flight >= s.max_concurrency:
                return Throttle(
                    "Throttling",
                    "Requests throttling triggered.",
                    s.throttle_retry_after,
                )
            if s.rpm is not None:
                wait = self._requests.wait(1, s.rpm, now)
                if wait is not None:
                    return Throttle(
                        "Throttling.RateQuota",
                        "Requests rate limit exceeded, please try again later.",
                        wait if s.rate_retry_after else None,
                    )
            if s.tpm is not None:
                wait = self._tokens.wait(tokens, s.tpm, now)
                if wait is not None:
                    return Throttle(
                        "Throttling.AllocationQuota",
                        "Allocated quota exceeded, please increase your quota limit.",
                        wait if s.rate_retry_after else None,
                    )
            self._requests.add(1, now)
            self._tokens.add(tokens, now)
            self.in_flight += 1
            return None

    def release(self) -> None:
        with self._lock:
            self.in_flight -= 1


@dataclass
class Stats:
    """Counters a test or benchmark can assert on (``GET /emulator/stats``).

    ``duplicate_embeddings`` counts texts delivered again with the same model and
    parameters: money spent twice on finished work. ``wasted_embeddings`` counts texts
    embedded for a reply that was then dropped (billed, never delivered).
    """

    requests: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    by_endpoint: Counter[str] = field(default_factory=Counter)
    texts_embedded: int = 0
    texts_delivered: int = 0
    duplicate_embeddings: int = 0
    wasted_embeddings: int = 0
    dropped_connections: int = 0
    injected_errors: int = 0
    throttled: int = 0
    tokens: int = 0
    in_flight: int = 0
    peak_concurrency: int = 0
    max_rows_seen: int = 0
    uploads: int = 0
    keys_sent_to_upload_host: int = 0
    instructed_texts: int = 0  # self-hosted: texts that arrived as "Instruct: ...\nQuery:..."
    plain_texts: int = 0  # self-hosted: texts that arrived without an instruction
    ignored_fields: Counter[str] = field(default_factory=Counter)  # self-hosted: unknown fields
    authorized_requests: int = 0  # self-hosted: requests that carried an Authorization header
    _delivered_keys: set[bytes] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "by_endpoint": dict(self.by_endpoint),
            "texts_embedded": self.texts_embedded,
            "texts_delivered": self.texts_delivered,
            "duplicate_embeddings": self.duplicate_embeddings,
            "wasted_embeddings": self.wasted_embeddings,
            "dropped_connections": self.dropped_connections,
            "injected_errors": self.injected_errors,
            "throttled": self.throttled,
            "tokens": self.tokens,
            "in_flight": self.in_flight,
            "peak_concurrency": self.peak_concurrency,
            "max_rows_seen": self.max_rows_seen,
            "uploads": self.uploads,
            "keys_sent_to_upload_host": self.keys_sent_to_upload_host,
            "instructed_texts": self.instructed_texts,
            "plain_texts": self.plain_texts,
            "ignored_fields": dict(self.ignored_fields),
            "authorized_requests": self.authorized_requests,
        }


def embedding_key(*parts: object) -> bytes:
    """A compact fingerprint of (model, text, parameters) for duplicate counting."""
    return hashlib.blake2b(repr(parts).encode("utf-8", "surrogatepass"), digest_size=16).digest()


class EmulatorState:
    """Everything mutable in one emulator: stats, limiter, fault dice."""

    def __init__(self, settings: EmulatorSettings) -> None:
        self.settings = settings
        self.lock = threading.Lock()
        self.stats = Stats()
        self.limiter = Limiter(settings)
        self.reseed()
        self.request_log: deque[dict[str, Any]] = deque()
        self._log_bytes: deque[int] = deque()
        self._log_total = 0

    REQUEST_LOG_SIZE = 5000
    REQUEST_LOG_BYTES = 64 * 1024 * 1024  # bodies kept, all entries together
    REQUEST_LOG_ENTRY_BYTES = 4 * 1024 * 1024  # a larger body is logged without its JSON

    def log_request(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        query: dict[str, list[str]] | None = None,
    ) -> None:
        """Keep what a client sent (never its key) for tests that check the wire.

        Bounded in entries and in bytes: the oldest entries go first, and a body over
        4 MB is recorded by its size only (``"json": None, "bytes": n``)."""
        parsed: Any = None
        kept = 0
        if body and len(body) <= self.REQUEST_LOG_ENTRY_BYTES:
            try:
                parsed = orjson.loads(body)
                kept = len(body)
            except orjson.JSONDecodeError:
                parsed = None
        safe_headers = {k: v for k, v in headers.items() if k != "authorization"}
        entry = {
            "method": method,
            "path": path,
            "query": {k: v[0] if len(v) == 1 else v for k, v in (query or {}).items()},
            "headers": safe_headers,
            "json": parsed,
            "bytes": len(body),
        }
        with self.lock:
            self.request_log.append(entry)
            self._log_bytes.append(kept)
            self._log_total += kept
            while self.request_log and (
                len(self.request_log) > self.REQUEST_LOG_SIZE
                or self._log_total > self.REQUEST_LOG_BYTES
            ):
                self.request_log.popleft()
                self._log_total -= self._log_bytes.popleft()

    def roll(self, rate: float) -> bool:
        if rate <= 0:
            return False
        with self.lock:
            return self._rng.random() < rate

    def jitter(self, most: float) -> float:
        """A random extra latency in ``[0, most)``, from its own seeded stream: turning
        jitter on or off leaves the fault sequence of a seed unchanged."""
        if most <= 0:
            return 0.0
        with self.lock:
            return self._jitter_rng.random() * most

    def reseed(self) -> None:
        """Start the fault and jitter sequences of ``settings.seed`` from the beginning."""
        with self.lock:
            self._rng = random.Random(self.settings.seed)
            self._jitter_rng = random.Random(f"jitter {self.settings.seed}")

    def reset(self) -> None:
        self.reseed()
        with self.lock:
            self.stats = Stats()
            self.limiter = Limiter(self.settings)
            self.request_log.clear()
            self._log_bytes.clear()
            self._log_total = 0

    def record_delivered(self, keys: list[bytes]) -> None:
        with self.lock:
            self.stats.texts_delivered += len(keys)
            for key in keys:
                if key in self.stats._delivered_keys:
                    self.stats.duplicate_embeddings += 1
                else:
                    self.stats._delivered_keys.add(key)
