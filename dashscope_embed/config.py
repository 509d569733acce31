"""Every client setting, declared once: :class:`ClientSettings`.

The core client validates its keyword arguments with it, and the LlamaIndex and
LangChain classes inherit it, so a setting exists with the same name, bounds and
default everywhere. Connection settings have environment variables, read when the
settings are created (the key is read again at first use, so a client unpickled in a
worker finds the worker's key):

=================  ==============================================  ===============
setting            environment variable                            default
=================  ==============================================  ===============
``api_key``        ``DASHSCOPE_API_KEY``                           (required)
``region``         ``DASHSCOPE_REGION``, ``DASHSCOPE_API_REGION``  ``cn-beijing``
``base_url``       ``DASHSCOPE_BASE_URL``, ``DASHSCOPE_HTTP_BASE_URL``  region's host
``workspace``      ``DASHSCOPE_WORKSPACE``, ``DASHSCOPE_WORKSPACE_ID``  none
=================  ==============================================  ===============
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from typing import Any, Literal

import httpx
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)

from dashscope_embed.errors import ConfigurationError, MissingApiKeyError
from dashscope_embed.retry import RetryPolicy
from dashscope_embed.tokens import LongTextPolicy, TokenCounter

Protocol = Literal["native", "openai-compatible"]
ServerKind = Literal["vllm", "sglang", "tei", "ollama", "infinity"]
SERVER_KINDS: tuple[ServerKind, ...] = ("vllm", "sglang", "tei", "ollama", "infinity")
"""Self-hosted servers the client speaks to (see :mod:`dashscope_embed.selfhosted`)."""
Api = Literal["native", "compatible", "compatible-api"]
"""The service's API families: native (``/api/v1``), OpenAI-compatible
(``/compatible-mode/v1``) and the OpenAI-style rerank API (``/compatible-api/v1``)."""

_INTL = "https://dashscope-intl.aliyuncs.com"
REGION_HOSTS: dict[str, str] = {
    "cn-beijing": "https://dashscope.aliyuncs.com",
    "ap-southeast-1": _INTL,
    "cn-hongkong": "https://cn-hongkong.dashscope.aliyuncs.com",
    # The official SDK sends these regions to the international host unless a workspace
    # gateway is used.
    "us-east-1": _INTL,
    "eu-central-1": _INTL,
    "ap-northeast-1": _INTL,
    "cn-finance": "https://dashscope-finance.aliyuncs.com",
}
"""Region id → host root. ``/api/v1`` (native) or ``/compatible-mode/v1`` is appended."""

REGION_ALIASES: dict[str, str] = {
    "beijing": "cn-beijing",
    "china": "cn-beijing",
    "singapore": "ap-southeast-1",
    "intl": "ap-southeast-1",
    "international": "ap-southeast-1",
    "hongkong": "cn-hongkong",
    "hong-kong": "cn-hongkong",
    "virginia": "us-east-1",
    "frankfurt": "eu-central-1",
    "tokyo": "ap-northeast-1",
    "finance": "cn-finance",
}

NATIVE_SUFFIX = "/api/v1"
COMPATIBLE_SUFFIX = "/compatible-mode/v1"
COMPATIBLE_API_SUFFIX = "/compatible-api/v1"
API_SUFFIXES: dict[str, str] = {
    "native": NATIVE_SUFFIX,
    "compatible": COMPATIBLE_SUFFIX,
    "compatible-api": COMPATIBLE_API_SUFFIX,
}
# A base URL ending in a version segment (".../v1") names its API itself: an
# OpenAI-compatible proxy, a gateway, a self-hosted server. It is used as given.
_VERSIONED = re.compile(r"/v\d+(?:\.\d+)?$")
GATEWAY_REGIONS = (
    "cn-beijing",
    "ap-southeast-1",
    "cn-hongkong",
    "us-east-1",
    "eu-central-1",
    "ap-northeast-1",
)
"""Regions with a workspace-scoped gateway host, ``{workspace}.{region}.maas.aliyuncs.com``."""
_WORKSPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def _first_env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value.strip()
    return None


def _env_api_key() -> SecretStr | None:
    value = _first_env("DASHSCOPE_API_KEY")
    return SecretStr(value) if value else None


def take_api_key(data: dict[str, Any], *names: str) -> SecretStr | None:
    """Remove the key from ``data`` (under any of ``names``) and return it as a secret;
    a blank key counts as none. Raises ``TypeError`` for a key that is not a string."""
    key: Any = None
    for name in names:
        if name in data:
            key = data.pop(name)
    if key is None or isinstance(key, SecretStr):
        secret = key
    elif isinstance(key, str):
        secret = SecretStr(key)
    else:
        raise TypeError(f"api_key must be a str or SecretStr, got {type(key).__name__}")
    if secret is not None and not secret.get_secret_value().strip():
        return None
    return secret


def is_loopback_host(host: str) -> bool:
    """True when every address ``host`` stands for is a loopback address (127.0.0.0/8, ::1).

    A name counts by what it resolves to, not by how it is spelt: ``evil.localhost`` may
    resolve anywhere a resolver likes, so a name that does not resolve, or resolves to
    any other address, is not loopback.
    """
    host = host.strip("[]").lower()
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = resolve_host(host)
    except (OSError, UnicodeError):
        return False
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def resolve_host(host: str) -> set[str]:
    """Every address ``host`` resolves to now (scope ids dropped)."""
    return {str(info[4][0]).split("%", 1)[0] for info in socket.getaddrinfo(host, None)}


def parse_base_url(url: str) -> str:
    """Check a base URL and return it without a trailing slash.

    Accepted: a host root (``https://dashscope.aliyuncs.com``), optionally with a path
    prefix (a proxy mounted under ``/dashscope``); a documented API base (``.../api/v1``,
    ``.../compatible-mode/v1``); or any base ending in a version (``http://localhost:8000/v1``),
    which is used as given.
    """
    raw = url.strip()
    try:
        parsed = httpx.URL(raw)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ConfigurationError(f"base_url {raw!r} is not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigurationError(
            f"base_url {raw!r} must be an absolute http(s) URL such as "
            "'https://dashscope.aliyuncs.com' or 'https://dashscope.aliyuncs.com/api/v1'"
        )
    if parsed.query or parsed.fragment:
        raise ConfigurationError(f"base_url {raw!r} must not have a query or fragment")
    port = f":{parsed.port}" if parsed.port else ""
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    return f"{parsed.scheme}://{host}{port}{parsed.path.rstrip('/')}"


class ClientSettings(BaseModel):
    """How to reach DashScope and how to use it: every setting of the client.

    The same model, with the same bounds, is what :class:`DashScopeClient` validates its
    keyword arguments with and what the LlamaIndex and LangChain classes inherit. The
    key is a :class:`~pydantic.SecretStr`, excluded from ``model_dump``, JSON, ``repr``
    and pickles; with no explicit key, ``DASHSCOPE_API_KEY`` is read at first use.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_default=True, arbitrary_types_allowed=True
    )

    # -------------------------------------------------------------- where
    api_key: SecretStr | None = Field(default=None, exclude=True, repr=False)
    region: str = Field(
        default_factory=lambda: (
            _first_env("DASHSCOPE_REGION", "DASHSCOPE_API_REGION") or "cn-beijing"
        ),
        description="Region id (cn-beijing, ap-southeast-1, cn-hongkong, ...) or alias.",
    )
    base_url: str | None = Field(
        default_factory=lambda: _first_env("DASHSCOPE_BASE_URL", "DASHSCOPE_HTTP_BASE_URL"),
        description="Another host (a proxy, the emulator): a host root, a documented API "
        "base, or a base ending in a version ('.../v1'), which is used as given.",
    )
    workspace: str | None = Field(
        default_factory=lambda: _first_env("DASHSCOPE_WORKSPACE", "DASHSCOPE_WORKSPACE_ID"),
        description="Sub-workspace id, sent as X-DashScope-WorkSpace.",
    )
    workspace_gateway: bool = Field(
        default=False,
        description="Send requests to the workspace's own host, "
        "https://{workspace}.{region}.maas.aliyuncs.com (needs workspace).",
    )
    protocol: Protocol = Field(
        default="native", description="'native' (every feature) or 'openai-compatible'."
    )
    server: ServerKind | None = Field(
        default=None,
        description="A self-hosted Qwen3-Embedding / Qwen3-Reranker server instead of "
        "DashScope: 'vllm', 'sglang', 'tei', 'ollama' or 'infinity'; base_url is its root "
        "(http://gpu-box:8000). api_key is then the server's own bearer token, if it needs "
        "one (DASHSCOPE_API_KEY is never sent to it).",
    )
    allow_insecure_http: bool = Field(
        default=False,
        description="Allow plain http:// to a non-loopback host (the key travels in clear).",
    )
    # -------------------------------------------------------------- how long
    timeout: float = Field(
        default=60.0, gt=0, description="Seconds one attempt may take, whole (connect, send, read)."
    )
    connect_timeout: float = Field(default=10.0, gt=0, description="Seconds to connect.")
    max_retries: int = Field(
        default=4, ge=0, le=20, description="Resends of one request (see retry for more)."
    )
    retry: RetryPolicy | None = Field(
        default=None, description="A full retry policy; overrides max_retries."
    )
    # -------------------------------------------------------------- how much at once
    max_concurrency: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="A hard ceiling on requests in flight, sync and async. By default the "
        "client finds what the service admits (up to 64): it grows while replies keep "
        "coming at the same speed and cuts on 429s or climbing latency.",
    )
    adaptive_concurrency: bool = Field(
        default=True,
        description="Find the capacity (and an untold request-rate cap) from the service's "
        "answers; False keeps max_concurrency (or 64) requests in flight regardless.",
    )
    requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="Your request quota, paced client-side: a ceiling. Refused for rate "
        "under it (others spend the same account), the client slows further.",
    )
    tokens_per_minute: int | None = Field(
        default=None, ge=1, description="Your token quota, paced client-side."
    )
    # -------------------------------------------------------------- inputs
    long_text: LongTextPolicy = Field(
        default="error",
        description="Texts over the model's token limit: 'error', 'truncate' or 'chunk'.",
    )
    token_counter: TokenCounter | None = Field(
        default=None,
        exclude=True,
        repr=False,
        description="Counts tokens; default the exact Qwen tokenizer when installed.",
    )

    # Set on the far side of a pickle that left a key given in code behind, so a missing
    # key is explained as such (see MissingApiKeyError.unpickled).
    _key_withheld: bool = PrivateAttr(default=False)

    def __init__(self, **data: Any) -> None:
        # The key is kept out of validation, so no ValidationError (which quotes, and
        # pickles, its input) can carry it; it is checked on its own and set after.
        given = any(name in data for name in _KEY_NAMES)
        key = take_api_key(data, *_KEY_NAMES)
        super().__init__(**data)
        if given:
            self.__dict__["api_key"] = key

    @field_validator("region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        region = value.strip().lower()
        region = REGION_ALIASES.get(region, region)
        if region not in REGION_HOSTS:
            raise ValueError(
                f"unknown region {value!r}; use one of {', '.join(REGION_HOSTS)} "
                "or pass base_url for another host"
            )
        return region

    @field_validator("workspace")
    @classmethod
    def _valid_workspace(cls, value: str | None) -> str | None:
        if value is not None and not _WORKSPACE_RE.match(value):
            raise ValueError(
                f"workspace {value!r} is not a valid workspace id (letters, digits, '_' "
                "and '-', at most 64 characters)"
            )
        return value

    @field_validator("base_url")
    @classmethod
    def _parse_base_url(cls, value: str | None) -> str | None:
        return parse_base_url(value) if value else None

    @model_validator(mode="after")
    def _consistent(self) -> ClientSettings:
        if self.server is not None and (self.base_url is None or self.workspace_gateway):
            raise ValueError(
                f"server={self.server!r} needs base_url, the server's root "
                "(e.g. 'http://gpu-box:8000')"
            )
        if self.workspace_gateway:
            if self.workspace is None:
                raise ValueError("workspace_gateway=True needs workspace='...' (its id)")
            if self.base_url is not None:
                raise ValueError(
                    "workspace_gateway=True chooses the host itself; do not also pass base_url"
                )
            if self.region not in GATEWAY_REGIONS:
                raise ValueError(
                    f"region {self.region!r} has no workspace gateway; "
                    f"regions with one: {', '.join(GATEWAY_REGIONS)}"
                )
        url = httpx.URL(self.root_url)
        if url.scheme == "http" and not self.allow_insecure_http and not is_loopback_host(url.host):
            raise ValueError(
                f"base_url {self.root_url!r} uses plain http to a non-loopback host, which "
                "would send the API key in clear text; use https, or pass "
                "allow_insecure_http=True if the network path is trusted"
            )
        return self

    # -------------------------------------------------------------- URLs
    @property
    def root_url(self) -> str:
        """Host root every API hangs from (``https://dashscope.aliyuncs.com``), with a
        proxy's path prefix if it has one; for a versioned base URL, that base."""
        if self.workspace_gateway:
            return f"https://{self.workspace}.{self.region}.maas.aliyuncs.com"
        if self.base_url is None:
            return REGION_HOSTS[self.region]
        for suffix in API_SUFFIXES.values():
            if self.base_url.endswith(suffix):
                return self.base_url[: -len(suffix)]
        return self.base_url

    @property
    def versioned_base(self) -> bool:
        """Whether ``base_url`` names its API itself (``.../v1``) and is used as given."""
        base = self.base_url
        return (
            base is not None
            and not any(base.endswith(suffix) for suffix in API_SUFFIXES.values())
            and _VERSIONED.search(base) is not None
        )

    def api_base(self, api: Api) -> str:
        """The base URL of one of the service's APIs."""
        if self.versioned_base:
            return self.root_url
        return self.root_url + API_SUFFIXES[api]

    @property
    def native_base_url(self) -> str:
        """Base of the native protocol (``.../api/v1``)."""
        return self.api_base("native")

    @property
    def compatible_base_url(self) -> str:
        """Base of the OpenAI-compatible protocol (``.../compatible-mode/v1``)."""
        return self.api_base("compatible")

    @property
    def retry_policy(self) -> RetryPolicy:
        """``retry``, or the default policy with ``max_retries``."""
        return self.retry or RetryPolicy(max_retries=self.max_retries)

    @property
    def wire_protocol(self) -> str:
        """The protocol requests are made in: the self-hosted server's kind, else
        ``protocol``."""
        return self.server or self.protocol

    # -------------------------------------------------------------- the key
    def bearer_token(self) -> str | None:
        """What goes in ``Authorization``: the DashScope key, or for a self-hosted
        server its own token if one was given (never ``DASHSCOPE_API_KEY``, which is
        DashScope's and must not reach another host)."""
        if self.server is not None:
            return self.api_key.get_secret_value() if self.api_key is not None else None
        return self.resolve_api_key()

    def check_credentials(self) -> None:
        """Fail now if a needed key is missing (a self-hosted server may need none)."""
        if self.server is None:
            self.resolve_api_key()

    def resolve_api_key(self) -> str:
        """The key to send: the explicit one, else ``DASHSCOPE_API_KEY`` now."""
        key = self.api_key or _env_api_key()
        if key is None:
            raise MissingApiKeyError(unpickled=self._key_withheld)
        return key.get_secret_value()

    def mark_key_withheld(self) -> None:
        """Record that a key given in code was left behind by a pickle (used by the
        framework classes, which rebuild their settings on the far side)."""
        self._key_withheld = True

    def settings_only(self) -> ClientSettings:
        """These settings as a plain :class:`ClientSettings` (a framework class passes
        its own this way to the client it builds)."""
        if type(self) is ClientSettings:
            return self
        values = {name: getattr(self, name) for name in ClientSettings.model_fields}
        settings = ClientSettings.model_construct(**values)
        settings._key_withheld = self._key_withheld
        return settings

    def __getstate__(self) -> dict[Any, Any]:
        # Pickles travel to worker processes and caches: the key stays behind and the
        # worker reads its own DASHSCOPE_API_KEY. A custom token counter stays too.
        state: dict[Any, Any] = super().__getstate__()
        state["__dict__"] = {**state["__dict__"], "api_key": None, "token_counter": None}
        withheld = self.api_key is not None or self._key_withheld
        state["__pydantic_private__"] = {
            **(state.get("__pydantic_private__") or {}),
            "_key_withheld": withheld,
        }
        return state


_KEY_NAMES = ("api_key", "dashscope_api_key")

ClientConfig = ClientSettings
"""The former name of :class:`ClientSettings`, kept for code that imports it."""
