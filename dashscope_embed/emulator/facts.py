"""What the service is, as the emulator states it: models, limits and parameters.

Written from the project's API notes (``shared/dashscope-api.md``), never imported
from the client's model table: a wrong number in the client's table must be caught by
the emulator refusing a request, not confirmed by the same number in both places. A test
compares the two tables and names every difference.

Where the service's pages disagree, the emulator takes one reading and says which in
``source``; the client is built so that either reading works.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class ServiceModel:
    """One model as the service serves it."""

    name: str
    kind: str  # "text", "async-batch", "multimodal"
    max_rows: int  # texts (or contents) per request; lines per task for async-batch
    max_tokens_per_row: int
    dimensions: tuple[int, ...]
    default_dimension: int
    configurable_dimension: bool = True  # False: a dimension parameter is ignored
    sparse: bool = False  # takes output_type sparse / dense&sparse
    instruct: bool = False
    openai_compatible: bool = False  # served by /compatible-mode/v1/embeddings
    bills_end_of_text: bool = False  # usage counts one more token per text
    one_of_each_modality: bool = False  # at most one text, one image, one video a request
    max_image_bytes: int = 3 * 1024 * 1024
    image_formats: tuple[str, ...] = ("jpeg", "png", "bmp")
    max_video_bytes: int = 10 * 1024 * 1024
    video_formats: tuple[str, ...] = ("mp4", "mpeg", "mpg", "webm", "avi", "flv", "mkv", "mov")
    # "parameter": enable_fusion fuses a request's contents; "object": text, image and
    # video in one content object give one vector; "always": one vector per request.
    fusion: str = "none"
    snapshot_parameters: bool = False  # res_level, max_video_frames
    truncates_text: bool = False
    source: str = ""

    @property
    def max_dimension(self) -> int:
        return max(self.dimensions)

    @property
    def supports_sparse(self) -> bool:
        return self.sparse


OUTPUT_TYPES = ("dense", "sparse", "dense&sparse")
_MB = 1024 * 1024
_VL_IMAGES = ("jpeg", "png", "webp", "bmp", "tiff", "ico", "dib", "icns", "sgi")

_SERVICE_MODELS = (
    ServiceModel(
        "text-embedding-v4",
        "text",
        max_rows=10,
        max_tokens_per_row=8192,
        dimensions=(2048, 1536, 1024, 768, 512, 256, 128, 64),
        default_dimension=1024,
        sparse=True,
        instruct=True,
        openai_compatible=True,
        bills_end_of_text=True,
        source="§2.3; +1 token per row per §9",
    ),
    ServiceModel(
        "text-embedding-v3",
        "text",
        max_rows=10,
        max_tokens_per_row=8192,
        # The international pages (2025-Oct 2026) list three sizes; the China page and
        # the Java SDK also list 256, 128 and 64. The emulator takes the strict reading.
        dimensions=(1024, 768, 512),
        default_dimension=1024,
        sparse=True,
        openai_compatible=True,
        bills_end_of_text=True,
        source="§2.3 (international pages)",
    ),
    ServiceModel(
        "text-embedding-v2",
        "text",
        max_rows=25,
        max_tokens_per_row=2048,
        dimensions=(1536,),
        default_dimension=1536,
        configurable_dimension=False,
        source="§2.3",
    ),
    ServiceModel(
        "text-embedding-v1",
        "text",
        max_rows=25,
        max_tokens_per_row=2048,
        dimensions=(1536,),
        default_dimension=1536,
        configurable_dimension=False,
        source="§2.3",
    ),
    ServiceModel(
        "qwen3.7-text-embedding",
        "text",
        max_rows=20,
        max_tokens_per_row=128_000,
        dimensions=(2560, 2048, 1536, 1024, 768, 512, 256),
        default_dimension=1024,
        sparse=True,
        instruct=True,
        openai_compatible=True,
        bills_end_of_text=True,
        source="§2.3 (newest pages)",
    ),
    ServiceModel(
        "qwen3.7-text-embedding-flash",
        "text",
        max_rows=20,
        max_tokens_per_row=128_000,
        dimensions=(1024, 768, 512, 256),
        default_dimension=1024,
        sparse=True,
        instruct=True,
        openai_compatible=True,
        bills_end_of_text=True,
        source="§2.3 (newest pages)",
    ),
    ServiceModel(
        "text-embedding-async-v2",
        "async-batch",
        max_rows=100_000,
        max_tokens_per_row=2048,
        dimensions=(1536,),
        default_dimension=1536,
        configurable_dimension=False,
        source="§4.1",
    ),
    ServiceModel(
        "text-embedding-async-v1",
        "async-batch",
        max_rows=100_000,
        max_tokens_per_row=2048,
        dimensions=(1536,),
        default_dimension=1536,
        configurable_dimension=False,
        source="§4.1",
    ),
    ServiceModel(
        "multimodal-embedding-v1",
        "multimodal",
        # Older page: at most one text, one image and one video per call.
        max_rows=3,
        max_tokens_per_row=512,
        dimensions=(1024,),
        default_dimension=1024,
        configurable_dimension=False,
        one_of_each_modality=True,
        truncates_text=True,
        source="§6.2 (older page: one of each modality per call)",
    ),
    ServiceModel(
        "qwen3-vl-embedding",
        "multimodal",
        max_rows=20,
        max_tokens_per_row=32_000,
        dimensions=(2560, 2048, 1536, 1024, 768, 512, 256),
        default_dimension=2560,
        instruct=True,
        max_image_bytes=10 * _MB,  # the newer page; an older one says 5 MB
        image_formats=_VL_IMAGES,
        max_video_bytes=50 * _MB,
        video_formats=("mp4", "avi", "mov"),
        fusion="parameter",
        source="§6.1-6.2",
    ),
    ServiceModel(
        "qwen2.5-vl-embedding",
        "multimodal",
        max_rows=3,  # fusion only, each modality at most once per request
        max_tokens_per_row=32_000,  # unstated; qwen3-vl-embedding's
        dimensions=(2048, 1024, 768, 512),
        default_dimension=1024,
        one_of_each_modality=True,
        max_image_bytes=5 * _MB,
        image_formats=_VL_IMAGES,  # unstated; qwen3-vl-embedding's
        max_video_bytes=50 * _MB,
        video_formats=("mp4", "avi", "mov"),
        fusion="always",
        source="§6.2",
    ),
    *(
        ServiceModel(
            f"tongyi-embedding-vision-{size}",
            "multimodal",
            max_rows=8,  # "up to 8 images"
            max_tokens_per_row=1024,
            dimensions=dimensions,
            default_dimension=dimensions[0],
            image_formats=_VL_IMAGES,  # unstated; qwen3-vl-embedding's
            source="§6.2 (independent vectors only)",
        )
        for size, dimensions in (
            ("plus", (1152, 1024, 512, 256, 128, 64)),
            ("flash", (768, 512, 256, 128, 64)),
        )
    ),
    *(
        ServiceModel(
            f"tongyi-embedding-vision-{size}-2026-03-06",
            "multimodal",
            max_rows=64,  # "up to 64 images"
            max_tokens_per_row=1024,
            dimensions=dimensions,
            default_dimension=dimensions[0],
            max_image_bytes=10 * _MB,
            image_formats=_VL_IMAGES,
            max_video_bytes=50 * _MB,
            video_formats=("mp4", "avi", "mov"),
            fusion="object",
            snapshot_parameters=True,
            source="§6.2 (the flash snapshot's sizes: the flash model's)",
        )
        for size, dimensions in (
            ("plus", (1152, 1024, 512, 256, 128, 64)),
            ("flash", (768, 512, 256, 128, 64)),
        )
    ),
)

SERVICE_MODELS: Mapping[str, ServiceModel] = MappingProxyType(
    {model.name: model for model in _SERVICE_MODELS}
)
"""Every model the emulator serves, by name."""


@dataclass(frozen=True)
class ServiceRerankModel:
    """One rerank model as the service serves it."""

    name: str
    endpoint: str  # "openai" (/compatible-api/v1/reranks) or "native"
    max_documents: int
    max_tokens_per_document: int
    max_tokens_per_request: int
    instruct: bool = False
    max_per_modality: tuple[tuple[str, int], ...] = (("text", 500),)
    source: str = ""


SERVICE_RERANK_MODELS: Mapping[str, ServiceRerankModel] = MappingProxyType(
    {
        model.name: model
        for model in (
            ServiceRerankModel(
                "qwen3-rerank", "openai", 500, 4000, 120_000, instruct=True, source="§12.1"
            ),
            ServiceRerankModel("gte-rerank-v2", "native", 500, 4000, 30_000, source="§12.1"),
            ServiceRerankModel(
                "qwen3-vl-rerank",
                "native",
                100,
                8000,
                120_000,
                instruct=True,
                max_per_modality=(("text", 100), ("image", 40), ("video", 4)),
                source="§12.1",
            ),
        )
    }
)
"""Every rerank model the emulator serves (gte-rerank is retired: 'Model not exist')."""


@dataclass(frozen=True)
class OpenModel:
    """An open Qwen3 model as a self-hosted server serves it (§10, §12.3)."""

    name: str
    kind: str  # "embedding" or "reranker"
    native_dimension: int = 0  # embedding models
    min_dimension: int = 32  # Matryoshka: any size from here to the native one
    max_tokens: int = 32_768  # the context a server is started with (max_model_len)


OPEN_MODELS: Mapping[str, OpenModel] = MappingProxyType(
    {
        model.name: model
        for model in (
            OpenModel("Qwen/Qwen3-Embedding-0.6B", "embedding", 1024),
            OpenModel("Qwen/Qwen3-Embedding-4B", "embedding", 2560),
            OpenModel("Qwen/Qwen3-Embedding-8B", "embedding", 4096),
            OpenModel("Qwen/Qwen3-Reranker-0.6B", "reranker"),
            OpenModel("Qwen/Qwen3-Reranker-4B", "reranker"),
            OpenModel("Qwen/Qwen3-Reranker-8B", "reranker"),
        )
    }
)
"""The open models the emulator's self-hosted mode serves, by their Hugging Face names."""

SELF_HOSTED_KINDS = ("vllm", "sglang", "tei", "ollama", "infinity")
TEI_MAX_BATCH = 32  # TEI's default --max-client-batch-size
