"""Endpoint codecs: one object per endpoint and protocol, found through one registry.

Each codec owns its URL, its pre-send checks, its request body, its reply limit and its
reply parsing; all pure, no I/O. Importing this package registers the built-in ones.
"""

from __future__ import annotations

from dashscope_embed.protocol import multimodal, native, openai_compatible, rerank, selfhosted
from dashscope_embed.protocol.base import Endpoint, HttpRequest, endpoint_for, register
from dashscope_embed.protocol.common import ParsedBatch, parse_error_reply, reply_byte_limit

__all__ = [
    "Endpoint",
    "HttpRequest",
    "ParsedBatch",
    "endpoint_for",
    "multimodal",
    "native",
    "openai_compatible",
    "parse_error_reply",
    "register",
    "reply_byte_limit",
    "rerank",
    "selfhosted",
]
