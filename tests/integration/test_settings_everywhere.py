"""Every client setting works from both framework classes, with the same name and effect.

The settings are declared once (``ClientSettings``); the framework classes inherit them.
Each test sets one through a framework class and checks what it does, not only that it
was stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from dashscope_embed import RetryPolicy
from dashscope_embed.config import ClientSettings
from dashscope_embed.emulator import Emulator
from dashscope_embed.tokens import EstimatingTokenCounter
from langchain_ext import DashScopeEmbeddings
from llama_index_ext import DashScopeEmbedding


def _llama(emu: Emulator, **settings: Any) -> tuple[Any, Callable[[list[str]], Any]]:
    settings = {"api_key": emu.api_key, "base_url": emu.base_url, **settings}
    model = DashScopeEmbedding(**settings)
    return model, model.get_text_embedding_batch


def _langchain(emu: Emulator, **settings: Any) -> tuple[Any, Callable[[list[str]], Any]]:
    settings = {"api_key": emu.api_key, "base_url": emu.base_url, **settings}
    model = DashScopeEmbeddings(**settings)
    return model, model.embed_documents


FRAMEWORKS = {"llama_index": _llama, "langchain": _langchain}
Make = Callable[..., tuple[Any, Callable[[list[str]], Any]]]


@pytest.fixture(params=list(FRAMEWORKS))
def make(request: pytest.FixtureRequest, dashscope_emulator: Emulator) -> Make:
    build = FRAMEWORKS[request.param]
    return lambda **settings: build(dashscope_emulator, **settings)


def texts(n: int, tag: str = "") -> list[str]:
    return [f"{tag} setting check {i}" for i in range(n)]


def test_every_client_setting_is_a_field_of_both_framework_classes() -> None:
    for cls in (DashScopeEmbedding, DashScopeEmbeddings):
        missing = set(ClientSettings.model_fields) - set(cls.model_fields)
        assert not missing, f"{cls.__name__} lacks {sorted(missing)}"
        for name, field in ClientSettings.model_fields.items():
            assert cls.model_fields[name].metadata == field.metadata, (cls.__name__, name)


def test_requests_per_minute_paces_to_a_told_quota(
    make: Make, dashscope_emulator: Emulator
) -> None:
    dashscope_emulator.configure(rpm=240)  # 4 a second
    _, embed = make(requests_per_minute=240, adaptive_concurrency=False)
    started = time.monotonic()
    embed(texts(80, "rpm"))  # 8 requests: a burst would be refused
    # Spread at 97 % of the quota: 7 intervals of ~0.26 s. (At most one refusal: the
    # service's window is a rolling second, and 3 % of a second is little slack for
    # a busy machine's scheduling.)
    assert time.monotonic() - started >= 1.7
    assert dashscope_emulator.stats()["throttled"] <= 1


def test_tokens_per_minute_paces_to_a_told_quota(make: Make, dashscope_emulator: Emulator) -> None:
    dashscope_emulator.configure(tpm=3000)  # 50 tokens a second
    model, embed = make(tokens_per_minute=3000, adaptive_concurrency=False)
    started = time.monotonic()
    embed(texts(40, "tpm"))  # about 300 tokens: refused if sent at once
    assert time.monotonic() - started >= 1.5
    assert dashscope_emulator.stats()["throttled"] <= 1
    assert model.client.budget.tokens_per_minute == 3000


def test_adaptive_concurrency_off_keeps_the_limit(make: Make, dashscope_emulator: Emulator) -> None:
    dashscope_emulator.configure(max_concurrency=2, latency=0.05, throttle_retry_after=0.05)
    model, embed = make(max_concurrency=6, adaptive_concurrency=False, retry=RetryPolicy(
        max_retries=10, initial_delay=0.01, max_delay=0.05
    ))  # fmt: skip
    embed(texts(60, "adaptive"))
    assert model.client.gate.limit == 6 and model.client.gate.throttle_cuts == 0
    adaptive, embed_adaptive = make(max_concurrency=6)
    embed_adaptive(texts(60, "adaptive on"))
    assert adaptive.client.gate.throttle_cuts >= 1


def test_retry_policy_decides_the_resends(make: Make, dashscope_emulator: Emulator) -> None:
    dashscope_emulator.configure(error_rate=1.0)
    _, embed = make(retry=RetryPolicy(max_retries=0), max_concurrency=1)
    with pytest.raises(Exception, match="500"):
        embed(texts(10, "retry"))
    assert dashscope_emulator.stats()["requests"] == 1


def test_connect_timeout_reaches_the_transport(make: Make) -> None:
    model, _ = make(connect_timeout=0.5, timeout=7)
    timeout = model.client._transport._timeout()
    assert timeout.connect == 0.5 and timeout.read == 7


def test_allow_insecure_http_is_the_opt_in_for_a_remote_plain_host(make: Make) -> None:
    with pytest.raises(ValidationError, match="plain http"):
        make(base_url="http://dashscope.example.com")
    model, _ = make(base_url="http://dashscope.example.com", allow_insecure_http=True)
    assert model.client.settings.root_url == "http://dashscope.example.com"


def test_token_counter_is_the_one_used_for_long_texts(make: Make) -> None:
    class Counting(EstimatingTokenCounter):
        calls = 0

        def count(self, text: str) -> int:
            Counting.calls += 1
            return super().count(text)

    _, embed = make(token_counter=Counting(), long_text="truncate")
    embed(["word " * 5000])  # long enough that its tokens must be counted
    assert Counting.calls > 0
