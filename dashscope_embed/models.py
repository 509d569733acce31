"""The model table: every limit and capability the client and the emulator check.

Validation reads this table; adding a model is one entry. A model the table does not
know can still be used by passing a :class:`ModelSpec` wherever a model name is taken.

Sources and open questions are in the project's API notes; where the service's pages
disagree the table takes the permissive value and the service has the last word (its
400 surfaces as :class:`~dashscope_embed.errors.BadRequestError`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from dashscope_embed.errors import UnknownModelError

OutputType = Literal["dense", "sparse", "dense&sparse"]
TextType = Literal["query", "document"]
ModelKind = Literal["text", "async-batch", "multimodal"]
Hosting = Literal["dashscope", "self-hosted"]
Fusion = Literal["none", "parameter", "object", "always"]

OUTPUT_TYPES: tuple[OutputType, ...] = ("dense", "sparse", "dense&sparse")
TEXT_TYPES: tuple[TextType, ...] = ("query", "document")


IMAGE_FORMATS_V1: tuple[str, ...] = ("jpeg", "png", "bmp")
IMAGE_FORMATS_VL: tuple[str, ...] = ("jpeg", "png", "webp", "bmp", "tiff", "ico", "icns", "sgi")
VIDEO_FORMATS_V1: tuple[str, ...] = ("mp4", "mpeg", "mpg", "webm", "avi", "flv", "mkv", "mov")
VIDEO_FORMATS_VL: tuple[str, ...] = ("mp4", "avi", "mov")
_MB = 1024 * 1024


@dataclass(frozen=True)
class MediaLimits:
    """What a multimodal model takes besides text, checked before anything is sent.

    Attributes:
        image_bytes: Largest image, in bytes (of the file, before base64).
        image_formats: Image formats accepted (``"jpeg"``, ``"png"``, ...).
        video_bytes: Largest video file, in bytes.
        video_formats: Video formats (file suffixes) accepted.
        fusion: How one vector is made from several parts (a :class:`~dashscope_embed.
            multimodal.Fused` item): ``"parameter"`` (all contents of a request with
            ``enable_fusion=true``: one fused item per request), ``"object"`` (text, image
            and video in the same content object: several fused items per request),
            ``"always"`` (every request gives one vector: one item per request) or
            ``"none"`` (no fused vectors).
        parameters: Optional parameters the model takes besides ``dimension`` and
            ``instruct``: among ``"fps"``, ``"res_level"``, ``"max_video_frames"``.
        one_of_each_modality: At most one text, one image and one video per request
            (or per fused item).
        truncates_text: The service cuts text past the token limit instead of refusing it.
    """

    image_bytes: int
    image_formats: tuple[str, ...]
    video_bytes: int
    video_formats: tuple[str, ...]
    fusion: Fusion = "none"
    parameters: frozenset[str] = frozenset()
    one_of_each_modality: bool = False
    truncates_text: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """Limits and capabilities of one embedding model.

    Attributes:
        name: The model id sent on the wire, e.g. ``"text-embedding-v4"``.
        max_rows: Most inputs (texts) one request may carry.
        max_tokens_per_row: Most tokens one input may have.
        dimensions: Output sizes the model accepts for ``dimension``.
        default_dimension: Size returned when ``dimension`` is not sent.
        configurable_dimension: Whether ``dimension`` is sent at all. Models with a fixed
            size (v1, v2) accept only their one size and it is never put on the wire.
        supports_text_type: Whether ``text_type`` (query / document) is sent.
        supports_instruct: Whether an ``instruct`` task instruction is accepted.
        output_types: Which ``output_type`` values the model accepts; only models with
            more than ``("dense",)`` get ``output_type`` on the wire.
        openai_compatible: Whether the OpenAI-compatible endpoint serves the model.
        kind: ``"text"`` (synchronous text), ``"async-batch"`` (file-based tasks) or
            ``"multimodal"``.
        price_cny_per_1k_tokens: List price in the Beijing region, CNY per 1,000 input
            tokens (text input for multimodal models); ``None`` if unknown.
        media: Image and video limits and fusion rules (multimodal models only).
        hosting: ``"dashscope"``, or ``"self-hosted"`` for an open model served by your
            own server (``server=`` setting).
    """

    name: str
    max_rows: int
    max_tokens_per_row: int
    dimensions: tuple[int, ...]
    default_dimension: int
    configurable_dimension: bool = True
    supports_text_type: bool = True
    supports_instruct: bool = False
    output_types: tuple[OutputType, ...] = ("dense",)
    openai_compatible: bool = False
    kind: ModelKind = "text"
    price_cny_per_1k_tokens: float | None = None
    media: MediaLimits | None = None
    hosting: Hosting = "dashscope"
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("ModelSpec.name must be a non-empty model id")
        if self.max_rows < 1:
            raise ValueError(f"ModelSpec {self.name!r}: max_rows must be >= 1, got {self.max_rows}")
        if self.max_tokens_per_row < 1:
            raise ValueError(
                f"ModelSpec {self.name!r}: max_tokens_per_row must be >= 1, "
                f"got {self.max_tokens_per_row}"
            )
        if self.default_dimension not in self.dimensions:
            raise ValueError(
                f"ModelSpec {self.name!r}: default_dimension {self.default_dimension} "
                f"is not one of dimensions {self.dimensions}"
            )
        if (self.kind == "multimodal") != (self.media is not None):
            raise ValueError(
                f"ModelSpec {self.name!r}: multimodal models (and only they) need media limits"
            )
        unknown = [t for t in self.output_types if t not in OUTPUT_TYPES]
        if unknown or not self.output_types:
            raise ValueError(
                f"ModelSpec {self.name!r}: output_types must be a non-empty subset of "
                f"{OUTPUT_TYPES}, got {self.output_types}"
            )

    @property
    def family(self) -> str:
        """The endpoint family that serves the model (the codec registry's key)."""
        return {"text": "text-embedding", "multimodal": "multimodal-embedding"}.get(
            self.kind, self.kind
        )

    @property
    def supports_sparse(self) -> bool:
        """Whether the model can return sparse (lexical) vectors."""
        return any(t != "dense" for t in self.output_types)

    @property
    def max_dimension(self) -> int:
        """The largest output size; Matryoshka prefixes of it give the smaller ones."""
        return max(self.dimensions)


_MRL_V4 = (2048, 1536, 1024, 768, 512, 256, 128, 64)
# The international pages list 1024/768/512 for v3; the China page and the Java SDK also
# list 256/128/64. The table allows all six so neither answer blocks a user.
_MRL_V3 = (1024, 768, 512, 256, 128, 64)
_ALL_OUTPUTS: tuple[OutputType, ...] = OUTPUT_TYPES

_BUILTIN: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="text-embedding-v4",
        max_rows=10,
        max_tokens_per_row=8192,
        dimensions=_MRL_V4,
        default_dimension=1024,
        supports_instruct=True,
        output_types=_ALL_OUTPUTS,
        openai_compatible=True,
        price_cny_per_1k_tokens=0.0005,
        notes="Qwen3-Embedding series; 100+ natural and programming languages.",
    ),
    ModelSpec(
        name="text-embedding-v3",
        max_rows=10,
        max_tokens_per_row=8192,
        dimensions=_MRL_V3,
        default_dimension=1024,
        output_types=_ALL_OUTPUTS,
        openai_compatible=True,
        price_cny_per_1k_tokens=0.0005,
        notes="50+ languages.",
    ),
    ModelSpec(
        name="text-embedding-v2",
        max_rows=25,
        max_tokens_per_row=2048,
        dimensions=(1536,),
        default_dimension=1536,
        configurable_dimension=False,
        price_cny_per_1k_tokens=0.0007,
        notes="Legacy; fixed 1536 dimensions.",
    ),
    ModelSpec(
        name="text-embedding-v1",
        max_rows=25,
        max_tokens_per_row=2048,
        dimensions=(1536,),
        default_dimension=1536,
        configurable_dimension=False,
        price_cny_per_1k_tokens=0.0007,
        notes="Legacy; fixed 1536 dimensions.",
    ),
    ModelSpec(
        name="qwen3.7-text-embedding",
        max_rows=20,
        max_tokens_per_row=128_000,
        dimensions=(2560, 2048, 1536, 1024, 768, 512, 256),
        default_dimension=1024,
        supports_instruct=True,
        output_types=_ALL_OUTPUTS,
        openai_compatible=True,
        price_cny_per_1k_tokens=0.0005,
        notes="201 languages; 128K tokens per text.",
    ),
    ModelSpec(
        name="qwen3.7-text-embedding-flash",
        max_rows=20,
        max_tokens_per_row=128_000,
        dimensions=(1024, 768, 512, 256),
        default_dimension=1024,
        supports_instruct=True,
        output_types=_ALL_OUTPUTS,
        openai_compatible=True,
        price_cny_per_1k_tokens=0.000125,
        notes="Cheaper qwen3.7 variant; 128K tokens per text.",
    ),
    ModelSpec(
        name="text-embedding-async-v2",
        max_rows=100_000,
        max_tokens_per_row=2048,
        dimensions=(1536,),
        default_dimension=1536,
        configurable_dimension=False,
        kind="async-batch",
        price_cny_per_1k_tokens=0.0007,
        notes="File-based batch tasks: up to 100,000 lines a task.",
    ),
    ModelSpec(
        name="text-embedding-async-v1",
        max_rows=100_000,
        max_tokens_per_row=2048,
        dimensions=(1536,),
        default_dimension=1536,
        configurable_dimension=False,
        kind="async-batch",
        price_cny_per_1k_tokens=0.0007,
        notes="File-based batch tasks: up to 100,000 lines a task.",
    ),
    ModelSpec(
        name="multimodal-embedding-v1",
        # Older pages allow one text, one image and one video per call, newer ones several
        # images; one content per request is correct under either reading.
        max_rows=1,
        max_tokens_per_row=512,
        dimensions=(1024,),
        default_dimension=1024,
        configurable_dimension=False,
        supports_text_type=False,
        kind="multimodal",
        price_cny_per_1k_tokens=0.0007,
        media=MediaLimits(
            image_bytes=3 * _MB,
            image_formats=IMAGE_FORMATS_V1,
            video_bytes=10 * _MB,
            video_formats=VIDEO_FORMATS_V1,
            parameters=frozenset({"fps"}),
            one_of_each_modality=True,
            truncates_text=True,
        ),
        notes="Text, image and video into one 1024-d space; images up to 3 MB.",
    ),
    ModelSpec(
        name="qwen3-vl-embedding",
        max_rows=20,
        max_tokens_per_row=32_000,
        dimensions=(2560, 2048, 1536, 1024, 768, 512, 256),
        default_dimension=2560,
        supports_text_type=False,
        supports_instruct=True,
        kind="multimodal",
        price_cny_per_1k_tokens=0.0007,
        media=MediaLimits(
            # Pages say 5 MB and (newer) 10 MB; the table allows 10, the service decides.
            image_bytes=10 * _MB,
            image_formats=IMAGE_FORMATS_VL,
            video_bytes=50 * _MB,
            video_formats=VIDEO_FORMATS_VL,
            fusion="parameter",
            parameters=frozenset({"fps"}),
        ),
        notes="Qwen3-VL: text, images and video in one space; up to 20 contents a request; "
        "enable_fusion makes one vector of a request's contents.",
    ),
    ModelSpec(
        name="qwen2.5-vl-embedding",
        # Every request is fused into one vector, with each modality at most once.
        max_rows=3,
        max_tokens_per_row=32_000,
        dimensions=(2048, 1024, 768, 512),
        default_dimension=1024,
        supports_text_type=False,
        kind="multimodal",
        media=MediaLimits(
            image_bytes=5 * _MB,
            image_formats=IMAGE_FORMATS_VL,
            video_bytes=50 * _MB,
            video_formats=VIDEO_FORMATS_VL,
            fusion="always",
            parameters=frozenset({"fps"}),
            one_of_each_modality=True,
        ),
        notes="Qwen2.5-VL: one fused vector per request.",
    ),
    *(
        ModelSpec(
            name=f"tongyi-embedding-vision-{size}",
            max_rows=8,
            max_tokens_per_row=1024,
            dimensions=dimensions,
            default_dimension=dimensions[0],
            supports_text_type=False,
            kind="multimodal",
            price_cny_per_1k_tokens=price,
            media=MediaLimits(
                image_bytes=3 * _MB,
                image_formats=IMAGE_FORMATS_VL,
                video_bytes=10 * _MB,
                video_formats=VIDEO_FORMATS_V1,
                parameters=frozenset({"fps"}),
            ),
            notes="Tongyi vision embedding: one vector per content; up to 8 a request.",
        )
        for size, dimensions, price in (
            ("plus", (1152, 1024, 512, 256, 128, 64), 0.0005),
            ("flash", (768, 512, 256, 128, 64), 0.00015),
        )
    ),
    *(
        ModelSpec(
            name=f"tongyi-embedding-vision-{size}-2026-03-06",
            max_rows=64,
            max_tokens_per_row=1024,
            dimensions=dimensions,
            default_dimension=dimensions[0],
            supports_text_type=False,
            kind="multimodal",
            media=MediaLimits(
                image_bytes=10 * _MB,
                image_formats=IMAGE_FORMATS_VL,
                video_bytes=50 * _MB,
                video_formats=VIDEO_FORMATS_VL,
                fusion="object",
                parameters=frozenset({"fps", "res_level", "max_video_frames"}),
            ),
            notes="Dated Tongyi vision snapshot: text, image and video in one content "
            "object give one fused vector; res_level and max_video_frames.",
        )
        for size, dimensions in (
            ("plus", (1152, 1024, 512, 256, 128, 64)),
            ("flash", (768, 512, 256, 128, 64)),
        )
    ),
)

# The open Qwen3-Embedding models, for self-hosted servers: any size from 32 up to the
# native one (Matryoshka), 32K tokens, instruction-aware queries, dense only.
_OPEN_EMBEDDING: tuple[ModelSpec, ...] = tuple(
    ModelSpec(
        name=f"Qwen/Qwen3-Embedding-{size}",
        max_rows=256,
        max_tokens_per_row=32_768,
        dimensions=tuple(range(32, native + 1)),
        default_dimension=native,
        supports_instruct=True,
        hosting="self-hosted",
        notes=f"Open Qwen3-Embedding {size} ({native} dims), on your own server.",
    )
    for size, native in (("0.6B", 1024), ("4B", 2560), ("8B", 4096))
)

MODELS: Mapping[str, ModelSpec] = MappingProxyType(
    {spec.name: spec for spec in _BUILTIN + _OPEN_EMBEDDING}
)
"""Every built-in model, by name. Read-only: pass a :class:`ModelSpec` for others."""

DEFAULT_MODEL = "text-embedding-v4"

RerankFamily = Literal["rerank-openai", "rerank-native", "rerank-self-hosted"]


@dataclass(frozen=True)
class RerankSpec:
    """Limits and capabilities of one rerank model.

    Attributes:
        name: The model id sent on the wire, e.g. ``"qwen3-rerank"``.
        family: Which endpoint serves it: ``"rerank-openai"``
            (``POST /compatible-api/v1/reranks``, flat body) or ``"rerank-native"``
            (``POST /api/v1/services/rerank/text-rerank/text-rerank``).
        max_documents: Most documents one request may carry.
        max_tokens_per_document: Most tokens one document (and the query) may have.
        max_tokens_per_request: Most tokens one request may bill: the query's tokens
            times the number of documents, plus every document's tokens.
        supports_instruct: Whether an ``instruct`` task instruction is accepted.
        modalities: What a document may be: ``"text"``, ``"image"``, ``"video"``.
        max_per_modality: Most documents of one modality a request may carry, where the
            model has such limits (qwen3-vl-rerank: 100 texts, 40 images, 4 videos).
        price_usd_per_1m_tokens: List price (international), ``None`` if unknown.
    """

    name: str
    family: RerankFamily
    max_documents: int
    max_tokens_per_document: int
    max_tokens_per_request: int
    supports_instruct: bool = False
    modalities: tuple[str, ...] = ("text",)
    max_per_modality: Mapping[str, int] = field(default_factory=dict, compare=False)
    price_usd_per_1m_tokens: float | None = None
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.family not in ("rerank-openai", "rerank-native", "rerank-self-hosted"):
            raise ValueError(f"RerankSpec {self.name!r}: unknown family {self.family!r}")
        for name in ("max_documents", "max_tokens_per_document", "max_tokens_per_request"):
            if getattr(self, name) < 1:
                raise ValueError(f"RerankSpec {self.name!r}: {name} must be >= 1")


_RERANK_BUILTIN: tuple[RerankSpec, ...] = (
    RerankSpec(
        name="qwen3-rerank",
        family="rerank-openai",
        max_documents=500,
        max_tokens_per_document=4000,
        max_tokens_per_request=120_000,
        supports_instruct=True,
        price_usd_per_1m_tokens=0.1,
        notes="Qwen3 reranker; 100+ languages.",
    ),
    RerankSpec(
        name="gte-rerank-v2",
        family="rerank-native",
        max_documents=500,
        max_tokens_per_document=4000,
        max_tokens_per_request=30_000,
        price_usd_per_1m_tokens=0.115,
        notes="GTE reranker (gte-rerank was retired on 2026-05-30).",
    ),
    RerankSpec(
        name="qwen3-vl-rerank",
        family="rerank-native",
        max_documents=100,
        max_tokens_per_document=8000,
        max_tokens_per_request=120_000,
        supports_instruct=True,
        modalities=("text", "image", "video"),
        max_per_modality=MappingProxyType({"text": 100, "image": 40, "video": 4}),
        price_usd_per_1m_tokens=0.1,
        notes="Texts, images and videos ranked for one query.",
    ),
)

_OPEN_RERANK: tuple[RerankSpec, ...] = tuple(
    RerankSpec(
        name=f"Qwen/Qwen3-Reranker-{size}",
        family="rerank-self-hosted",
        max_documents=1000,
        max_tokens_per_document=32_768,
        max_tokens_per_request=10_000_000,
        supports_instruct=True,
        notes=f"Open Qwen3-Reranker {size}, on your own server.",
    )
    for size in ("0.6B", "4B", "8B")
)

RERANK_MODELS: Mapping[str, RerankSpec] = MappingProxyType(
    {spec.name: spec for spec in _RERANK_BUILTIN + _OPEN_RERANK}
)
"""Every built-in rerank model, by name. Pass a :class:`RerankSpec` for others."""

DEFAULT_RERANK_MODEL = "qwen3-rerank"


def resolve_rerank_model(model: str | RerankSpec) -> RerankSpec:
    """Return the spec for a rerank ``model``: a known name or a :class:`RerankSpec`."""
    if isinstance(model, RerankSpec):
        return model
    spec = RERANK_MODELS.get(model)
    if spec is None:
        raise UnknownModelError(model, known=tuple(RERANK_MODELS), spec_class="RerankSpec")
    return spec


def resolve_model(model: str | ModelSpec) -> ModelSpec:
    """Return the spec for ``model``: a known name or a caller-supplied :class:`ModelSpec`.

    Raises:
        UnknownModelError: the name is not in the table; the message says how to
            describe the model's limits instead.
    """
    if isinstance(model, ModelSpec):
        return model
    spec = MODELS.get(model)
    if spec is None:
        raise UnknownModelError(model, known=tuple(MODELS))
    return spec


def self_hosted_model(served_name: str, *, like: str) -> ModelSpec | RerankSpec:
    """An open model your server serves under another name (``--served-model-name``):
    ``self_hosted_model("qwen3-embed", like="Qwen/Qwen3-Embedding-0.6B")``."""
    from dataclasses import replace

    if like in MODELS and MODELS[like].hosting == "self-hosted":
        return replace(MODELS[like], name=served_name)
    if like in RERANK_MODELS and RERANK_MODELS[like].family == "rerank-self-hosted":
        return replace(RERANK_MODELS[like], name=served_name)
    open_models = [n for n, m in MODELS.items() if m.hosting == "self-hosted"]
    open_models += [n for n, m in RERANK_MODELS.items() if m.family == "rerank-self-hosted"]
    raise UnknownModelError(like, known=tuple(open_models))
