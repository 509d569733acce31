"""What a careless (or hurried) caller gets: a clear error at once, never a quiet surprise.

Misspelt settings, a dict or a set for a list, a bad region found only at the first
call, a key quoted back in a validation error, an object that cannot be deep-copied or
whose exceptions cannot cross a process boundary.
"""

from __future__ import annotations

import copy
import inspect
import pickle
from typing import Any

import pytest
from pydantic import ValidationError

import dashscope_embed
import dashscope_embed.jobs
import dashscope_embed.stream
from dashscope_embed import (
    ConfigurationError,
    DashScopeClient,
    DashScopeError,
    EmbeddingResult,
    InvalidInputError,
    Usage,
)
from dashscope_embed.errors import InputProblem
from dashscope_embed.stream import EmbeddingChunk
from dashscope_embed.types import PartialResult, RerankHit, RerankResult
from langchain_ext import DashScopeEmbeddings
from llama_index_ext import (
    DashScopeEmbedding,
    DashScopeMultiModalEmbedding,
    DashScopeSparseEmbedding,
)
from tests.leaks import secret_leaks

LONG_KEY = "sk-5f2a9c1e0b7d4a3c8e6f1a2b3c4d5e6f"
SHORT_KEY = "sk-abc"

FRAMEWORK_CLASSES = [
    DashScopeEmbedding,
    DashScopeSparseEmbedding,
    DashScopeMultiModalEmbedding,
    DashScopeEmbeddings,
]


# ----------------------------------------------------------------- the key in errors
@pytest.mark.parametrize("key", [LONG_KEY, SHORT_KEY])
@pytest.mark.parametrize(
    ("cls", "key_name"),
    [
        (DashScopeEmbedding, "api_key"),
        (DashScopeSparseEmbedding, "api_key"),
        (DashScopeEmbeddings, "api_key"),
        (DashScopeEmbeddings, "dashscope_api_key"),
    ],
)
def test_a_construction_error_never_quotes_the_key(cls: Any, key_name: str, key: str) -> None:
    with pytest.raises(ValidationError) as info:
        cls(**{key_name: key, "dimension": 333})
    assert "dimension" in str(info.value)
    assert secret_leaks(info.value, key) == []


@pytest.mark.parametrize(
    "bad", [{"region": "mars"}, {"base_url": "htps://x"}, {"workspace": "bad id!"}]
)
def test_a_core_client_settings_error_never_quotes_the_key(bad: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError) as info:
        DashScopeClient(api_key=LONG_KEY, **bad)
    assert secret_leaks(info.value, LONG_KEY) == []


def test_a_half_built_client_still_has_a_repr() -> None:
    # Traceback formatters repr every local, including a client whose __init__ failed.
    client = DashScopeClient.__new__(DashScopeClient)
    assert "not configured" in repr(client)


# ----------------------------------------------------------------- misspelt settings
@pytest.mark.parametrize("cls", FRAMEWORK_CLASSES)
@pytest.mark.parametrize(
    ("typo", "meant"),
    [("dimensions", "dimension"), ("max_concurency", "max_concurrency"), ("regoin", "region")],
)
def test_a_misspelt_setting_is_an_error_naming_the_real_one(
    cls: Any, typo: str, meant: str
) -> None:
    with pytest.raises(ValidationError) as info:
        cls(api_key=SHORT_KEY, **{typo: 512 if "dim" in typo else "x"})
    message = str(info.value)
    assert f"unknown setting {typo!r}" in message and f"did you mean {meant!r}" in message


def test_llama_index_round_trip_through_to_dict_still_works() -> None:
    model = DashScopeEmbedding(dimension=512, task="code_search")
    again = DashScopeEmbedding.from_dict(model.to_dict())
    assert again.dimension == 512 and again.task == "code_search"


# ----------------------------------------------------------------- settings checked early
@pytest.mark.parametrize("cls", FRAMEWORK_CLASSES)
@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ({"region": "mars"}, "unknown region"),
        ({"base_url": "htps://dashscope.aliyuncs.com"}, "must be an absolute http"),
        ({"base_url": "http://dashscope.example.com"}, "plain http"),
        ({"base_url": "http://evil.localhost:8000"}, "plain http"),
    ],
)
def test_connection_settings_are_checked_at_construction(
    cls: Any, setting: dict[str, str], complaint: str
) -> None:
    with pytest.raises(ValidationError, match=complaint):
        cls(api_key=SHORT_KEY, **setting)


def test_a_name_is_loopback_only_if_everything_it_resolves_to_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = {"localhost": {"127.0.0.1", "::1"}, "sneaky.localhost": {"127.0.0.1", "203.0.113.9"}}

    def resolve(host: str) -> set[str]:
        if host not in table:
            raise OSError(host)
        return table[host]

    monkeypatch.setattr("dashscope_embed.config.resolve_host", resolve)
    DashScopeClient(api_key=SHORT_KEY, base_url="http://localhost:8000")
    DashScopeClient(api_key=SHORT_KEY, base_url="http://[::1]:8000")
    for host in ("sneaky.localhost", "evil.localhost", "127.0.0.1.nip.io"):
        with pytest.raises(ConfigurationError, match="plain http"):
            DashScopeClient(api_key=SHORT_KEY, base_url=f"http://{host}:8000")


# ----------------------------------------------------------------- input shapes
@pytest.mark.parametrize(
    ("texts", "complaint"),
    [
        ({"doc-1": "text one", "doc-2": "text two"}, "keys would be used"),
        ({"text one", "text two"}, "no order"),
        (frozenset({"a"}), "no order"),
        ("just one text", "wrap it in a list"),
    ],
)
def test_a_dict_or_set_is_refused_before_anything_is_sent(texts: Any, complaint: str) -> None:
    client = DashScopeClient(api_key=SHORT_KEY, base_url="http://localhost:1")
    with pytest.raises(InvalidInputError, match=complaint):
        client.embed(texts)
    for model in (DashScopeEmbeddings(api_key=SHORT_KEY, base_url="http://localhost:1"),):
        with pytest.raises(InvalidInputError, match=complaint):
            model.embed_documents(texts)
    sparse = DashScopeSparseEmbedding(api_key=SHORT_KEY, base_url="http://localhost:1")
    with pytest.raises(InvalidInputError, match=complaint):
        sparse.get_text_embedding_batch(texts)


# ----------------------------------------------------------------- copies and pickles
@pytest.mark.parametrize("cls", FRAMEWORK_CLASSES)
def test_every_framework_class_deep_copies_into_an_independent_twin(cls: Any) -> None:
    model = cls(api_key=LONG_KEY, base_url="http://localhost:1", max_concurrency=3)
    model.client  # noqa: B018 - a live client (locks, pools) must not stop the copy
    twin = copy.deepcopy(model)
    assert twin.max_concurrency == 3 and twin.api_key.get_secret_value() == LONG_KEY
    assert twin.client is not model.client
    shallow = copy.copy(model)
    assert shallow.max_concurrency == 3


def _sample_result() -> EmbeddingResult:
    return EmbeddingResult([[0.1]], None, Usage(1), ("r",), "text-embedding-v4", 1, 1)


def _sample(cls: type[BaseException]) -> BaseException:
    """A realistic instance of each public exception class."""
    partial = PartialResult([[0.1], None], None, Usage(1), ("r",), "m", 1, [1])
    api_fields = {"status_code": 429, "code": "Throttling", "request_id": "rid"}
    samples: dict[str, Any] = {
        "MissingApiKeyError": lambda: cls(unpickled=True),  # type: ignore[call-arg]
        "InvalidInputError": lambda: cls([InputProblem(3, "empty text")]),
        "UnknownModelError": lambda: cls("no-such-model", ("text-embedding-v4",)),
        "PartialEmbeddingError": lambda: cls(partial, [1], [RuntimeError("x")]),
        "PartialRerankError": lambda: cls(
            RerankResult([RerankHit(0, 0.5, "a")], Usage(3), ("r",), "qwen3-rerank", 1),
            [1],
            [RuntimeError("x")],
        ),
        "EmbedStreamError": lambda: cls(
            10, RuntimeError("x"), [EmbeddingChunk(20, _sample_result())]
        ),
        "ConfigurationError": lambda: cls("bad setting"),
        "DashScopeError": lambda: cls("base"),
    }
    build = samples.get(cls.__name__)
    if build is not None:
        return build()  # type: ignore[no-any-return]
    return cls("the service said no", **api_fields)  # type: ignore[call-arg]


def _public_exceptions() -> list[type[BaseException]]:
    modules = [dashscope_embed, dashscope_embed.jobs, dashscope_embed.stream]
    found = {
        obj
        for module in modules
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, DashScopeError)
    }
    return sorted(found, key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", _public_exceptions(), ids=lambda c: c.__name__)
def test_every_public_exception_round_trips_through_pickle(cls: type[BaseException]) -> None:
    error = _sample(cls)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is cls and str(again) == str(error)
    assert vars(again).keys() == vars(error).keys()


def test_a_key_left_behind_by_a_pickle_is_explained_in_the_worker() -> None:
    model = DashScopeEmbedding(api_key=LONG_KEY, base_url="http://localhost:1")
    data = pickle.dumps(model)
    assert LONG_KEY.encode() not in data
    worker_copy = pickle.loads(data)
    with pytest.raises(dashscope_embed.MissingApiKeyError, match="never travel in pickles"):
        worker_copy.get_text_embedding("hello")
    client = pickle.loads(pickle.dumps(DashScopeClient(api_key=LONG_KEY)))
    with pytest.raises(dashscope_embed.MissingApiKeyError, match="DASHSCOPE_API_KEY in the"):
        client.embed(["hello"])
