from __future__ import annotations

import json
import pickle

import pytest

from dashscope_embed import ConfigurationError, DashScopeClient, MissingApiKeyError, make_config

SECRET = "sk-do-not-leak-0123456789"


@pytest.mark.parametrize(
    ("given", "root"),
    [
        ("https://dashscope.aliyuncs.com", "https://dashscope.aliyuncs.com"),
        ("https://dashscope.aliyuncs.com/", "https://dashscope.aliyuncs.com"),
        ("https://dashscope.aliyuncs.com/api/v1", "https://dashscope.aliyuncs.com"),
        ("https://dashscope.aliyuncs.com/api/v1/", "https://dashscope.aliyuncs.com"),
        (
            "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
            "https://dashscope-intl.aliyuncs.com",
        ),
        ("https://proxy.example.com/dashscope/api/v1", "https://proxy.example.com/dashscope"),
        ("http://127.0.0.1:8000/compatible-mode/v1", "http://127.0.0.1:8000"),
        ("http://[::1]:9000", "http://[::1]:9000"),
    ],
)
def test_base_url_accepts_root_or_either_documented_base(given: str, root: str) -> None:
    config = make_config(base_url=given)
    assert config.root_url == root
    assert config.native_base_url == root + "/api/v1"
    assert config.compatible_base_url == root + "/compatible-mode/v1"


@pytest.mark.parametrize(
    ("given", "protocol", "native", "compatible"),
    [
        # A base naming its API version is used as given, for every API: an
        # OpenAI-compatible proxy, a gateway, a self-hosted server.
        ("http://localhost:8000/v1", "openai-compatible", "", ""),
        ("https://gateway.example.com/llm/v1/", "openai-compatible", "", ""),
        ("https://gateway.example.com/ds/v2", "native", "", ""),
    ],
)
def test_a_base_url_ending_in_a_version_is_used_as_given(
    given: str, protocol: str, native: str, compatible: str
) -> None:
    config = make_config(base_url=given, protocol=protocol)
    assert config.versioned_base
    assert config.native_base_url == config.compatible_base_url == given.rstrip("/")


def test_the_workspace_gateway_is_chosen_by_setting() -> None:
    config = make_config(workspace="llm-ab12", workspace_gateway=True, region="singapore")
    assert config.native_base_url == "https://llm-ab12.ap-southeast-1.maas.aliyuncs.com/api/v1"
    assert config.api_base("compatible-api").endswith(".maas.aliyuncs.com/compatible-api/v1")
    with pytest.raises(ConfigurationError, match="needs workspace"):
        make_config(workspace_gateway=True)
    with pytest.raises(ConfigurationError, match="has no workspace gateway"):
        make_config(workspace="llm-ab12", workspace_gateway=True, region="cn-finance")
    with pytest.raises(ConfigurationError, match="do not also pass base_url"):
        make_config(workspace="w", workspace_gateway=True, base_url="https://x.example.com")


@pytest.mark.parametrize(
    "bad", ["dashscope.aliyuncs.com", "ftp://host/api/v1", "https://h/api/v1?x=1"]
)
def test_bad_base_url_is_a_clear_configuration_error(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="base_url"):
        make_config(base_url=bad)


@pytest.mark.parametrize(
    ("region", "host"),
    [
        ("cn-beijing", "https://dashscope.aliyuncs.com"),
        ("ap-southeast-1", "https://dashscope-intl.aliyuncs.com"),
        ("singapore", "https://dashscope-intl.aliyuncs.com"),
        ("cn-hongkong", "https://cn-hongkong.dashscope.aliyuncs.com"),
        ("us-east-1", "https://dashscope-intl.aliyuncs.com"),
        ("CN-Beijing", "https://dashscope.aliyuncs.com"),
    ],
)
def test_region_selects_documented_host(region: str, host: str) -> None:
    assert make_config(region=region).root_url == host


def test_default_region_is_beijing_and_unknown_region_is_refused() -> None:
    assert make_config().native_base_url == "https://dashscope.aliyuncs.com/api/v1"
    with pytest.raises(ConfigurationError, match="unknown region 'mars-1'"):
        make_config(region="mars-1")


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", SECRET)
    monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", "https://gw.example.com/api/v1")
    monkeypatch.setenv("DASHSCOPE_WORKSPACE_ID", "llm-ws1")
    config = make_config()
    assert config.resolve_api_key() == SECRET
    assert config.root_url == "https://gw.example.com"
    assert config.workspace == "llm-ws1"
    # DASHSCOPE_BASE_URL (v2 SDK) wins over the 1.x name.
    monkeypatch.setenv("DASHSCOPE_BASE_URL", "https://other.example.com")
    assert make_config().root_url == "https://other.example.com"
    monkeypatch.setenv("DASHSCOPE_REGION", "singapore")
    monkeypatch.delenv("DASHSCOPE_BASE_URL")
    monkeypatch.delenv("DASHSCOPE_HTTP_BASE_URL")
    assert make_config().region == "ap-southeast-1"


def test_plain_http_to_a_remote_host_is_refused_unless_opted_in() -> None:
    with pytest.raises(ConfigurationError, match="clear text"):
        make_config(base_url="http://dashscope.example.com")
    assert make_config(base_url="http://dashscope.example.com", allow_insecure_http=True)
    for loopback in ("http://localhost:1", "http://127.0.0.5:1", "http://[::1]:1"):
        assert make_config(base_url=loopback)


def test_workspace_id_is_validated() -> None:
    assert make_config(workspace="llm-abc_123").workspace == "llm-abc_123"
    with pytest.raises(ConfigurationError, match="workspace"):
        make_config(workspace="bad.host/../x")


def test_missing_key_fails_at_first_use_with_instructions() -> None:
    client = DashScopeClient()  # constructing without a key is fine
    with pytest.raises(MissingApiKeyError, match="DASHSCOPE_API_KEY"):
        client.embed(["hello"])


def test_key_is_absent_from_every_rendering(monkeypatch: pytest.MonkeyPatch) -> None:
    client = DashScopeClient(api_key=SECRET, workspace="ws-1")
    config = client.config
    renderings = [
        repr(client),
        str(client),
        repr(config),
        str(config),
        json.dumps(config.model_dump()),
        config.model_dump_json(),
        pickle.dumps(client).decode("latin-1"),
        pickle.dumps(config).decode("latin-1"),
    ]
    for text in renderings:
        assert SECRET not in text
    assert "api_key" not in config.model_dump()


def test_unpickled_client_uses_the_workers_own_key(monkeypatch: pytest.MonkeyPatch) -> None:
    client = DashScopeClient(api_key=SECRET, region="singapore", max_concurrency=3)
    clone = pickle.loads(pickle.dumps(client))
    assert clone.config.region == "ap-southeast-1"
    assert clone.max_concurrency == 3
    with pytest.raises(MissingApiKeyError):
        clone.config.resolve_api_key()
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-worker")
    assert clone.config.resolve_api_key() == "sk-worker"


def test_blank_key_counts_as_missing() -> None:
    with pytest.raises(MissingApiKeyError):
        make_config(api_key="  ").resolve_api_key()


def test_settings_from_the_environment_are_validated_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASHSCOPE_BASE_URL", "http://remote.example.com/api/v1")
    with pytest.raises(ConfigurationError, match="clear text"):
        make_config()
    monkeypatch.delenv("DASHSCOPE_BASE_URL")
    monkeypatch.setenv("DASHSCOPE_REGION", "nowhere")
    with pytest.raises(ConfigurationError, match="unknown region"):
        make_config()
