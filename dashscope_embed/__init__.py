"""DashScope (Alibaba Cloud Model Studio) embeddings: one core for LlamaIndex and LangChain.

The core imports no framework. Start with :class:`DashScopeClient`; the local service
emulator lives in :mod:`dashscope_embed.emulator` (``pip install dashscope-embed[emulator]``).
"""

from __future__ import annotations

__version__ = "0.1.0"

from dashscope_embed.client import DashScopeClient, make_config
from dashscope_embed.config import REGION_HOSTS, ClientConfig, ClientSettings
from dashscope_embed.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BadResponseError,
    ConfigurationError,
    ContentFilterError,
    DashScopeError,
    InvalidInputError,
    MissingApiKeyError,
    NotFoundError,
    PartialEmbeddingError,
    PartialRerankError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    UnknownModelError,
    is_retryable,
)
from dashscope_embed.limits import RateBudget
from dashscope_embed.models import (
    DEFAULT_MODEL,
    DEFAULT_RERANK_MODEL,
    MODELS,
    RERANK_MODELS,
    ModelSpec,
    RerankSpec,
    resolve_model,
    resolve_rerank_model,
    self_hosted_model,
)
from dashscope_embed.multimodal import Content, Fused
from dashscope_embed.options import MultimodalEmbeddingOptions, RerankOptions, TextEmbeddingOptions
from dashscope_embed.retry import RetryPolicy
from dashscope_embed.stream import EmbeddingChunk, EmbedStreamError
from dashscope_embed.types import (
    EmbeddingResult,
    PartialResult,
    RerankHit,
    RerankResult,
    SparseEmbedding,
    Usage,
)

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_RERANK_MODEL",
    "MODELS",
    "REGION_HOSTS",
    "RERANK_MODELS",
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BadResponseError",
    "ClientConfig",
    "ClientSettings",
    "ConfigurationError",
    "Content",
    "ContentFilterError",
    "DashScopeClient",
    "DashScopeError",
    "EmbedStreamError",
    "EmbeddingChunk",
    "EmbeddingResult",
    "Fused",
    "InvalidInputError",
    "MissingApiKeyError",
    "ModelSpec",
    "MultimodalEmbeddingOptions",
    "NotFoundError",
    "PartialEmbeddingError",
    "PartialRerankError",
    "PartialResult",
    "PermissionDeniedError",
    "RateBudget",
    "RateLimitError",
    "RerankHit",
    "RerankOptions",
    "RerankResult",
    "RerankSpec",
    "RetryPolicy",
    "ServerError",
    "SparseEmbedding",
    "TextEmbeddingOptions",
    "UnknownModelError",
    "Usage",
    "__version__",
    "is_retryable",
    "make_config",
    "resolve_model",
    "resolve_rerank_model",
    "self_hosted_model",
]
