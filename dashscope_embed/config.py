"""Connection settings shared by every class in the project.

Every setting has an environment variable, read when the settings are created (the key
is read again at first use, so a client unpickled in a worker finds the worker's key):

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

Protocol = Literal["native", "openai-compatible"]

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


def normalise_base_url(url: str) -> str:
    """Reduce any accepted base URL to its root (scheme, host, optional path prefix).

    Accepts a bare host root (``https://dashscope.aliyuncs.com``) or either documented
    base (``.../api/v1``, ``.../compatible-mode/v1``), with or without a trailing slash;
    a path prefix in front of them (a proxy mounted under ``/dashscope``) is kept.
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
    path = parsed.path.rstrip("/")
    for suffix in (NATIVE_SUFFIX, COMPATIBLE_SUFFIX):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    port = f":{parsed.port}" if parsed.port else ""
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    return f"{parsed.scheme}://{host}{port}{path}"


class ClientConfig(BaseModel):
    """Where and how to reach DashScope. Immutable; safe to log and serialise.

    The key is a :class:`~pydantic.SecretStr`, excluded from ``model_dump``/JSON and from
    pickles; with no explicit key, ``DASHSCOPE_API_KEY`` is read at first use.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    api_key: SecretStr | None = Field(default=None, exclude=True, repr=False)
    region: str = Field(
        default_factory=lambda: (
            _first_env("DASHSCOPE_REGION", "DASHSCOPE_API_REGION") or "cn-beijing"
        ),
        description="Region id (cn-beijing, ap-southeast-1, cn-hongkong, ...) or alias.",
    )
    base_url: str | None = Field(
        default_factory=lambda: _first_env("DASHSCOPE_BASE_URL", "DASHSCOPE_HTTP_BASE_URL"),
        description="Overrides the region's host; a host root or either documented base.",
    )
    workspace: str | None = Field(
        default_factory=lambda: _first_env("DASHSCOPE_WORKSPACE", "DASHSCOPE_WORKSPACE_ID"),
        description="Sub-workspace id, sent as X-DashScope-WorkSpace.",
    )
    protocol: Protocol = "native"
    timeout: float = Field(default=60.0, gt=0, description="Seconds per request (read/write).")
    connect_timeout: float = Field(default=10.0, gt=0)
    max_retries: int = Field(default=4, ge=0, le=20)
    allow_insecure_http: bool = Field(
        default=False,
        description="Allow plain http:// to a non-loopback host (the key travels in clear).",
    )
    # Set on the far side of a pickle that left a key given in code behind, so a missing
    # key is explained as such (see MissingApiKeyError.unpickled).
    _key_withheld: bool = PrivateAttr(default=False)

    def __init__(self, **data: Any) -> None:
        # The key is kept out of validation, so no ValidationError (which quotes, and
        # pickles, its input) can carry it; it is checked on its own and set after.
        key = take_api_key(data, "api_key")
        super().__init__(**data)
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
    def _normalise_base_url(cls, value: str | None) -> str | None:
        return normalise_base_url(value) if value else None

    @model_validator(mode="after")
    def _refuse_clear_text_key(self) -> ClientConfig:
        url = httpx.URL(self.root_url)
        if url.scheme == "http" and not self.allow_insecure_http and not is_loopback_host(url.host):
            raise ValueError(
                f"base_url {self.root_url!r} uses plain http to a non-loopback host, which "
                "would send the API key in clear text; use https, or pass "
                "allow_insecure_http=True if the network path is trusted"
            )
        return self

    @property
    def root_url(self) -> str:
        """Host root every path hangs from (``https://dashscope.aliyuncs.com``)."""
        return self.base_url or REGION_HOSTS[self.region]

    @property
    def native_base_url(self) -> str:
        """Base of the native protocol (``.../api/v1``)."""
        return self.root_url + NATIVE_SUFFIX

    @property
    def compatible_base_url(self) -> str:
        """Base of the OpenAI-compatible protocol (``.../compatible-mode/v1``)."""
        return self.root_url + COMPATIBLE_SUFFIX

    def resolve_api_key(self) -> str:
        """The key to send: the explicit one, else ``DASHSCOPE_API_KEY`` now."""
        key = self.api_key or _env_api_key()
        if key is None:
            raise MissingApiKeyError(unpickled=self._key_withheld)
        return key.get_secret_value()

    def mark_key_withheld(self) -> None:
        """Record that a key given in code was left behind by a pickle (used by the
        framework classes, which rebuild their config on the far side)."""
        self._key_withheld = True

    def __getstate__(self) -> dict[Any, Any]:
        # Pickles travel to worker processes and caches: the key stays behind and the
        # worker reads its own DASHSCOPE_API_KEY.
        state: dict[Any, Any] = super().__getstate__()
        state["__dict__"] = {**state["__dict__"], "api_key": None}
        withheld = self.api_key is not None or self._key_withheld
        state["__pydantic_private__"] = {
            **(state.get("__pydantic_private__") or {}),
            "_key_withheld": withheld,
        }
        return state
