"""LangChain's own standard integration suite for embeddings, against the emulator."""

from __future__ import annotations

from typing import Any

import pytest

from dashscope_embed.emulator import Emulator
from langchain_ext import DashScopeEmbeddings
from tests.optional import require

EmbeddingsIntegrationTests: Any = require(
    "langchain_tests.integration_tests"
).EmbeddingsIntegrationTests


@pytest.fixture(autouse=True)
def _emulator_env(dashscope_emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    # Configured the way users configure LangChain integrations: through the environment.
    monkeypatch.setenv("DASHSCOPE_API_KEY", dashscope_emulator.api_key)
    monkeypatch.setenv("DASHSCOPE_BASE_URL", dashscope_emulator.base_url)


class TestDashScopeEmbeddingsStandardIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[DashScopeEmbeddings]:
        return DashScopeEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": "text-embedding-v4", "dimension": 512, "task": "web_search"}
