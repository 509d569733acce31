"""The DashScope embedding client every framework adapter is built on."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr, ValidationError

from dashscope_embed.config import ClientConfig, Protocol
from dashscope_embed.engine import Engine, Outcome
from dashscope_embed.errors import ConfigurationError, InvalidInputError, PartialEmbeddingError
from dashscope_embed.forksafe import renew_after_fork
from dashscope_embed.limits import AdaptivePace, ConcurrencyGate, RateBudget
from dashscope_embed.models import DEFAULT_MODEL, ModelSpec, OutputType, TextType, resolve_model
from dashscope_embed.multimodal import MULTIMODAL_PATH, Content
from dashscope_embed.multimodal import build_body as build_multimodal_body
from dashscope_embed.multimodal import parse_reply as parse_multimodal_reply
from dashscope_embed.planner import (
    Plan,
    assemble,
    plan,
    regroup,
    resolve_params,
    validate_texts,
)
from dashscope_embed.protocol import (
    Codec,
    EmbedParams,
    HttpRequest,
    ParsedBatch,
    codec_for,
    reply_byte_limit,
)
from dashscope_embed.retry import RetryPolicy
from dashscope_embed.stream import EmbeddingChunk, float32_array, stream_async, stream_sync
from dashscope_embed.tokens import (
    LONG_TEXT_POLICIES,
    LongTextPlan,
    LongTextPolicy,
    TokenCounter,
    apply_long_text_policy,
    default_token_counter,
)
from dashscope_embed.transport import Transport
from dashscope_embed.types import EmbeddingResult, PartialResult

DEFAULT_MAX_CONCURRENCY = 4
# Slices a stream keeps open per request slot. Measured with 10% 500s and 10% dropped
# replies: 2 per slot ran at 0.75 of embed()'s speed, 8 per slot at 0.9-0.95; more
# gained nothing.
STREAM_LOOKAHEAD_PER_SLOT = 8


class DashScopeClient:
    """Embeds texts with DashScope, sync or async, over the native or OpenAI-compatible API.

    Every call validates its input before sending anything, splits it into requests within
    the model's row limit (identical texts are sent once), runs the requests concurrently
    (at most ``max_concurrency`` at a time), retries each one on its own, and returns the
    vectors in input order.

    Args:
        api_key: DashScope key; default ``DASHSCOPE_API_KEY`` (read at first use).
        region: ``cn-beijing`` (default), ``ap-southeast-1``/``singapore``,
            ``cn-hongkong``, ...; default ``DASHSCOPE_REGION``.
        base_url: another host (a proxy, the emulator); a host root or either documented
            base URL; default ``DASHSCOPE_BASE_URL`` / ``DASHSCOPE_HTTP_BASE_URL``.
        workspace: sub-workspace id, sent as ``X-DashScope-WorkSpace``.
        protocol: ``"native"`` (every feature) or ``"openai-compatible"`` (dense only).
        timeout: seconds per request; ``connect_timeout`` for connecting.
        max_retries: resends per request on 408/409/429/5xx, timeouts, dropped connections.
        max_concurrency: requests in flight at once, sync and async alike.
        allow_insecure_http: permit plain ``http://`` to a non-loopback host.
        http_client / async_http_client: your own httpx clients (proxies, custom TLS);
            the client then does not close them.
        retry: a full :class:`RetryPolicy` (overrides ``max_retries``).
        long_text: what to do with a text over the model's token limit: ``"error"``
            (raise before sending, naming it), ``"truncate"`` or ``"chunk"`` (embed the
            pieces and average them); see :mod:`dashscope_embed.tokens`.
        token_counter: counts tokens; default the exact Qwen tokenizer when the
            ``tokenizer`` extra is installed, else a conservative estimate.
        requests_per_minute / tokens_per_minute: your quota, enforced client-side and
            spread evenly, so it is not exceeded in the first place.
        adaptive_concurrency: adapt to limits the client was not told: on a concurrency
            429 cut the requests in flight (and grow back on success, up to
            ``max_concurrency``); on a request-rate 429 (``Throttling.RateQuota``) pace
            request starts just under the rate the service allowed.

    Example::

        client = DashScopeClient(region="singapore")
        result = client.embed(["hello", "world"], dimension=512, output_type="dense&sparse")
        result.dense[0][:3], result.sparse[0].as_dict(), result.usage.total_tokens
    """

    def __init__(
        self,
        *,
        api_key: str | SecretStr | None = None,
        region: str | None = None,
        base_url: str | None = None,
        workspace: str | None = None,
        protocol: Protocol = "native",
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        max_retries: int = 4,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        allow_insecure_http: bool = False,
        http_client: httpx.Client | None = None,
        async_http_client: httpx.AsyncClient | None = None,
        retry: RetryPolicy | None = None,
        long_text: LongTextPolicy = "error",
        token_counter: TokenCounter | None = None,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        adaptive_concurrency: bool = True,
        config: ClientConfig | None = None,
    ) -> None:
        api_key = as_secret(api_key)
        if config is None:
            config = make_config(
                api_key=api_key,
                region=region,
                base_url=base_url,
                workspace=workspace,
                protocol=protocol,
                timeout=timeout,
                connect_timeout=connect_timeout,
                max_retries=max_retries,
                allow_insecure_http=allow_insecure_http,
            )
        if max_concurrency < 1:
            raise ConfigurationError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.config = config
        self.retry = retry or RetryPolicy(max_retries=config.max_retries)
        self.max_concurrency = max_concurrency
        if long_text not in LONG_TEXT_POLICIES:
            raise ConfigurationError(
                f"long_text must be one of {list(LONG_TEXT_POLICIES)}, got {long_text!r}"
            )
        self.long_text: LongTextPolicy = long_text
        self._token_counter = token_counter
        self._codec: Codec = codec_for(config.protocol)
        self._limits = (requests_per_minute, tokens_per_minute, adaptive_concurrency)
        self._new_engine()
        renew_after_fork(self)
        self._transport = Transport(
            config,
            http_client=http_client,
            async_http_client=async_http_client,
            max_connections=max(max_concurrency, 10),
        )

    def _new_engine(self) -> None:
        requests_per_minute, tokens_per_minute, adaptive = self._limits
        self.gate = ConcurrencyGate(self.max_concurrency, adaptive=adaptive)
        self.budget = RateBudget(requests_per_minute, tokens_per_minute)
        # Told the quota: pace to it. Not told: learn it from the service's 429s.
        self.pace = None if requests_per_minute or not adaptive else AdaptivePace()
        self._engine = Engine(self.retry, self.gate, self.budget, self.pace)

    def _after_fork(self) -> None:
        # Requests in flight in the parent's threads never finish here, and their locks
        # may be held: the child starts with an engine of its own (the transport renews
        # its pools itself).
        self._new_engine()

    def __repr__(self) -> str:
        # Safe on a half-built client too: a traceback formatting locals reprs it.
        config = getattr(self, "config", None)
        codec = getattr(self, "_codec", None)
        if config is None or codec is None:
            return "DashScopeClient(<not configured>)"
        return (
            f"DashScopeClient(base_url={codec.base_url(config)!r}, "
            f"protocol={config.protocol!r}, workspace={config.workspace!r}, "
            f"max_concurrency={getattr(self, 'max_concurrency', None)})"
        )

    def __getstate__(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "retry": self.retry,
            "max_concurrency": self.max_concurrency,
            "long_text": self.long_text,
            "budget": self.budget,
            "adaptive": self.gate.adaptive,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            config=state["config"],
            retry=state["retry"],
            max_concurrency=state["max_concurrency"],
            long_text=state["long_text"],
            requests_per_minute=state["budget"].requests_per_minute,
            tokens_per_minute=state["budget"].tokens_per_minute,
            adaptive_concurrency=state["adaptive"],
        )

    # ------------------------------------------------------------------ public API
    def embed(
        self,
        texts: Sequence[str],
        *,
        model: str | ModelSpec = DEFAULT_MODEL,
        text_type: TextType | None = None,
        instruct: str | None = None,
        dimension: int | None = None,
        output_type: OutputType = "dense",
        batch_size: int | None = None,
        long_text: LongTextPolicy | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> EmbeddingResult:
        """Embed ``texts``; returns dense and/or sparse vectors in input order.

        Args:
            texts: non-empty strings. Bad ones are reported by position before sending.
            model: a model name from :data:`~dashscope_embed.models.MODELS`, or a
                :class:`ModelSpec` for any other model.
            text_type: ``"query"`` for search queries, ``"document"`` for the corpus;
                ``None`` sends nothing (the service treats it as a document).
            instruct: task instruction for query embeddings (text-embedding-v4, qwen3.7).
            dimension: vector length; one of the model's allowed sizes.
            output_type: ``"dense"``, ``"sparse"`` or ``"dense&sparse"`` (one request
                returns both halves of a hybrid index).
            batch_size: texts per request; default and maximum is the model's row limit.
            long_text: override the client's long-text policy for this call.
            progress: called with the number of inputs each finished request covered
                (duplicates included), e.g. a progress bar's ``update``.

        Raises:
            InvalidInputError: bad texts or parameters (nothing was sent).
            APIError subclasses: when every request failed; the first error is raised.
            PartialEmbeddingError: some requests failed for good; the rest is attached.
        """
        call = self._prepare(
            texts, model, text_type, instruct, dimension, output_type, batch_size, long_text
        )

        def send(batch: range) -> bytes:
            request = call.request(batch)
            return self._transport.post(
                call.base_url + request.path, request.body, max_reply_bytes=call.reply_limit(batch)
            )

        outcome = self._engine.run(
            call.plan.batches, send, call.parse, self._cost_of(call), call.progress_hook(progress)
        )
        return call.finish(outcome)

    async def aembed(
        self,
        texts: Sequence[str],
        *,
        model: str | ModelSpec = DEFAULT_MODEL,
        text_type: TextType | None = None,
        instruct: str | None = None,
        dimension: int | None = None,
        output_type: OutputType = "dense",
        batch_size: int | None = None,
        long_text: LongTextPolicy | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> EmbeddingResult:
        """Async twin of :meth:`embed`, with the same arguments, result and errors."""
        call = self._prepare(
            texts, model, text_type, instruct, dimension, output_type, batch_size, long_text
        )

        async def send(batch: range) -> bytes:
            request = call.request(batch)
            return await self._transport.apost(
                call.base_url + request.path, request.body, max_reply_bytes=call.reply_limit(batch)
            )

        outcome = await self._engine.arun(
            call.plan.batches, send, call.parse, self._cost_of(call), call.progress_hook(progress)
        )
        return call.finish(outcome)

    def embed_multimodal(
        self,
        contents: Sequence[Content],
        *,
        model: str | ModelSpec = "multimodal-embedding-v1",
        dimension: int | None = None,
    ) -> EmbeddingResult:
        """Embed texts, images and videos into one vector space, in input order.

        Build contents with :class:`~dashscope_embed.multimodal.Content`
        (``Content.image("cat.png")``, ``Content.text("a cat")``); images are checked
        against the service's limits before anything is sent.
        """
        call = self._prepare_multimodal(contents, model, dimension)

        def send(batch: range) -> bytes:
            return self._transport.post(
                call.url, call.body(batch), max_reply_bytes=call.reply_limit(batch)
            )

        return call.finish(self._engine.run(call.plan.batches, send, call.parse))

    async def aembed_multimodal(
        self,
        contents: Sequence[Content],
        *,
        model: str | ModelSpec = "multimodal-embedding-v1",
        dimension: int | None = None,
    ) -> EmbeddingResult:
        """Async twin of :meth:`embed_multimodal`."""
        call = self._prepare_multimodal(contents, model, dimension)

        async def send(batch: range) -> bytes:
            return await self._transport.apost(
                call.url, call.body(batch), max_reply_bytes=call.reply_limit(batch)
            )

        return call.finish(await self._engine.arun(call.plan.batches, send, call.parse))

    def _prepare_multimodal(
        self, contents: Sequence[Content], model: str | ModelSpec, dimension: int | None
    ) -> _MultimodalCall:
        spec = resolve_model(model)
        if spec.kind != "multimodal":
            raise InvalidInputError(f"{spec.name} is not a multimodal model")
        if dimension is not None and dimension not in spec.dimensions:
            raise InvalidInputError(
                f"dimension={dimension} is not allowed for {spec.name}; allowed: "
                f"{sorted(spec.dimensions, reverse=True)}"
            )
        if not contents or not all(isinstance(c, Content) for c in contents):
            raise InvalidInputError(
                "contents must be a non-empty list of Content (Content.text / image / video)"
            )
        if self.config.protocol != "native":
            raise InvalidInputError("multimodal embedding needs protocol='native'")
        self.config.resolve_api_key()
        # Identical contents (same text, same image reference or bytes) are sent once.
        unique: dict[tuple[str, str], Content] = {}
        for content in contents:
            unique.setdefault((content.modality, content.value), content)
        return _MultimodalCall(
            spec=spec,
            contents=list(unique.values()),
            dimension=dimension if spec.configurable_dimension else None,
            url=self.config.native_base_url + MULTIMODAL_PATH,
            plan=plan([f"{c.modality}\x1f{c.value}" for c in contents], spec.max_rows),
        )

    def embed_stream(
        self,
        texts: Iterable[str],
        *,
        model: str | ModelSpec = DEFAULT_MODEL,
        text_type: TextType | None = None,
        instruct: str | None = None,
        dimension: int | None = None,
        output_type: OutputType = "dense",
        long_text: LongTextPolicy | None = None,
        lookahead: int | None = None,
        as_numpy: bool = False,
        on_complete: Callable[[EmbeddingChunk], None] | None = None,
    ) -> Iterator[EmbeddingChunk]:
        """Embed an iterable of any size; yield :class:`EmbeddingChunk` s in input order.

        Texts are read lazily, one request's worth at a time; at most ``lookahead``
        (default ``8 * max_concurrency``) such slices are held at once, so memory does not
        grow with the corpus. The window is wider than the requests in flight because
        results are yielded in order: a slice waiting to be retried holds back the slices
        after it, and the others must be able to keep every slot busy meanwhile. With
        ``as_numpy=True`` each chunk's ``array`` holds its dense vectors as float32.
        Identical texts are sent once only within a slice.

        ``on_complete`` is called with each chunk as soon as its request finishes, in
        completion order and (sync) from a worker thread: save work there and nothing
        delivered is lost if the process dies before the ordered yield reaches it (the
        bulk command keeps its resume journal this way).

        Raises:
            InvalidInputError: a bad text (positions count from the start of ``texts``).
            EmbedStreamError: a request failed for good; every earlier input was yielded.
        """
        spec, options = _stream_options(
            model, text_type, instruct, dimension, output_type, long_text
        )
        return stream_sync(
            texts,
            lambda batch: self.embed(batch, **options),
            slice_size=spec.max_rows,
            lookahead=lookahead or STREAM_LOOKAHEAD_PER_SLOT * self.max_concurrency,
            to_array=float32_array if as_numpy else None,
            on_complete=on_complete,
        )

    def aembed_stream(
        self,
        texts: Iterable[str] | AsyncIterable[str],
        *,
        model: str | ModelSpec = DEFAULT_MODEL,
        text_type: TextType | None = None,
        instruct: str | None = None,
        dimension: int | None = None,
        output_type: OutputType = "dense",
        long_text: LongTextPolicy | None = None,
        lookahead: int | None = None,
        as_numpy: bool = False,
        on_complete: Callable[[EmbeddingChunk], None] | None = None,
    ) -> AsyncIterator[EmbeddingChunk]:
        """Async twin of :meth:`embed_stream`; ``texts`` may also be an async iterable.

        Use as ``async for chunk in client.aembed_stream(texts): ...``.
        """
        spec, options = _stream_options(
            model, text_type, instruct, dimension, output_type, long_text
        )
        return stream_async(
            texts,
            lambda batch: self.aembed(batch, **options),
            slice_size=spec.max_rows,
            lookahead=lookahead or STREAM_LOOKAHEAD_PER_SLOT * self.max_concurrency,
            to_array=float32_array if as_numpy else None,
            on_complete=on_complete,
        )

    def close(self) -> None:
        """Close pooled connections (the client stays usable; it reconnects on demand)."""
        self._transport.close()

    async def aclose(self) -> None:
        """Close the async connection pool of the running event loop."""
        await self._transport.aclose()

    def __enter__(self) -> DashScopeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> DashScopeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ internals
    def _cost_of(self, call: _Call) -> Callable[[range], int] | None:
        """Tokens a request will bill, for the tokens-per-minute budget (if one is set)."""
        if self.budget.tokens_per_minute is None:
            return None
        counter = self.token_counter()

        def cost(batch: range) -> int:
            return sum(counter.count(t) + RESERVED_TOKENS for t in call.plan.batch_texts(batch))

        return cost

    def token_counter(self) -> TokenCounter:
        """The token counter this client uses (see ``token_counter=``)."""
        if self._token_counter is None:
            self._token_counter = default_token_counter()
        return self._token_counter

    def _prepare(
        self,
        texts: Sequence[str],
        model: str | ModelSpec,
        text_type: str | None,
        instruct: str | None,
        dimension: int | None,
        output_type: str,
        batch_size: int | None,
        long_text: LongTextPolicy | None,
    ) -> _Call:
        params = resolve_params(
            model,
            text_type=text_type,
            instruct=instruct,
            dimension=dimension,
            output_type=output_type,
        )
        self._codec.check(params)
        valid = validate_texts(texts)
        rows = params.spec.max_rows
        if batch_size is not None:
            if not 1 <= batch_size <= rows:
                raise ConfigurationError(
                    f"batch_size={batch_size} is outside 1..{rows}, the row limit of "
                    f"{params.spec.name}"
                )
            rows = batch_size
        long_plan = self._long_text_plan(valid, params, long_text or self.long_text)
        # Fail on a missing key before planning work, not inside a worker thread.
        self.config.resolve_api_key()
        return _Call(
            params=params,
            codec=self._codec,
            base_url=self._codec.base_url(self.config),
            plan=plan(long_plan.rows if long_plan else valid, rows),
            long_plan=long_plan,
        )

    def _long_text_plan(
        self, texts: list[str], params: EmbedParams, policy: LongTextPolicy
    ) -> LongTextPlan | None:
        limit = params.spec.max_tokens_per_row - RESERVED_TOKENS
        # A token is at least one UTF-8 byte and a character at most four, so most texts
        # are cleared without counting anything.
        if all(len(text) * 4 <= limit for text in texts):
            return None
        long_plan = apply_long_text_policy(
            texts,
            params.spec.max_tokens_per_row,
            policy,
            self.token_counter(),
            reserved_tokens=RESERVED_TOKENS,
        )
        return long_plan if long_plan.changed else None


# The service may add an end-of-text token to each text (Qwen3-based models bill it).
RESERVED_TOKENS = 1


@dataclass(frozen=True)
class _Call:
    """Everything one embed call needs after validation: shared by sync and async."""

    params: EmbedParams
    codec: Codec
    base_url: str
    plan: Plan
    long_plan: LongTextPlan | None

    def progress_hook(
        self, progress: Callable[[int], None] | None
    ) -> Callable[[range], None] | None:
        """Turn "request done" into "this many inputs done" for a progress callback."""
        if progress is None:
            return None
        inputs_per_row = [0] * len(self.plan.unique)
        for slot in self.plan.slot_of:
            inputs_per_row[slot] += 1
        return lambda batch: progress(sum(inputs_per_row[batch.start : batch.stop]))

    def request(self, batch: range) -> HttpRequest:
        return self.codec.build(self.plan.batch_texts(batch), self.params)

    def reply_limit(self, batch: range) -> int:
        return reply_byte_limit(self.plan.batch_texts(batch), self.params)

    def parse(self, batch: range, content: bytes) -> ParsedBatch:
        return self.codec.parse(content, len(batch), self.params)

    def finish(self, outcome: Outcome) -> EmbeddingResult:
        replies = [r if isinstance(r, ParsedBatch) else None for r in outcome.replies]
        result = assemble(self.plan, replies, self.params)
        if self.long_plan is not None:
            result = regroup(result, self.long_plan)
        return _raise_or_return(result, outcome)


def _raise_or_return(result: EmbeddingResult | PartialResult, outcome: Outcome) -> EmbeddingResult:
    if isinstance(result, EmbeddingResult):
        return result
    errors = [error for _, error in outcome.errors]
    if len(result.missing_positions) == len(result) and errors:
        # Nothing was embedded: the typed error says it best.
        raise errors[0]
    raise PartialEmbeddingError(result, result.missing_positions, errors) from (
        errors[0] if errors else None
    )


@dataclass(frozen=True)
class _MultimodalCall:
    spec: ModelSpec
    contents: list[Content]  # distinct contents, in the plan's order
    dimension: int | None
    url: str
    plan: Plan

    def body(self, batch: range) -> dict[str, Any]:
        return build_multimodal_body(
            self.spec.name, self.contents[batch.start : batch.stop], self.dimension
        )

    def parse(self, batch: range, content: bytes) -> ParsedBatch:
        size = self.dimension or self.spec.default_dimension
        return parse_multimodal_reply(content, len(batch), size)

    def reply_limit(self, batch: range) -> int:
        size = self.dimension or self.spec.default_dimension
        return 64 * 1024 + len(batch) * (size * 32 + 256)

    def finish(self, outcome: Outcome) -> EmbeddingResult:
        params = EmbedParams(self.spec, None, None, self.dimension, "dense")
        replies = [r if isinstance(r, ParsedBatch) else None for r in outcome.replies]
        return _raise_or_return(assemble(self.plan, replies, params), outcome)


def _stream_options(
    model: str | ModelSpec,
    text_type: TextType | None,
    instruct: str | None,
    dimension: int | None,
    output_type: OutputType,
    long_text: LongTextPolicy | None,
) -> tuple[ModelSpec, dict[str, Any]]:
    """Validate a stream's parameters before anything is read; the per-slice options."""
    spec = resolve_model(model)
    resolve_params(
        spec, text_type=text_type, instruct=instruct, dimension=dimension, output_type=output_type
    )
    options: dict[str, Any] = {
        "model": spec,
        "text_type": text_type,
        "instruct": instruct,
        "dimension": dimension,
        "output_type": output_type,
        "long_text": long_text,
    }
    return spec, options


def as_secret(api_key: str | SecretStr | None) -> SecretStr | None:
    """The key as a :class:`SecretStr`; called first thing wherever a key is taken, so
    no frame of ours holds it as a plain string for a traceback to show."""
    if isinstance(api_key, str):
        return SecretStr(api_key)
    return api_key


def make_config(**settings: Any) -> ClientConfig:
    """Build a :class:`ClientConfig` from keyword settings; ``None`` means "use the
    environment or default". Validation problems become :class:`ConfigurationError`,
    which names each setting and problem but never quotes the values given."""
    settings["api_key"] = as_secret(settings.get("api_key"))
    given = {k: v for k, v in settings.items() if v is not None}
    try:
        return ClientConfig(**given)
    except ValidationError as exc:
        problems = describe_validation_error(exc)
    # Raised outside the except block: the ValidationError quotes the input it was given.
    raise ConfigurationError(f"invalid DashScope settings: {problems}")


def describe_validation_error(exc: ValidationError) -> str:
    """Each problem as ``setting: message``, without the offending values."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
        for err in exc.errors(include_url=False, include_input=False, include_context=False)
    )


__all__ = ["DEFAULT_MAX_CONCURRENCY", "DashScopeClient", "PartialResult", "make_config"]
