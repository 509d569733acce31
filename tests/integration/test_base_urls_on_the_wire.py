"""Where requests go, checked on the wire: versioned base URLs and the workspace gateway."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from dashscope_embed import DashScopeClient
from dashscope_embed.emulator import Emulator
from tests.integration.hostile import Conn, RawRequest, hostile, response_bytes


def openai_reply(request: RawRequest, conn: Conn) -> None:
    texts = json.loads(request.body)["input"]
    data = [{"object": "embedding", "index": i, "embedding": [0.5] * 64} for i in range(len(texts))]
    body = {"object": "list", "data": data, "usage": {"prompt_tokens": 3, "total_tokens": 3}}
    conn.send(response_bytes(200, json.dumps(body).encode()))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_versioned_base_url_is_used_as_given(mode: str) -> None:
    """Every OpenAI-compatible proxy in front of DashScope looks like this one."""
    with hostile(openai_reply) as proxy:
        client = DashScopeClient(
            api_key="sk-proxy",
            base_url=proxy.base_url + "/v1",
            protocol="openai-compatible",
        )
        texts = ["through a proxy", "at /v1"]
        if mode == "sync":
            result = client.embed(texts, dimension=64)
        else:
            result = asyncio.run(client.aembed(texts, dimension=64))
        assert len(result.require_dense()) == 2
        assert [r.path for r in proxy.requests] == ["/v1/embeddings"]
        assert proxy.requests[0].headers["authorization"] == "Bearer sk-proxy"


class Forward(httpx.BaseTransport):
    """Sends every request to a local server instead, remembering where it was bound."""

    def __init__(self, target: str) -> None:
        self.target = httpx.URL(target)
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((str(request.url), dict(request.headers)))
        request.url = request.url.copy_with(
            scheme=self.target.scheme, host=self.target.host, port=self.target.port
        )
        request.headers["host"] = f"{self.target.host}:{self.target.port}"
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_the_workspace_gateway_is_where_requests_go(dashscope_emulator: Emulator) -> None:
    forward = Forward(dashscope_emulator.base_url)
    with httpx.Client(transport=forward) as http:  # the caller's client: the caller closes it
        client = DashScopeClient(
            api_key=dashscope_emulator.api_key,
            workspace="llm-ab12",
            workspace_gateway=True,
            region="ap-southeast-1",
            http_client=http,
        )
        result = client.embed(["to the workspace's own host"], dimension=64)
    assert len(result.require_dense()[0]) == 64
    url, headers = forward.seen[0]
    assert url == (
        "https://llm-ab12.ap-southeast-1.maas.aliyuncs.com"
        "/api/v1/services/embeddings/text-embedding/text-embedding"
    )
    assert headers["authorization"] == f"Bearer {dashscope_emulator.api_key}"
    assert headers["x-dashscope-workspace"] == "llm-ab12"
    sent: list[dict[str, Any]] = dashscope_emulator.requests("text-embedding")
    assert sent[0]["json"]["input"]["texts"] == ["to the workspace's own host"]


def test_rerank_goes_to_the_workspace_gateway_too(dashscope_emulator: Emulator) -> None:
    """qwen3-rerank is served at {workspace}.{region}.maas.aliyuncs.com/compatible-api/v1."""
    forward = Forward(dashscope_emulator.base_url)
    with httpx.Client(transport=forward) as http:
        client = DashScopeClient(
            api_key=dashscope_emulator.api_key,
            workspace="llm-ab12",
            workspace_gateway=True,
            region="ap-southeast-1",
            http_client=http,
        )
        result = client.rerank("gateway", ["the workspace gateway", "something else"])
    assert result.indices == [0, 1]
    url, headers = forward.seen[0]
    assert url == "https://llm-ab12.ap-southeast-1.maas.aliyuncs.com/compatible-api/v1/reranks"
    assert headers["x-dashscope-workspace"] == "llm-ab12"


def test_rerank_through_a_versioned_proxy_keeps_the_model_endpoint() -> None:
    """A proxy base URL that names its API (``.../v1``) is used as given: rerank then
    goes to ``{base}/reranks``, the compatible-api path, with the flat body."""

    def rerank_reply(request: RawRequest, conn: Conn) -> None:
        docs = json.loads(request.body)["documents"]
        results = [{"index": i, "relevance_score": 1.0 / (i + 1)} for i in range(len(docs))]
        body = {"results": results, "usage": {"total_tokens": 5}}
        conn.send(response_bytes(200, json.dumps(body).encode()))

    with hostile(rerank_reply) as proxy:
        with DashScopeClient(api_key="sk-proxy", base_url=proxy.base_url + "/v1") as client:
            assert client.rerank("q", ["a", "b"]).indices == [0, 1]
        assert [r.path for r in proxy.requests] == ["/v1/reranks"]
