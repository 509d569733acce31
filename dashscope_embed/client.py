"""The DashScope client every framework adapter is built on.

One call path serves every endpoint: the call's parameters are validated once into a
value object; the endpoint codec (found in the registry by the model's family and the
protocol) checks, builds and parses; the planner splits and reassembles; the engine
sends, sync or async, with one algorithm.
"""

from __future__ import annotations

from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx
from pydantic import SecretStr, ValidationError

from dashscope_embed.cluster import EnginePace, LeasedPace
from dashscope_embed.config import ClientSettings
from dashscope_embed.engine import Engine, Jobs, Outcome
from dashscope_embed.errors import (
    APIError,
    ConfigurationError,
    InputProblem,
    InvalidInputError,
    PartialEmbeddingError,
    PartialRerankError,
)
from dashscope_embed.forksafe import renew_after_fork
from dashscope_embed.limits import AdaptivePace, ConcurrencyGate, CpuMonitor, RateBudget
from dashscope_embed.models import (
    DEFAULT_MODEL,
    DEFAULT_RERANK_MODEL,
    ModelSpec,
    RerankSpec,
    TextType,
    resolve_model,
    resolve_rerank_model,
)
from dashscope_embed.multimodal import (
    Content,
    Fused,
    MultimodalItem,
    check_items,
    pending_uploads,
    with_uploads,
)
from dashscope_embed.options import (
    MultimodalEmbeddingOptions,
    MultimodalParams,
    RerankOptions,
    RerankParams,
    TextEmbeddingOptions,
    TextParams,
    multimodal_params,
    rerank_params,
    text_params,
)
from dashscope_embed.planner import (
    NON_TEXT_TOKENS,
    Plan,
    ResultParams,
    assemble,
    plan,
    plan_with_solos,
    regroup,
    split_rerank,
    text_problem,
    validate_texts,
)
from dashscope_embed.protocol import Endpoint, HttpRequest, ParsedBatch, endpoint_for
from dashscope_embed.protocol.multimodal import fused_alone
from dashscope_embed.protocol.rerank import ParsedScores
from dashscope_embed.stream import (
    EmbeddingChunk,
    check_numpy_output,
    stream_async,
    stream_sync,
)
from dashscope_embed.tokens import (
    LongTextPlan,
    LongTextPolicy,
    TokenCounter,
    apply_long_text_policy,
    default_token_counter,
)
from dashscope_embed.transport import Transport
from dashscope_embed.types import (
    EmbeddingResult,
    PartialResult,
    RerankHit,
    RerankResult,
    Usage,
)
from dashscope_embed.uploads import (
    UploadPolicy,
    check_upload,
    parse_policy,
    policy_request,
    upload_request,
)

# Slices a stream keeps open per request slot. Measured with 10% 500s and 10% dropped
# replies: 2 per slot ran at 0.75 of embed()'s speed, 8 per slot at 0.9-0.95; more
# gained nothing. The window follows the current limit, within these bounds.
STREAM_LOOKAHEAD_PER_SLOT = 8
STREAM_LOOKAHEAD_MIN = 32
STREAM_LOOKAHEAD_MAX = 512
# The service may add an end-of-text token to each text (Qwen3-based models bill it).
RESERVED_TOKENS = 1

Item = TypeVar("Item")
Params = TypeVar("Params", bound=ResultParams)


class DashScopeClient:
    """Embeds texts (and images) with DashScope, sync or async.

    Every call validates its input before sending anything, splits it into requests
    within the model's limits (identical inputs are sent once), runs the requests
    concurrently, retries each one on its own, and returns the vectors in input order.

    Settings are the fields of :class:`~dashscope_embed.config.ClientSettings`, given as
    keyword arguments (or as a ``ClientSettings``): ``api_key``, ``region``,
    ``base_url``, ``workspace``, ``workspace_gateway``, ``protocol``, ``timeout``,
    ``connect_timeout``, ``max_retries``, ``retry``, ``max_concurrency``,
    ``adaptive_concurrency``, ``requests_per_minute``, ``tokens_per_minute``,
    ``long_text``, ``token_counter``, ``allow_insecure_http``. An unknown name is an
    error naming the nearest real one. ``http_client`` / ``async_http_client`` are your
    own httpx clients (proxies, custom TLS); the client then does not close them.

    Example::

        client = DashScopeClient(region="singapore")
        result = client.embed(["hello", "world"], dimension=512, output_type="dense&sparse")
        result.dense[0][:3], result.sparse[0].as_dict(), result.usage.total_tokens
    """

    def __init__(
        self,
        settings: ClientSettings | None = None,
        /,
        *,
        http_client: httpx.Client | None = None,
        async_http_client: httpx.AsyncClient | None = None,
        **options: Any,
    ) -> None:
        hide_key(options)
        if settings is None:
            settings = make_settings(**options)
        elif options:
            settings = make_settings(**{**_fields_of(settings), **options})
        self.settings = settings
        self._token_counter = settings.token_counter
        self._new_engine()
        renew_after_fork(self)
        self._transport = Transport(
            settings,
            http_client=http_client,
            async_http_client=async_http_client,
            max_connections=max(self.gate.maximum, 10),
        )

    # Read-only views kept for code written against the earlier attributes.
    @property
    def config(self) -> ClientSettings:
        """The client's settings (the former name of :attr:`settings`)."""
        return self.settings

    @property
    def max_concurrency(self) -> int:
        """The ceiling on requests in flight (``max_concurrency``, or the default one)."""
        return self.gate.maximum

    def _lookahead(self) -> int:
        """A stream's window in slices, following the requests the client now allows."""
        slices = STREAM_LOOKAHEAD_PER_SLOT * int(self.gate.limit)
        return min(STREAM_LOOKAHEAD_MAX, max(STREAM_LOOKAHEAD_MIN, slices))

    @property
    def long_text(self) -> LongTextPolicy:
        return self.settings.long_text

    def _new_engine(self) -> None:
        settings = self.settings
        self.retry = settings.retry_policy
        self.gate = ConcurrencyGate(
            settings.max_concurrency, adaptive=settings.adaptive_concurrency, cpu=CpuMonitor()
        )
        self.budget = RateBudget(settings.requests_per_minute, settings.tokens_per_minute)
        # Told the quota: pace to it. Not told, or refused under it anyway (another
        # process, job or colleague spends the same account): learn the rest from 429s.
        self.pace = AdaptivePace() if settings.adaptive_concurrency else None
        self._engine = Engine(self.retry, self.gate, self.budget, self.pace)

    def _after_fork(self) -> None:
        # Requests in flight in the parent's threads never finish here, and their locks
        # may be held: the child starts with an engine of its own (the transport renews
        # its pools itself).
        self._new_engine()

    def __repr__(self) -> str:
        # Safe on a half-built client too: a traceback formatting locals reprs it.
        settings = getattr(self, "settings", None)
        if settings is None:
            return "DashScopeClient(<not configured>)"
        where = (
            f"server={settings.server!r}"
            if settings.server is not None
            else f"protocol={settings.protocol!r}, workspace={settings.workspace!r}"
        )
        return (
            f"DashScopeClient(root_url={settings.root_url!r}, {where}, "
            f"max_concurrency={settings.max_concurrency})"
        )

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["settings"])  # type: ignore[misc]

    # ------------------------------------------------------------------ text
    def embed(
        self,
        texts: Sequence[str],
        *,
        model: str | ModelSpec = DEFAULT_MODEL,
        text_type: TextType | None = None,
        batch_size: int | None = None,
        long_text: LongTextPolicy | None = None,
        progress: Callable[[int], None] | None = None,
        **options: Any,
    ) -> EmbeddingResult:
        """Embed ``texts``; returns dense and/or sparse vectors in input order.

        Args:
            texts: non-empty strings, in a list or any ordered iterable (not a dict or a
                set). Bad ones are reported by position before sending.
            model: a model name from :data:`~dashscope_embed.models.MODELS`, or a
                :class:`ModelSpec` for any other model.
            text_type: ``"query"`` for search queries, ``"document"`` for the corpus;
                ``None`` sends nothing (the service treats it as a document).
            batch_size: texts per request; default and maximum is the model's row limit.
            long_text: override the client's long-text policy for this call.
            progress: called with the number of inputs each finished request covered
                (duplicates included), e.g. a progress bar's ``update``.
            **options: the fields of :class:`~dashscope_embed.options.TextEmbeddingOptions`:
                ``dimension``, ``output_type`` (``"dense"``, ``"sparse"``,
                ``"dense&sparse"``), ``instruct`` or ``task`` (the query instruction),
                ``extra_parameters`` (merged last into the request's parameters).

        Raises:
            InvalidInputError: bad texts or parameters (nothing was sent).
            APIError subclasses: when every request failed; the first error is raised.
            PartialEmbeddingError: some requests failed for good; the rest is attached.
        """
        call = self._text_call(texts, model, text_type, batch_size, long_text, options)
        return self._run(call, progress)

    def _embed_float32(
        self,
        texts: Sequence[str],
        *,
        model: str | ModelSpec = DEFAULT_MODEL,
        text_type: TextType | None = None,
        long_text: LongTextPolicy | None = None,
        **options: Any,
    ) -> EmbeddingResult:
        """:meth:`embed`, the dense rows float32 arrays parsed straight from the replies
        (for NumPy streams, the bulk command and Ray; partial results alike)."""
        call = self._text_call(texts, model, text_type, None, long_text, options, float32=True)
        return self._run(call, None)

    async def _aembed_float32(
        self,
        texts: Sequence[str],
        *,
        model: str | ModelSpec = DEFAULT_MODEL,
        text_type: TextType | None = None,
        long_text: LongTextPolicy | None = None,
        **options: Any,
    ) -> EmbeddingResult:
        call = self._text_call(texts, model, text_type, None, long_text, options, float32=True)
        return await self._arun(call, None)

    async def aembed(
        self,
        texts: Sequence[str],
        *,
        model: str | ModelSpec = DEFAULT_MODEL,
        text_type: TextType | None = None,
        batch_size: int | None = None,
        long_text: LongTextPolicy | None = None,
        progress: Callable[[int], None] | None = None,
        **options: Any,
    ) -> EmbeddingResult:
        """Async twin of :meth:`embed`, with the same arguments, result and errors."""
        call = self._text_call(texts, model, text_type, batch_size, long_text, options)
        return await self._arun(call, progress)

    def _run(
        self, call: _Call[Any, Any], progress: Callable[[int], None] | None
    ) -> EmbeddingResult:
        return call.finish(self._engine.run(call.jobs(self, progress), self._transport.send))

    async def _arun(
        self, call: _Call[Any, Any], progress: Callable[[int], None] | None
    ) -> EmbeddingResult:
        return call.finish(
            await self._engine.arun(call.jobs(self, progress), self._transport.asend)
        )

    def _text_call(
        self,
        texts: Sequence[str],
        model: str | ModelSpec,
        text_type: str | None,
        batch_size: int | None,
        long_text: LongTextPolicy | None,
        options: dict[str, Any],
        *,
        float32: bool = False,
    ) -> _Call[str, TextParams]:
        checked = self._text_params(model, text_type, options)
        return self._planned_text_call(checked, texts, batch_size, long_text, float32)

    def _planned_text_call(
        self,
        checked: tuple[ModelSpec, Endpoint[str, TextParams], TextParams],
        texts: Sequence[str],
        batch_size: int | None,
        long_text: LongTextPolicy | None,
        float32: bool,
    ) -> _Call[str, TextParams]:
        """A call for ``texts`` with parameters :func:`check_text_call` already checked
        (a stream checks them once, not once per slice)."""
        spec, endpoint, params = checked
        valid = validate_texts(texts)
        rows = endpoint.rows_per_request(spec.max_rows)
        if batch_size is not None:
            if not 1 <= batch_size <= rows:
                raise ConfigurationError(
                    f"batch_size={batch_size} is outside 1..{rows}, the row limit of {spec.name}"
                )
            rows = batch_size
        long_plan = self._long_text_plan(valid, spec, long_text or self.settings.long_text)
        # Fail on a missing key before planning work, not inside a worker thread.
        self.settings.check_credentials()
        return _Call(
            endpoint,
            params,
            self.settings,
            plan(long_plan.rows if long_plan else valid, rows),
            long_plan,
            float32,
        )

    def check_texts(
        self,
        texts: Sequence[str],
        *,
        model: str | ModelSpec = DEFAULT_MODEL,
        text_type: TextType | None = None,
        long_text: LongTextPolicy | None = None,
        **options: Any,
    ) -> None:
        """Raise what :meth:`embed` would raise for these texts and options before
        sending anything (bad texts by position, texts over the token limit, options
        the model does not take); send nothing."""
        self._text_call(texts, model, text_type, None, long_text, options)

    def share_rate(self, shared: LeasedPace) -> None:
        """Take every request start from ``shared`` (a quota shared with other
        processes, see :mod:`dashscope_embed.cluster`) instead of pacing alone."""
        self.budget = shared  # type: ignore[assignment]
        self._engine.budget = shared  # type: ignore[assignment]
        self._engine.pace = EnginePace(shared)  # type: ignore[assignment]

    def _text_params(
        self, model: str | ModelSpec, text_type: str | None, options: dict[str, Any]
    ) -> tuple[ModelSpec, Endpoint[str, TextParams], TextParams]:
        return check_text_call(self.settings, model, text_type, options)

    # ------------------------------------------------------------------ multimodal
    def embed_multimodal(
        self,
        contents: Sequence[Content | Fused],
        *,
        model: str | ModelSpec = "multimodal-embedding-v1",
        **options: Any,
    ) -> EmbeddingResult:
        """Embed texts, images and videos into one vector space, in input order.

        Build items with :class:`~dashscope_embed.multimodal.Content`
        (``Content.image("cat.png")``, ``Content.text("a cat")``,
        ``Content.video("clip.mp4")``); a :class:`~dashscope_embed.multimodal.Fused` item
        (``Fused("red shoe", Content.image("shoe.jpg"))``) gets one vector for all its
        parts, on models that fuse. Every item is checked against the model's limits
        before anything is sent; local videos and large images are uploaded to the
        service's temporary storage first. ``**options`` are the fields of
        :class:`~dashscope_embed.options.MultimodalEmbeddingOptions`.
        """
        spec, params, items = self._multimodal_checks(contents, model, options)
        pending = pending_uploads(items)
        if pending:
            policy = parse_policy(self._run_one(policy_request(self.settings, spec.name)))
            for content in pending:
                check_upload(policy, content)
            jobs = _upload_jobs(policy, pending)
            send = _existing_is_uploaded(self._transport.send)
            urls = _uploaded_urls(pending, self._engine.run(jobs, send))
            items = [with_uploads(item, urls) for item in items]
        call = self._multimodal_call(spec, params, items)
        return self._run(call, None)

    async def aembed_multimodal(
        self,
        contents: Sequence[Content | Fused],
        *,
        model: str | ModelSpec = "multimodal-embedding-v1",
        **options: Any,
    ) -> EmbeddingResult:
        """Async twin of :meth:`embed_multimodal`."""
        spec, params, items = self._multimodal_checks(contents, model, options)
        pending = pending_uploads(items)
        if pending:
            reply = await self._arun_one(policy_request(self.settings, spec.name))
            policy = parse_policy(reply)
            for content in pending:
                check_upload(policy, content)
            jobs = _upload_jobs(policy, pending)
            asend = _aexisting_is_uploaded(self._transport.asend)
            urls = _uploaded_urls(pending, await self._engine.arun(jobs, asend))
            items = [with_uploads(item, urls) for item in items]
        call = self._multimodal_call(spec, params, items)
        return await self._arun(call, None)

    def _multimodal_checks(
        self, contents: Sequence[Content | Fused], model: str | ModelSpec, options: dict[str, Any]
    ) -> tuple[ModelSpec, MultimodalParams, list[MultimodalItem]]:
        spec = resolve_model(model)
        params = multimodal_params(spec, MultimodalEmbeddingOptions.from_call(options))
        items = check_items(contents, spec, self.token_counter().count)
        endpoint_for(spec.family, self.settings.wire_protocol, spec.name).check(params)
        self.settings.check_credentials()
        return spec, params, items

    def _multimodal_call(
        self, spec: ModelSpec, params: MultimodalParams, items: list[MultimodalItem]
    ) -> _Call[MultimodalItem, Any]:
        endpoint: Endpoint[MultimodalItem, Any] = endpoint_for(
            spec.family, self.settings.wire_protocol, spec.name
        )
        # Identical items (same text, same image reference or bytes) are sent once; a
        # fused item whose parts fill a request gets a request of its own.
        the_plan = plan_with_solos(items, spec.max_rows, lambda item: fused_alone(item, params))
        return _Call(endpoint, params, self.settings, the_plan, None)

    def _run_one(self, request: HttpRequest) -> bytes:
        """One request through the engine (its retries and concurrency gate)."""
        outcome = self._engine.run(_single_job(request), self._transport.send)
        return _only_reply(outcome)

    async def _arun_one(self, request: HttpRequest) -> bytes:
        outcome = await self._engine.arun(_single_job(request), self._transport.asend)
        return _only_reply(outcome)

    # ------------------------------------------------------------------ rerank
    def rerank(
        self,
        query: str,
        documents: Sequence[str | Content],
        *,
        model: str | RerankSpec = DEFAULT_RERANK_MODEL,
        long_text: LongTextPolicy | None = None,
        **options: Any,
    ) -> RerankResult:
        """Rank ``documents`` by relevance to ``query``, most relevant first.

        A list past the model's limits (documents or tokens per request) is split into
        requests sent concurrently, and their scores merged into one ranking whose
        indices are positions in ``documents``; ``top_n`` is applied after the merge.
        Identical documents are scored once. A document over the model's per-document
        token limit is refused by position (``long_text="error"``) or truncated
        (``"truncate"``).

        Args:
            query: what the documents are ranked for.
            documents: texts (or, for ``qwen3-vl-rerank``, ``Content`` images and
                videos), in a list or any ordered iterable.
            model: ``qwen3-rerank`` (default), ``gte-rerank-v2``, ``qwen3-vl-rerank``, or
                a :class:`RerankSpec`.
            **options: the fields of :class:`~dashscope_embed.options.RerankOptions`:
                ``top_n``, ``instruct`` or ``task``, ``return_documents`` (default True:
                each hit carries your document), ``extra_parameters``.

        Raises:
            InvalidInputError: a bad query, document or option (nothing was sent).
            APIError subclasses: every request failed; the first error is raised.
            PartialRerankError: some requests failed for good; the rest is ranked.
        """
        call = self._rerank_call(query, documents, model, long_text, options)
        return call.finish(self._engine.run(call.jobs(self), self._transport.send))

    async def arerank(
        self,
        query: str,
        documents: Sequence[str | Content],
        *,
        model: str | RerankSpec = DEFAULT_RERANK_MODEL,
        long_text: LongTextPolicy | None = None,
        **options: Any,
    ) -> RerankResult:
        """Async twin of :meth:`rerank`."""
        call = self._rerank_call(query, documents, model, long_text, options)
        return call.finish(await self._engine.arun(call.jobs(self), self._transport.asend))

    def _rerank_call(
        self,
        query: str,
        documents: Sequence[str | Content],
        model: str | RerankSpec,
        long_text: LongTextPolicy | None,
        options: dict[str, Any],
    ) -> _RerankCall:
        spec = resolve_rerank_model(model)
        params = rerank_params(spec, query, RerankOptions.from_call(options))
        if (spec.family == "rerank-self-hosted") != (self.settings.server is not None):
            raise InvalidInputError(
                f"{spec.name!r} is an open reranker served by your own server: set server= "
                "and base_url"
                if self.settings.server is None
                else f"{spec.name!r} is a DashScope rerank model; a {self.settings.server} "
                "server serves open ones: name it (Qwen/Qwen3-Reranker-0.6B, -4B, -8B, or "
                "self_hosted_model('served-name', like=...))"
            )
        endpoint: Endpoint[Any, RerankParams] = endpoint_for(
            spec.family, self.settings.wire_protocol, spec.name
        )
        endpoint.check(params)
        given = validate_documents(documents, spec.modalities)
        policy = long_text or self.settings.long_text
        if policy == "chunk":
            raise ConfigurationError(
                "long_text='chunk' does not apply to reranking (a document is scored whole): "
                "use 'error' or 'truncate'"
            )
        counter = self.token_counter()
        query_tokens = counter.count(query) + RESERVED_TOKENS
        if query_tokens > spec.max_tokens_per_document:
            raise InvalidInputError(
                f"the query has about {query_tokens} tokens; {spec.name} takes at most "
                f"{spec.max_tokens_per_document}"
            )
        docs, tokens = self._fit_documents(given, spec, query_tokens, policy, counter)
        the_plan = plan(docs, endpoint.rows_per_request(spec.max_documents))
        unique_tokens = [0] * len(the_plan.unique)
        for position, slot in enumerate(the_plan.slot_of):
            unique_tokens[slot] = tokens[position]
        batches = split_rerank(
            the_plan.unique,
            unique_tokens,
            query_tokens,
            spec.max_documents,
            spec.max_tokens_per_request,
            spec.max_per_modality,
        )
        the_plan = Plan(the_plan.unique, the_plan.slot_of, batches)
        self.settings.check_credentials()
        return _RerankCall(
            endpoint, params, self.settings, the_plan, given, unique_tokens, query_tokens
        )

    def _fit_documents(
        self,
        documents: list[str | Content],
        spec: RerankSpec,
        query_tokens: int,
        policy: LongTextPolicy,
        counter: TokenCounter,
    ) -> tuple[list[str | Content], list[int]]:
        """Each document as it will be sent, with its token count: a text over the
        per-document limit (or too long to share a request with the query) is refused by
        position, or truncated under ``long_text="truncate"``."""
        limit = min(spec.max_tokens_per_document, spec.max_tokens_per_request - query_tokens)
        fitted: list[str | Content] = []
        counts: list[int] = []
        problems: list[InputProblem] = []
        for position, document in enumerate(documents):
            text = document if isinstance(document, str) else None
            if isinstance(document, Content) and document.modality == "text":
                text = document.value
            if text is None:
                fitted.append(document)
                counts.append(NON_TEXT_TOKENS)
                continue
            # Counted even when short: the counts also pack documents into requests, where
            # a byte-length bound would cost several times the requests.
            # The service bills each document's end-of-text token too, as for the query.
            count = counter.count(text) + RESERVED_TOKENS
            if count > limit:
                if policy == "truncate":
                    text = counter.truncate(text, limit - RESERVED_TOKENS)
                    document = text if isinstance(document, str) else Content.text(text)
                    count = limit
                else:
                    problems.append(
                        InputProblem(
                            position,
                            f"has about {count} tokens; {spec.name} scores at most {limit} "
                            "per document (pass long_text='truncate' to cut it)",
                            "documents",
                        )
                    )
            fitted.append(document)
            counts.append(count)
        if problems:
            raise InvalidInputError(problems)
        return fitted, counts

    # ------------------------------------------------------------------ streams
    def embed_stream(
        self,
        texts: Iterable[str],
        *,
        model: str | ModelSpec = DEFAULT_MODEL,
        text_type: TextType | None = None,
        long_text: LongTextPolicy | None = None,
        lookahead: int | None = None,
        as_numpy: bool = False,
        on_complete: Callable[[EmbeddingChunk], None] | None = None,
        **options: Any,
    ) -> Iterator[EmbeddingChunk]:
        """Embed an iterable of any size; yield :class:`EmbeddingChunk` s in input order.

        Texts are read lazily, one request's worth at a time; at most ``lookahead``
        (default 8 per request the client allows in flight now, 32 to 512) such slices
        are held at once, so memory does not grow with the corpus. The window is wider
        than the requests in flight because results are yielded in order: a slice waiting
        to be retried holds back the slices after it, and the others must be able to keep
        every slot busy meanwhile. With
        ``as_numpy=True`` each chunk's ``array`` holds its dense vectors as float32.
        Identical texts are sent once only within a slice. ``**options`` are those of
        :meth:`embed`.

        ``on_complete`` is called with each chunk as soon as its request finishes, in
        completion order and (sync) from a worker thread: save work there and nothing
        delivered is lost if the process dies before the ordered yield reaches it (the
        bulk command keeps its resume journal this way).

        Raises:
            InvalidInputError: a bad text (positions count from the start of ``texts``).
            EmbedStreamError: a request failed for good; every earlier input was yielded.
        """
        checked = self._text_params(model, text_type, options)  # before reading
        spec, _, params = checked
        if as_numpy:
            check_numpy_output(params.wants_dense)

        def embed_slice(batch: list[str]) -> EmbeddingResult:
            return self._run(
                self._planned_text_call(checked, batch, None, long_text, as_numpy), None
            )

        return stream_sync(
            texts,
            embed_slice,
            slice_size=spec.max_rows,
            lookahead=lookahead or self._lookahead,
            as_numpy=as_numpy,
            on_complete=on_complete,
        )

    def aembed_stream(
        self,
        texts: Iterable[str] | AsyncIterable[str],
        *,
        model: str | ModelSpec = DEFAULT_MODEL,
        text_type: TextType | None = None,
        long_text: LongTextPolicy | None = None,
        lookahead: int | None = None,
        as_numpy: bool = False,
        on_complete: Callable[[EmbeddingChunk], None] | None = None,
        **options: Any,
    ) -> AsyncIterator[EmbeddingChunk]:
        """Async twin of :meth:`embed_stream`; ``texts`` may also be an async iterable.

        Use as ``async for chunk in client.aembed_stream(texts): ...``.
        """
        checked = self._text_params(model, text_type, options)
        spec, _, params = checked
        if as_numpy:
            check_numpy_output(params.wants_dense)

        def embed_slice(batch: list[str]) -> Awaitable[EmbeddingResult]:
            return self._arun(
                self._planned_text_call(checked, batch, None, long_text, as_numpy), None
            )

        return stream_async(
            texts,
            embed_slice,
            slice_size=spec.max_rows,
            lookahead=lookahead or self._lookahead,
            as_numpy=as_numpy,
            on_complete=on_complete,
        )

    # ------------------------------------------------------------------ lifetime
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
    def token_counter(self) -> TokenCounter:
        """The token counter this client uses (see ``token_counter=``)."""
        if self._token_counter is None:
            self._token_counter = default_token_counter()
        return self._token_counter

    def _long_text_plan(
        self, texts: list[str], spec: ModelSpec, policy: LongTextPolicy
    ) -> LongTextPlan | None:
        limit = spec.max_tokens_per_row - RESERVED_TOKENS
        # A token is at least one UTF-8 byte and a character at most four, so most texts
        # are cleared without counting anything.
        if all(len(text) * 4 <= limit for text in texts):
            return None
        long_plan = apply_long_text_policy(
            texts,
            spec.max_tokens_per_row,
            policy,
            self.token_counter(),
            reserved_tokens=RESERVED_TOKENS,
        )
        return long_plan if long_plan.changed else None


@dataclass(frozen=True)
class _Call(Generic[Item, Params]):
    """Everything one call needs after validation, for any endpoint; sync and async."""

    endpoint: Endpoint[Item, Params]
    params: Params
    settings: ClientSettings
    plan: Plan[Item]
    long_plan: LongTextPlan | None
    # Dense vectors as float32 matrices, never Python lists (streams with as_numpy=True).
    float32: bool = False

    def jobs(
        self, client: DashScopeClient, progress: Callable[[int], None] | None
    ) -> Jobs[range, ParsedBatch]:
        return Jobs(
            items=self.plan.batches,
            request=self.request,
            decode=self.decode,
            cost=self._cost(client),
            on_success=self._progress_hook(progress),
        )

    def request(self, batch: range) -> HttpRequest:
        return self.endpoint.request(self.settings, self.plan.batch_items(batch), self.params)

    def decode(self, batch: range, content: bytes) -> ParsedBatch:
        parse = self.endpoint.parse_float32 if self.float32 else self.endpoint.parse
        parsed: ParsedBatch = parse(content, len(batch), self.params)
        return parsed

    def _cost(self, client: DashScopeClient) -> Callable[[range], int] | None:
        """Tokens a request will bill, for the tokens-per-minute budget (if one is set)."""
        if client.budget.tokens_per_minute is None:
            return None
        counter = client.token_counter()

        def cost(batch: range) -> int:
            return sum(_item_tokens(counter, item) for item in self.plan.batch_items(batch))

        return cost

    def _progress_hook(
        self, progress: Callable[[int], None] | None
    ) -> Callable[[range], None] | None:
        """Turn "request done" into "this many inputs done" for a progress callback."""
        if progress is None:
            return None
        inputs_per_row = [0] * len(self.plan.unique)
        for slot in self.plan.slot_of:
            inputs_per_row[slot] += 1
        return lambda batch: progress(sum(inputs_per_row[batch.start : batch.stop]))

    def finish(self, outcome: Outcome) -> EmbeddingResult:
        replies = [r if isinstance(r, ParsedBatch) else None for r in outcome.replies]
        result = assemble(self.plan, replies, self.params)
        if self.long_plan is not None:
            result = regroup(result, self.long_plan)
        return _raise_or_return(result, outcome)


def check_text_call(
    settings: ClientSettings, model: str | ModelSpec, text_type: str | None, options: dict[str, Any]
) -> tuple[ModelSpec, Endpoint[str, TextParams], TextParams]:
    """Validate a text call's parameters once, for the endpoint ``settings`` lead to
    (the framework classes check their defaults with it at construction)."""
    spec = resolve_model(model)
    params = text_params(spec, text_type, TextEmbeddingOptions.from_call(options))
    if spec.hosting == "self-hosted" and settings.server is None:
        raise InvalidInputError(
            f"{spec.name!r} is an open model served by your own server: set server='vllm' "
            "(or 'sglang', 'tei', 'ollama', 'infinity') and base_url to its root"
        )
    endpoint: Endpoint[str, TextParams] = endpoint_for(
        spec.family, settings.wire_protocol, spec.name
    )
    endpoint.check(params)
    return spec, endpoint, params


@dataclass(frozen=True)
class _RerankCall:
    """One ranking's requests and how their scores merge."""

    endpoint: Endpoint[Any, RerankParams]
    params: RerankParams
    settings: ClientSettings
    plan: Plan[Any]
    documents: list[Any]  # as the caller gave them, for the hits
    tokens: list[int]  # per unique document
    query_tokens: int

    def jobs(self, client: DashScopeClient) -> Jobs[range, ParsedScores]:
        cost = None
        if client.budget.tokens_per_minute is not None:
            cost = self._cost
        return Jobs(items=self.plan.batches, request=self.request, decode=self.decode, cost=cost)

    def _cost(self, batch: range) -> int:
        return sum(self.tokens[slot] + self.query_tokens for slot in batch)

    def request(self, batch: range) -> HttpRequest:
        return self.endpoint.request(self.settings, self.plan.batch_items(batch), self.params)

    def decode(self, batch: range, content: bytes) -> ParsedScores:
        parsed: ParsedScores = self.endpoint.parse(content, len(batch), self.params)
        return parsed

    def finish(self, outcome: Outcome) -> RerankResult:
        scores: list[float | None] = [None] * len(self.plan.unique)
        tokens = 0
        request_ids: list[str] = []
        for batch, reply in zip(self.plan.batches, outcome.replies, strict=True):
            if isinstance(reply, ParsedScores):
                scores[batch.start : batch.stop] = reply.scores
                tokens += reply.total_tokens
                if reply.request_id:
                    request_ids.append(reply.request_id)
        keep = self.params.options.return_documents
        hits = [
            RerankHit(position, score, self.documents[position] if keep else None)
            for position, slot in enumerate(self.plan.slot_of)
            if (score := scores[slot]) is not None
        ]
        hits.sort(key=lambda hit: (-hit.relevance_score, hit.index))
        top_n = self.params.options.top_n
        result = RerankResult(
            hits=hits[:top_n] if top_n is not None else hits,
            usage=Usage(tokens),
            request_ids=tuple(request_ids),
            model=self.params.spec.name,
            count=len(hits),
        )
        if len(hits) == len(self.plan.slot_of):
            return result
        errors = [error for _, error in outcome.errors]
        if not hits and errors:
            raise errors[0]
        failed = [p for p, slot in enumerate(self.plan.slot_of) if scores[slot] is None]
        raise PartialRerankError(result, failed, errors, outcome.unsent) from (
            errors[0] if errors else None
        )


def validate_documents(documents: Any, modalities: Sequence[str]) -> list[str | Content]:
    """Documents as a list: texts, or ``Content`` of a modality the model ranks; every
    bad one reported by position."""
    if isinstance(documents, (str, bytes, Mapping, AbstractSet)):
        validate_texts(documents, "documents")  # the same clear refusals as for texts
    try:
        items = list(documents)
    except TypeError:
        raise InvalidInputError(
            f"documents must be a list of texts, got {type(documents).__name__}"
        ) from None
    if not items:
        raise InvalidInputError("documents is empty: there is nothing to rank")
    problems: list[InputProblem] = []
    for position, item in enumerate(items):
        if isinstance(item, Content):
            if item.modality not in modalities:
                problems.append(
                    InputProblem(
                        position,
                        f"a {item.modality} document, which this model does not rank",
                        "documents",
                    )
                )
        elif (reason := text_problem(item)) is not None:
            problems.append(InputProblem(position, reason, "documents"))
    if problems:
        raise InvalidInputError(problems)
    return list(items)


def _item_tokens(counter: TokenCounter, item: object) -> int:
    """What one input bills: a text's tokens; an image or video what the service bills
    for one (the client cannot count those)."""
    if isinstance(item, str):
        return counter.count(item) + RESERVED_TOKENS
    parts = item.parts if isinstance(item, Fused) else (item,)
    return sum(
        counter.count(part.value) + RESERVED_TOKENS
        if isinstance(part, Content) and part.modality == "text"
        else NON_TEXT_TOKENS
        for part in parts
    )


def _single_job(request: HttpRequest) -> Jobs[int, bytes]:
    return Jobs(items=[0], request=lambda _: request, decode=lambda _, content: content)


def _only_reply(outcome: Outcome) -> bytes:
    if outcome.errors:
        raise outcome.errors[0][1]
    reply = outcome.replies[0]
    assert isinstance(reply, bytes)
    return reply


def _upload_jobs(policy: UploadPolicy, pending: list[Content]) -> Jobs[Content, str]:
    """One form POST per file; the file is read when its request is made."""
    urls: dict[Content, str] = {}

    def request(content: Content) -> HttpRequest:
        http_request, urls[content] = upload_request(policy, content)
        return http_request

    return Jobs(items=pending, request=request, decode=lambda content, _: urls[content])


# An upload whose reply was lost is resent; the storage then refuses to overwrite the
# object (409). Its key holds a digest of the file, so the object there is this file.
def _existing_is_uploaded(send: Callable[[HttpRequest], bytes]) -> Callable[[HttpRequest], bytes]:
    def upload(request: HttpRequest) -> bytes:
        try:
            return send(request)
        except APIError as error:
            if error.status_code == 409:
                return b""
            raise

    return upload


def _aexisting_is_uploaded(
    send: Callable[[HttpRequest], Awaitable[bytes]],
) -> Callable[[HttpRequest], Awaitable[bytes]]:
    async def upload(request: HttpRequest) -> bytes:
        try:
            return await send(request)
        except APIError as error:
            if error.status_code == 409:
                return b""
            raise

    return upload


def _uploaded_urls(pending: list[Content], outcome: Outcome) -> dict[Content, str]:
    if outcome.errors:
        raise outcome.errors[0][1]
    return {content: str(url) for content, url in zip(pending, outcome.replies, strict=True)}


def _raise_or_return(result: EmbeddingResult | PartialResult, outcome: Outcome) -> EmbeddingResult:
    if isinstance(result, EmbeddingResult):
        return result
    errors = [error for _, error in outcome.errors]
    if len(result.missing_positions) == len(result) and errors:
        # Nothing was embedded: the typed error says it best.
        raise errors[0]
    raise PartialEmbeddingError(result, result.missing_positions, errors, outcome.unsent) from (
        errors[0] if errors else None
    )


def hide_key(settings: dict[str, Any]) -> None:
    """Turn a key among keyword settings into a :class:`SecretStr` in place; called
    first wherever settings are taken, so no frame holds it as a plain string."""
    for name in ("api_key", "dashscope_api_key"):
        if isinstance(settings.get(name), str):
            settings[name] = SecretStr(settings[name])


def _fields_of(settings: ClientSettings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in ClientSettings.model_fields}


def make_settings(**settings: Any) -> ClientSettings:
    """Build :class:`ClientSettings` from keyword settings; ``None`` means "use the
    environment or default". Problems become a :class:`ConfigurationError` that names
    each setting (and the nearest real name for an unknown one), never quoting values."""
    hide_key(settings)
    given = {k: v for k, v in settings.items() if v is not None}
    unknown = [key for key in given if key not in ClientSettings.model_fields]
    if unknown:
        import difflib

        hints = []
        for key in unknown:
            near = difflib.get_close_matches(key, list(ClientSettings.model_fields), n=1)
            hints.append(f"{key!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
        raise ConfigurationError(f"unknown DashScope settings: {', '.join(hints)}")
    try:
        return ClientSettings(**given)
    except ValidationError as exc:
        problems = describe_validation_error(exc)
    # Raised outside the except block: the ValidationError quotes the input it was given.
    raise ConfigurationError(f"invalid DashScope settings: {problems}")


make_config = make_settings
"""The former name of :func:`make_settings`."""


def describe_validation_error(exc: ValidationError) -> str:
    """Each problem as ``setting: message``, without the offending values."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
        for err in exc.errors(include_url=False, include_input=False, include_context=False)
    )


def as_secret(api_key: str | SecretStr | None) -> SecretStr | None:
    """The key as a :class:`SecretStr`."""
    return SecretStr(api_key) if isinstance(api_key, str) else api_key


__all__ = [
    "DashScopeClient",
    "PartialResult",
    "make_config",
    "make_settings",
]
