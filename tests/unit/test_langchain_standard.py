"""LangChain's own standard unit suite for embeddings (network off)."""

from __future__ import annotations

from typing import Any

from langchain_ext import DashScopeEmbeddings
from tests.optional import require

EmbeddingsUnitTests: Any = require("langchain_tests.unit_tests").EmbeddingsUnitTests


class TestDashScopeEmbeddingsStandardUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[DashScopeEmbeddings]:
        return DashScopeEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": "text-embedding-v4", "dimension": 256, "api_key": "sk-test"}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return (
            {"DASHSCOPE_API_KEY": "sk-from-env", "DASHSCOPE_BASE_URL": "https://proxy.example.com"},
            {"model": "text-embedding-v3"},
            {"api_key": "sk-from-env", "base_url": "https://proxy.example.com"},
        )
