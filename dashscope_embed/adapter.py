"""What the LlamaIndex and LangChain classes share: settings, roles and the hybrid cache.

Each framework class is a pydantic model that mixes in :class:`AdapterSettings` and
names its model field the framework's way (``model_name`` / ``model``). Everything
else (the client, the query/document roles, the sparse half kept for hybrid indexes)
lives here once.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import pickle
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import ConfigDict, PrivateAttr, model_validator

from dashscope_embed.client import DashScopeClient, check_text_call, hide_key
from dashscope_embed.config import ClientSettings
from dashscope_embed.errors import InvalidInputError
from dashscope_embed.forksafe import renew_after_fork
from dashscope_embed.models import (
    ModelSpec,
    OutputType,
    RerankSpec,
    resolve_model,
    resolve_rerank_model,
)
from dashscope_embed.multimodal import Content, Fused
from dashscope_embed.options import (
    CallOptions,
    MultimodalEmbeddingOptions,
    RerankOptions,
    TextEmbeddingOptions,
    multimodal_params,
    rerank_params,
)
from dashscope_embed.planner import validate_texts
from dashscope_embed.tasks import resolve_instruct
from dashscope_embed.types import EmbeddingResult, RerankResult, SparseEmbedding

Role = Literal["query", "document"]

# Keys a framework puts into its own serialised form and hands back (LlamaIndex's
# ``to_dict`` adds ``class_name``): accepted and dropped, never an unknown setting.
_FRAMEWORK_KEYS = frozenset({"class_name"})

if TYPE_CHECKING:
    from typing_extensions import Self


class SparseCache:
    """The sparse halves of recent ``dense&sparse`` calls, so a hybrid vector store's
    sparse function reuses them instead of paying for a second request.

    Bounded (least recently used entries go first); keyed by role, instruction and text.
    """

    def __init__(self, max_entries: int = 50_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str | None, str], SparseEmbedding] = OrderedDict()
        self._by_content: dict[
            tuple[str, str | None, bytes], tuple[str, str | None, str] | None
        ] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        renew_after_fork(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    def put(
        self,
        role: str,
        instruct: str | None,
        texts: Sequence[str],
        vectors: Sequence[SparseEmbedding],
    ) -> None:
        with self._lock:
            for text, vector in zip(texts, vectors, strict=True):
                key = (role, instruct, text)
                self._entries[key] = vector
                self._entries.move_to_end(key)
                head, separator, content = text.partition(CONTENT_SEPARATOR)
                if separator and head:
                    by_content = (role, instruct, _digest(content))
                    known = self._by_content.get(by_content)
                    # Two texts with the same content and different metadata: ambiguous.
                    self._by_content[by_content] = key if known in (None, key) else None
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            if len(self._by_content) > 2 * self.max_entries:
                self._by_content.clear()  # rebuilt by later calls; only a shortcut

    def get(self, role: str, instruct: str | None, text: str) -> SparseEmbedding | None:
        with self._lock:
            vector = self._entries.get((role, instruct, text))
            if vector is None:
                self.misses += 1
            else:
                self.hits += 1
                self._entries.move_to_end((role, instruct, text))
            return vector

    def get_for_content(
        self, role: str, instruct: str | None, content: str
    ) -> SparseEmbedding | None:
        """The vector of a text embedded as ``{metadata}\n\n{content}`` (LlamaIndex's
        default ``MetadataMode.EMBED`` layout), looked up by its content alone: vector
        stores that pass ``node.text`` to their sparse function get the sparse half of
        what the dense side embedded. ``None`` when not unique or not cached."""
        exact = self.get(role, instruct, content)
        if exact is not None:
            return exact
        with self._lock:
            key = self._by_content.get((role, instruct, _digest(content)))
            vector = self._entries.get(key) if key is not None else None
            if vector is not None:
                self.misses -= 1  # the exact lookup's miss was not one
                self.hits += 1
            return vector

    def __len__(self) -> int:
        return len(self._entries)


# LlamaIndex's default text_template puts the metadata block, a blank line, then the
# node's content: "{metadata_str}\n\n{content}".
CONTENT_SEPARATOR = "\n\n"


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class AdapterBase(ClientSettings):
    """What every framework class is made of: all client settings
    (:class:`~dashscope_embed.config.ClientSettings`) and, through its family's base,
    one per-call options model (``OPTIONS``) as its defaults, declared once there. The
    model field is the framework's (``model_name`` / ``model``).

    The API key is a secret: excluded from dumps, ``repr`` and pickles; with none given,
    ``DASHSCOPE_API_KEY`` is read when the first request is made.
    """

    model_config = ConfigDict(frozen=False, protected_namespaces=())
    OPTIONS: ClassVar[type[CallOptions]]

    _client: DashScopeClient | None = PrivateAttr(default=None)
    _client_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, **data: Any) -> None:
        hide_key(data)
        super().__init__(**data)
        renew_after_fork(self)

    def _after_fork(self) -> None:
        self._client_lock = threading.Lock()

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in type(self).model_fields:
            self._client = None  # a changed setting takes effect with the next call

    @model_validator(mode="before")
    @classmethod
    def _known_settings_only(cls, data: Any) -> Any:
        """An unknown keyword is an error naming the nearest real setting: a misspelt
        ``dimensions=512`` must not quietly give 1,024-dimension vectors."""
        if not isinstance(data, dict):
            return data
        known: set[str] = set()
        for name, info in cls.model_fields.items():
            known.add(name)
            if info.alias:
                known.add(info.alias)
        unknown = [key for key in data if key not in known and key not in _FRAMEWORK_KEYS]
        if unknown:
            problems = []
            for key in unknown:
                near = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                problems.append(f"unknown setting {key!r} for {cls.__name__}{hint}")
            raise ValueError(
                "; ".join(problems) + f" (settings: {', '.join(sorted(cls.model_fields))})"
            )
        return {k: v for k, v in data.items() if k not in _FRAMEWORK_KEYS}

    # ----------------------------------------------------------------- configuration
    def _model_ref(self) -> Any:
        """The model this class uses (a name or a spec); each adapter maps its own field
        here."""
        raise NotImplementedError

    @property
    def spec(self) -> ModelSpec:
        return resolve_model(self._model_ref())

    @model_validator(mode="after")
    def _check_model_settings(self) -> AdapterBase:
        # Fail at construction, not at the first call: every request would be refused.
        self._check_model()
        return self

    def _check_model(self) -> None:
        """The model-dependent settings against the model table (per adapter family)."""
        raise NotImplementedError

    @property
    def client(self) -> DashScopeClient:
        """The core client, built on first use from these settings."""
        with self._client_lock:
            if self._client is None:
                self._client = DashScopeClient(self.settings_only())
            return self._client

    # ----------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Close this object's pooled connections. It stays usable: a later call
        reconnects. ``with DashScopeEmbedding(...) as embed_model:`` closes on exit."""
        with self._client_lock:
            client = self._client
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close this object's connections: the sync pool, and the async pool of the
        running event loop. ``async with`` closes on exit."""
        with self._client_lock:
            client = self._client
        if client is not None:
            client.close()
            await client.aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def role_options(self, role: Role) -> dict[str, Any]:
        """This object's options for one call in ``role`` (query-only ones for queries)."""
        return self.OPTIONS.for_role(self, role)

    # ----------------------------------------------------------------- copying
    def __getstate__(self) -> dict[Any, Any]:
        # Fields travel (the key and a custom token counter stay behind, and anything
        # else that cannot be pickled, as LlamaIndex does); connections, locks and
        # caches are rebuilt on the other side.
        fields = {}
        for name, value in self.__dict__.items():
            if name in ("api_key", "token_counter"):
                value = None
            try:
                pickle.dumps(value)
            except Exception:  # noqa: S112 - left behind, rebuilt from defaults
                continue
            fields[name] = value
        return {
            "__dict__": fields,
            "key_withheld": self.api_key is not None or self._key_withheld,
        }

    def __setstate__(self, state: dict[Any, Any]) -> None:
        # Rebuild through __init__ so private state (client, locks, cache) is fresh.
        self.__init__(**state["__dict__"])  # type: ignore[misc]
        self._key_withheld = bool(state.get("key_withheld"))

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Any:
        """A copy with the same settings (the key included: it stays in this process)
        and its own client, locks and cache."""
        values = {name: copy.deepcopy(value, memo) for name, value in self.__dict__.items()}
        return type(self)(**values)


class AdapterSettings(AdapterBase, TextEmbeddingOptions):
    """The text family of framework classes: roles (query / document), the sparse half
    of ``dense&sparse`` replies kept for hybrid indexes, batch jobs."""

    model_config = ConfigDict(frozen=False)  # the options model alone is frozen
    OPTIONS: ClassVar[type[CallOptions]] = TextEmbeddingOptions

    _sparse_cache: SparseCache = PrivateAttr(default_factory=SparseCache)

    def _check_model(self) -> None:
        roles: tuple[Role, ...] = ("query", "document")
        for role in roles:
            options = self._call_options(role)
            model, text_type = options.pop("model"), options.pop("text_type")
            check_text_call(self, model, text_type, options)

    @property
    def query_instruct(self) -> str | None:
        """The instruction sent with queries (``instruct``, else the ``task`` preset)."""
        return resolve_instruct(self.instruct, self.task)

    @property
    def sparse_cache(self) -> SparseCache:
        return self._sparse_cache

    # ----------------------------------------------------------------- calls
    def _call_options(self, role: Role, output_type: OutputType | None = None) -> dict[str, Any]:
        """The core call's arguments for one role: every option this class holds (query
        instructions for queries only); the OpenAI-compatible protocol carries no roles."""
        native = self.protocol == "native"
        options = self.role_options(role if native else "document")
        if output_type is not None:
            options["output_type"] = output_type
        return {"model": self._model_ref(), "text_type": role if native else None, **options}

    def _remember_sparse(self, role: Role, texts: Sequence[str], result: EmbeddingResult) -> None:
        if result.sparse is not None:
            instruct = self.query_instruct if role == "query" else None
            self._sparse_cache.put(role, instruct, texts, result.sparse)

    def embed_role(
        self, texts: Sequence[str], role: Role, output_type: OutputType | None = None
    ) -> EmbeddingResult:
        """Embed ``texts`` as queries or documents with these settings."""
        texts = validate_texts(texts)
        result = self.client.embed(texts, **self._call_options(role, output_type))
        self._remember_sparse(role, texts, result)
        return result

    async def aembed_role(
        self, texts: Sequence[str], role: Role, output_type: OutputType | None = None
    ) -> EmbeddingResult:
        """Async twin of :meth:`embed_role`."""
        texts = validate_texts(texts)
        result = await self.client.aembed(texts, **self._call_options(role, output_type))
        self._remember_sparse(role, texts, result)
        return result

    def dense_for(self, texts: Sequence[str], role: Role) -> list[list[float]]:
        """Dense vectors, or a clear error when this class was set to sparse-only output."""
        if self.output_type == "sparse":
            raise InvalidInputError(
                "this embedding class was created with output_type='sparse'; dense vectors "
                "need output_type='dense' or 'dense&sparse'"
            )
        return self.embed_role(texts, role).require_dense()

    async def adense_for(self, texts: Sequence[str], role: Role) -> list[list[float]]:
        if self.output_type == "sparse":
            raise InvalidInputError(
                "this embedding class was created with output_type='sparse'; dense vectors "
                "need output_type='dense' or 'dense&sparse'"
            )
        return (await self.aembed_role(texts, role)).require_dense()

    def sparse_for(
        self, texts: Sequence[str], role: Role, *, by_content: bool = False
    ) -> list[SparseEmbedding]:
        """Sparse vectors: from the cache of earlier ``dense&sparse`` calls where possible,
        one ``sparse`` request for the rest. With ``by_content``, a text also matches
        one that was embedded with a metadata block in front of it (see
        :meth:`SparseCache.get_for_content`)."""
        texts = validate_texts(texts)
        cached, missing = self._split_cached(texts, role, by_content)
        if missing:
            fresh = self.embed_role([texts[i] for i in missing], role, "sparse").require_sparse()
            for i, vector in zip(missing, fresh, strict=True):
                cached[i] = vector
        return cached  # type: ignore[return-value]

    async def asparse_for(
        self, texts: Sequence[str], role: Role, *, by_content: bool = False
    ) -> list[SparseEmbedding]:
        texts = validate_texts(texts)
        cached, missing = self._split_cached(texts, role, by_content)
        if missing:
            result = await self.aembed_role([texts[i] for i in missing], role, "sparse")
            for i, vector in zip(missing, result.require_sparse(), strict=True):
                cached[i] = vector
        return cached  # type: ignore[return-value]

    def _split_cached(
        self, texts: Sequence[str], role: Role, by_content: bool = False
    ) -> tuple[list[SparseEmbedding | None], list[int]]:
        instruct = self.query_instruct if role == "query" else None
        lookup = self._sparse_cache.get_for_content if by_content else self._sparse_cache.get
        cached = [lookup(role, instruct, t) for t in texts]
        return cached, [i for i, v in enumerate(cached) if v is None]

    def embed_documents_via_batch_job(
        self,
        texts: Sequence[str],
        *,
        state_file: str | None = None,
        **wait_options: Any,
    ) -> list[list[float]]:
        """Embed a large list through the OpenAI-compatible Batch API (half price, hours
        rather than seconds), returning dense vectors in input order.

        Explicit by design: batch jobs are never used silently. The Batch API carries no
        ``text_type``, so the texts are embedded as documents. With ``state_file``, a
        restarted process resumes the same batch instead of paying for a new one.
        """
        from dashscope_embed.jobs import BatchAPIJobs

        result = BatchAPIJobs(self.client).run(
            list(texts),
            model=self._model_ref(),
            dimension=self.dimension,
            state_file=state_file,
            **wait_options,
        )
        return result.require_dense()


class MultimodalAdapter(AdapterBase, MultimodalEmbeddingOptions):
    """The multimodal family of framework classes: texts, images and videos in one space."""

    model_config = ConfigDict(frozen=False)
    OPTIONS: ClassVar[type[CallOptions]] = MultimodalEmbeddingOptions

    def _check_model(self) -> None:
        options = MultimodalEmbeddingOptions.from_call(self.role_options("query"))
        multimodal_params(self.spec, options)

    def embed_contents(self, contents: Sequence[Content | Fused], role: Role) -> list[list[float]]:
        """Dense vectors of ``contents`` (queries get the query-only options)."""
        result = self.client.embed_multimodal(
            contents, model=self._model_ref(), **self.role_options(role)
        )
        return result.require_dense()

    async def aembed_contents(
        self, contents: Sequence[Content | Fused], role: Role
    ) -> list[list[float]]:
        """Async twin of :meth:`embed_contents`."""
        result = await self.client.aembed_multimodal(
            contents, model=self._model_ref(), **self.role_options(role)
        )
        return result.require_dense()

    def embed_fused(self, items: Sequence[Fused | Content]) -> list[list[float]]:
        """One vector per item for a corpus of documents made of several parts (a
        product's title and photo: ``Fused("red running shoe", Content.image(path))``),
        on models that fuse (qwen3-vl-embedding, the dated tongyi-embedding-vision
        snapshots, qwen2.5-vl-embedding). Query them with plain text queries."""
        result = self.client.embed_multimodal(
            items, model=self._model_ref(), **self.role_options("document")
        )
        return result.require_dense()

    async def aembed_fused(self, items: Sequence[Fused | Content]) -> list[list[float]]:
        """Async twin of :meth:`embed_fused`."""
        result = await self.client.aembed_multimodal(
            items, model=self._model_ref(), **self.role_options("document")
        )
        return result.require_dense()


class RerankAdapter(AdapterBase, RerankOptions):
    """The rerank family of framework classes: one ranking per call, split and merged
    past the model's limits by the core."""

    model_config = ConfigDict(frozen=False)
    OPTIONS: ClassVar[type[CallOptions]] = RerankOptions

    @property
    def rerank_spec(self) -> RerankSpec:
        return resolve_rerank_model(self._model_ref())

    def _check_model(self) -> None:
        rerank_params(self.rerank_spec, "?", RerankOptions.from_call(self.role_options("query")))

    def rank(self, query: str, documents: Sequence[Any], model: Any = None) -> RerankResult:
        """Every document ranked for ``query`` (the ``top_n`` first, if set)."""
        return self.client.rerank(
            query, documents, model=model or self._model_ref(), **self.role_options("query")
        )

    async def arank(self, query: str, documents: Sequence[Any], model: Any = None) -> RerankResult:
        """Async twin of :meth:`rank`."""
        return await self.client.arerank(
            query, documents, model=model or self._model_ref(), **self.role_options("query")
        )
