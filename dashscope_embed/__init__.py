"""DashScope (Alibaba Cloud Model Studio) embeddings: one core for LlamaIndex and LangChain.

The core imports no framework. Start with :class:`DashScopeClient`; the local service
emulator lives in :mod:`dashscope_embed.emulator` (``pip install dashscope-embed[emulator]``).
"""

from __future__ import annotations

__version__ = "0.1.0"

from dashscope_embed.client import DashScopeClient, make_config
from dashscope_embed.config import REGION_HOSTS, ClientConfig
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
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    UnknownModelError,
    is_retryable,
)
from dashscope_embed.limits import RateBudget
from dashscope_embed.models import DEFAULT_MODEL, MODELS, ModelSpec, resolve_model
from dashscope_embed.retry import RetryPolicy
from dashscope_embed.stream import EmbeddingChunk, EmbedStreamError
from dashscope_embed.types import EmbeddingResult, PartialResult, SparseEmbedding, Usage

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "REGION_HOSTS",
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BadResponseError",
    "ClientConfig",
    "ConfigurationError",
    "ContentFilterError",
    "DashScopeClient",
    "DashScopeError",
    "EmbedStreamError",
    "EmbeddingChunk",
    "EmbeddingResult",
    "InvalidInputError",
    "MissingApiKeyError",
    "ModelSpec",
    "NotFoundError",
    "PartialEmbeddingError",
    "PartialResult",
    "PermissionDeniedError",
    "RateBudget",
    "RateLimitError",
    "RetryPolicy",
    "ServerError",
    "SparseEmbedding",
    "UnknownModelError",
    "Usage",
    "__version__",
    "is_retryable",
    "make_config",
    "resolve_model",
]
