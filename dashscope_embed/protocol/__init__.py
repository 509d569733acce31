"""Wire formats: request bodies and reply parsing for each protocol; pure, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dashscope_embed.config import ClientConfig, Protocol
from dashscope_embed.protocol import native, openai_compatible
from dashscope_embed.protocol.common import (
    EmbedParams,
    HttpRequest,
    ParsedBatch,
    parse_error_reply,
    reply_byte_limit,
)

__all__ = [
    "Codec",
    "EmbedParams",
    "HttpRequest",
    "ParsedBatch",
    "codec_for",
    "parse_error_reply",
    "reply_byte_limit",
]


@dataclass(frozen=True)
class Codec:
    """One protocol's text-embedding request builder and reply parser."""

    name: Protocol

    def base_url(self, config: ClientConfig) -> str:
        if self.name == "native":
            return config.native_base_url
        return config.compatible_base_url

    def check(self, params: EmbedParams) -> None:
        """Raise before sending if this protocol cannot carry ``params``."""
        if self.name == "openai-compatible":
            openai_compatible.check_supported(params)

    def build(self, texts: Sequence[str], params: EmbedParams) -> HttpRequest:
        if self.name == "native":
            return native.build_request(texts, params)
        return openai_compatible.build_request(texts, params)

    def parse(self, content: bytes, expected_rows: int, params: EmbedParams) -> ParsedBatch:
        if self.name == "native":
            return native.parse_reply(content, expected_rows, params)
        return openai_compatible.parse_reply(content, expected_rows, params)


def codec_for(protocol: Protocol) -> Codec:
    if protocol not in ("native", "openai-compatible"):
        raise ValueError(f"protocol must be 'native' or 'openai-compatible', got {protocol!r}")
    return Codec(protocol)
