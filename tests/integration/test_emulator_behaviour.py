"""The emulator's validation, faults, limits and stats, driven with raw HTTP."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from typing import Any

import httpx
import numpy as np
import pytest

from dashscope_embed import DashScopeClient
from dashscope_embed.emulator import Emulator
from dashscope_embed.emulator.server import free_port

EMBED = "/api/v1/services/embeddings/text-embedding/text-embedding"
COMPAT = "/compatible-mode/v1/embeddings"


def post(
    emu: Emulator,
    path: str,
    body: Any,
    key: str | None = "default",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    all_headers = dict(headers or {})
    if key is not None:
        all_headers["Authorization"] = f"Bearer {emu.api_key if key == 'default' else key}"
    if isinstance(body, bytes):
        return httpx.post(emu.base_url + path, content=body, headers=all_headers, timeout=30)
    return httpx.post(emu.base_url + path, json=body, headers=all_headers, timeout=30)


def native(texts: Any, model: str = "text-embedding-v4", **parameters: Any) -> dict[str, Any]:
    return {"model": model, "input": {"texts": texts}, "parameters": parameters}


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (None, "No API-key provided."),
        ("not-a-dashscope-key", "Invalid API-key provided."),
        ("sk-someone-elses", "Invalid API-key provided."),
    ],
)
def test_native_auth_errors(dashscope_emulator: Emulator, key: str | None, message: str) -> None:
    response = post(dashscope_emulator, EMBED, native(["x"]), key=key)
    assert response.status_code == 401
    body = response.json()
    assert body["code"] == "InvalidApiKey" and body["message"] == message
    assert body["request_id"] == response.headers["x-request-id"]


def test_compatible_auth_error_has_openai_shape(dashscope_emulator: Emulator) -> None:
    response = post(
        dashscope_emulator, COMPAT, {"model": "text-embedding-v4", "input": "x"}, key="sk-wrong"
    )
    assert response.status_code == 401
    body = response.json()
    assert body["error"]["code"] == "invalid_api_key"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["id"] == body["request_id"]


def test_any_sk_key_works_when_none_was_configured() -> None:
    with Emulator(api_key=None) as emu:
        assert post(emu, EMBED, native(["x"]), key="sk-anything").status_code == 200
        assert post(emu, EMBED, native(["x"]), key="anything").status_code == 401


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (
            native(["x"] * 11),
            "batch size is invalid, it should not be larger than 10.: input.contents",
        ),
        (
            native(["x"] * 26, model="text-embedding-v2"),
            "it should not be larger than 25.: payload.input.contents",
        ),
        (native([]), "Input should not be empty"),
        (native(["ok", "  "]), "The content is empty, please check your input.: input.contents[1]"),
        (native(["word " * 8200]), "Range of input length should be [1, 8192]"),
        (native(["x"], dimension=100), "Dimension should be one of [2048, 1536"),
        (
            native(["x"], model="text-embedding-v3", dimension=2048),
            "Dimension should be one of [1024",
        ),
        (native(["x"], output_type="both"), "output_type should be one of"),
        (native(["x"], text_type="passage"), "text_type should be one of"),
        (native(["x"], model="text-embedding-v0"), "Model not exist."),
        (b"{not json", "not valid JSON"),
        ({"model": "text-embedding-v4", "input": {}}, "input.texts"),
    ],
)
def test_native_validation_matches_the_service(
    dashscope_emulator: Emulator, body: Any, fragment: str
) -> None:
    response = post(dashscope_emulator, EMBED, body)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "InvalidParameter"
    assert fragment in response.json()["message"]


def test_legacy_models_ignore_dimension_and_output_type(dashscope_emulator: Emulator) -> None:
    response = post(
        dashscope_emulator,
        EMBED,
        native(["x"], model="text-embedding-v1", dimension=512, output_type="sparse"),
    )
    assert response.status_code == 200
    row = response.json()["output"]["embeddings"][0]
    assert len(row["embedding"]) == 1536 and "sparse_embedding" not in row


def test_async_models_refuse_synchronous_calls(dashscope_emulator: Emulator) -> None:
    response = post(dashscope_emulator, EMBED, native(["x"], model="text-embedding-async-v2"))
    assert response.status_code == 403
    assert "does not support synchronous calls" in response.json()["message"]


def test_compatible_validation_wording(dashscope_emulator: Emulator) -> None:
    response = post(dashscope_emulator, COMPAT, {"model": "text-embedding-v4", "input": ["x"] * 11})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"] == (
        "<400> InternalError.Algo.InvalidParameter: Value error, batch "
        "size is invalid, it should not be larger than 10.: input.contents"
    )
    assert error["code"] == "InvalidParameter"
    tokens = post(dashscope_emulator, COMPAT, {"model": "text-embedding-v4", "input": [[1, 2, 3]]})
    assert tokens.status_code == 400 and "neither str nor list of str" in tokens.text
    missing = post(dashscope_emulator, COMPAT, {"model": "nope", "input": "x"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_compatible_base64_is_little_endian_float32(dashscope_emulator: Emulator) -> None:
    body = {"model": "text-embedding-v4", "input": ["base64 please"], "dimensions": 64}
    as_float = post(dashscope_emulator, COMPAT, {**body, "encoding_format": "float"}).json()
    as_b64 = post(dashscope_emulator, COMPAT, {**body, "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(as_b64["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, as_float["data"][0]["embedding"], atol=1e-7)
    assert as_float["usage"]["prompt_tokens"] == as_float["usage"]["total_tokens"] > 0
    assert as_float["object"] == "list" and as_float["data"][0]["object"] == "embedding"


def test_usage_counts_tokens_consistently(dashscope_emulator: Emulator) -> None:
    one = post(dashscope_emulator, EMBED, native(["alpha beta"])).json()["usage"]["total_tokens"]
    two = post(dashscope_emulator, EMBED, native(["gamma delta"])).json()["usage"]["total_tokens"]
    both = post(dashscope_emulator, EMBED, native(["alpha beta", "gamma delta"])).json()["usage"][
        "total_tokens"
    ]
    assert both == one + two and one == 3  # two words + the end-of-text token v4 bills
    v2 = post(dashscope_emulator, EMBED, native(["alpha beta"], model="text-embedding-v2"))
    assert v2.json()["usage"]["total_tokens"] == 2


def test_sparse_entries_have_index_value_token(dashscope_emulator: Emulator) -> None:
    rows = post(dashscope_emulator, EMBED, native(["wind and sorrow wind"], output_type="sparse"))
    row = rows.json()["output"]["embeddings"][0]
    assert "embedding" not in row
    entries = {e["token"]: e for e in row["sparse_embedding"]}
    assert set(entries) == {"wind", "and", "sorrow"}
    assert entries["wind"]["value"] > entries["sorrow"]["value"] > entries["and"]["value"]
    assert all(isinstance(e["index"], int) for e in entries.values())


def test_rpm_limit_is_enforced_per_second_and_per_minute(dashscope_emulator: Emulator) -> None:
    dashscope_emulator.configure(rpm=120)  # 2 requests a second
    codes = [post(dashscope_emulator, EMBED, native([f"t{i}"])).status_code for i in range(3)]
    assert codes == [200, 200, 429]
    dashscope_emulator.configure(rpm=2)  # 1 a second, 2 a minute
    dashscope_emulator.reset()
    assert post(dashscope_emulator, EMBED, native(["a"])).status_code == 200
    per_second = post(dashscope_emulator, EMBED, native(["b"]))
    assert per_second.status_code == 429
    assert per_second.json()["code"] == "Throttling.RateQuota"
    assert int(per_second.headers["retry-after-ms"]) <= 1000
    time.sleep(1.05)
    assert post(dashscope_emulator, EMBED, native(["c"])).status_code == 200
    time.sleep(1.05)
    per_minute = post(dashscope_emulator, EMBED, native(["d"]))
    assert per_minute.status_code == 429
    assert 50 <= int(per_minute.headers["retry-after"]) <= 60


def test_tpm_limit_answers_429_allocation_quota(dashscope_emulator: Emulator) -> None:
    dashscope_emulator.configure(tpm=10)
    assert post(dashscope_emulator, EMBED, native(["one two three four five"])).status_code == 200
    response = post(dashscope_emulator, EMBED, native(["six seven eight nine ten"]))
    assert response.status_code == 429
    assert response.json()["code"] == "Throttling.AllocationQuota"
    compat = post(
        dashscope_emulator, COMPAT, {"model": "text-embedding-v4", "input": "u v w x y z"}
    )
    assert compat.json()["error"]["code"] == "insufficient_quota"


def test_concurrency_cap_answers_429(dashscope_emulator: Emulator) -> None:
    import concurrent.futures

    dashscope_emulator.configure(max_concurrency=2, latency=0.3)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        codes = list(
            pool.map(
                lambda i: post(dashscope_emulator, EMBED, native([f"c{i}"])).status_code, range(6)
            )
        )
    assert codes.count(200) >= 2 and codes.count(429) >= 1
    assert dashscope_emulator.stats()["peak_concurrency"] == 2


def test_injected_500s_and_dropped_connections(dashscope_emulator: Emulator) -> None:
    dashscope_emulator.configure(error_rate=1.0)
    response = post(dashscope_emulator, EMBED, native(["x"]))
    assert response.status_code == 500 and response.json()["code"] == "InternalError"
    dashscope_emulator.configure(error_rate=0.0, drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        post(dashscope_emulator, EMBED, native(["y"]))
    stats = dashscope_emulator.stats()
    assert stats["injected_errors"] == 1 and stats["dropped_connections"] == 1
    assert stats["wasted_embeddings"] == 1 and stats["texts_delivered"] == 0


def test_a_reply_takes_at_least_the_configured_latency(dashscope_emulator: Emulator) -> None:
    dashscope_emulator.configure(latency=0.2, latency_per_text=0.02)
    started = time.monotonic()
    post(dashscope_emulator, EMBED, native([f"l{i}" for i in range(10)]))
    assert time.monotonic() - started >= 0.4


def test_latency_jitter_varies_each_reply_above_the_latency(dashscope_emulator: Emulator) -> None:
    dashscope_emulator.configure(latency=0.05, latency_jitter=0.1, seed=3)
    took = []
    for i in range(10):
        started = time.monotonic()
        post(dashscope_emulator, EMBED, native([f"j{i}"]))
        took.append(time.monotonic() - started)
    assert min(took) >= 0.05
    assert max(took) - min(took) > 0.02  # ten draws from [0, 0.1): spread, not fixed


def test_stats_count_duplicate_embeddings(dashscope_emulator: Emulator) -> None:
    post(dashscope_emulator, EMBED, native(["same", "other"]))
    post(dashscope_emulator, EMBED, native(["same"]))
    post(dashscope_emulator, EMBED, native(["same"], text_type="query"))  # other parameters
    stats = dashscope_emulator.stats()
    assert stats["texts_delivered"] == 4 and stats["duplicate_embeddings"] == 1
    assert stats["requests"] == 3 and stats["by_status"] == {"200": 3}
    assert stats["max_rows_seen"] == 2


def test_faults_follow_the_seed() -> None:
    def pattern(seed: int) -> list[int]:
        with Emulator(error_rate=0.5, seed=seed) as emu:
            return [post(emu, EMBED, native([f"s{i}"])).status_code for i in range(12)]

    assert pattern(3) == pattern(3)
    assert pattern(3) != pattern(4)


def test_configuring_a_seed_restarts_its_sequence_and_jitter_leaves_it_alone(
    dashscope_emulator: Emulator,
) -> None:
    def pattern(**settings: float) -> list[int]:
        dashscope_emulator.configure(error_rate=0.5, **settings)
        return [post(dashscope_emulator, EMBED, native([f"q{i}"])).status_code for i in range(12)]

    first = pattern(seed=3)
    assert pattern(seed=3) == first  # no reset needed
    assert pattern(seed=3, latency_jitter=0.01) == first  # jitter draws from its own stream


@pytest.mark.parametrize(
    "path",
    [
        "/gateway/dashscope" + EMBED,  # a proxy prefix nobody configured
        "/api/vl" + EMBED,  # "vl" for "v1": the typo a user's base_url may hold
        "/api/v1/api/v1/services/embeddings/text-embedding/text-embedding",
        COMPAT.replace("/v1", "/v2"),
    ],
)
def test_only_the_real_paths_are_served(dashscope_emulator: Emulator, path: str) -> None:
    response = post(dashscope_emulator, path, native(["x"]))
    assert response.status_code == 404 and response.json()["code"]


def test_paths_below_a_configured_proxy_prefix_are_served(dashscope_emulator: Emulator) -> None:
    dashscope_emulator.configure(path_prefix="/gateway/dashscope")
    assert post(dashscope_emulator, "/gateway/dashscope" + EMBED, native(["x"])).status_code == 200
    assert post(dashscope_emulator, EMBED, native(["x"])).status_code == 404
    client = DashScopeClient(
        api_key=dashscope_emulator.api_key,
        base_url=dashscope_emulator.base_url + "/gateway/dashscope/api/v1",
    )
    assert len(client.embed(["through the proxy"]).require_dense()) == 1


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (b'{"model":"text-embedding-v4","input":{"texts":["\\ud800 x"]}}', "lone surrogate"),
        (b"[" * 100_000, "deep nesting"),
        (b"\xff\xfe not utf-8", "invalid UTF-8"),
        (b'{"model":', "truncated JSON"),
    ],
)
def test_a_malformed_body_gets_the_service_error_shape_and_breaks_nothing(
    dashscope_emulator: Emulator, body: bytes, what: str
) -> None:
    response = post(dashscope_emulator, EMBED, body)
    assert response.status_code == 400, what
    assert response.headers["content-type"] == "application/json"
    assert response.json()["code"] == "InvalidParameter"
    # The request log (and so every later test's view of the wire) still works.
    assert httpx.get(dashscope_emulator.base_url + "/emulator/requests").status_code == 200
    assert post(dashscope_emulator, EMBED, native(["after"])).status_code == 200


def test_the_request_log_is_bounded_in_bytes(dashscope_emulator: Emulator) -> None:
    big = native(["x" * (3 * 1024 * 1024)])
    for _ in range(40):
        post(dashscope_emulator, EMBED, big)
    log = dashscope_emulator.app.state
    assert log._log_total <= log.REQUEST_LOG_BYTES
    assert len(dashscope_emulator.requests()) < 40


def test_command_line_serves_until_stopped() -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dashscope_embed.emulator",
            "--port",
            str(port),
            "--latency",
            "0.01",
            "--api-key",
            "sk-cli",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.post(
                    f"http://127.0.0.1:{port}{EMBED}",
                    json=native(["cli"]),
                    headers={"Authorization": "Bearer sk-cli"},
                    timeout=5,
                )
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert response.status_code == 200
        assert len(response.json()["output"]["embeddings"][0]["embedding"]) == 1024
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_injected_drops_are_quiet_on_the_command_line() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "dashscope_embed.emulator", "--port", str(port),
         "--drop-rate", "1", "--api-key", "sk-cli"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(base + "/emulator/stats", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        for _ in range(3):
            with pytest.raises(httpx.RemoteProtocolError):
                httpx.post(
                    base + EMBED,
                    json=native(["cli"]),
                    headers={"Authorization": "Bearer sk-cli"},
                    timeout=5,
                )
        assert httpx.get(base + "/emulator/stats").json()["dropped_connections"] == 3
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)
    assert "Traceback" not in output and "DroppedConnection" not in output


def test_the_command_line_starts_with_the_settings_defaults_and_can_flip_every_switch() -> None:
    """A switch on by default (Retry-After on rate 429s) was once a store_true flag:
    left out, the command turned it off, and there was no way to say it."""
    from dataclasses import MISSING, fields

    from dashscope_embed.emulator.__main__ import build_parser
    from dashscope_embed.emulator.state import EmulatorSettings

    parser = build_parser()
    given = vars(parser.parse_args([]))
    for setting in fields(EmulatorSettings):
        default = None if setting.default is MISSING else setting.default
        assert given[setting.name] == default, setting.name
        if isinstance(default, bool):
            flag = setting.name.replace("_", "-")
            flipped = vars(parser.parse_args([f"--{'no-' if default else ''}{flag}"]))
            assert flipped[setting.name] is (not default), setting.name
