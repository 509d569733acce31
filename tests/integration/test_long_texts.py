"""Long-text policies end to end against the emulator."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from dashscope_embed import DashScopeClient, InvalidInputError
from dashscope_embed.emulator import Emulator
from dashscope_embed.tokens import QwenTokenCounter

Factory = Callable[..., DashScopeClient]
LONG = "retrieval augmented generation " * 3000  # about 9,000 tokens: over v4's 8,192


def test_error_policy_refuses_before_sending(
    make_client: Factory, dashscope_emulator: Emulator
) -> None:
    with pytest.raises(InvalidInputError) as info:
        make_client().embed(["fine", LONG])
    assert info.value.positions == [1]
    assert dashscope_emulator.stats()["requests"] == 0


def test_truncate_policy_embeds_the_head(make_client: Factory) -> None:
    client = make_client(long_text="truncate")
    result = client.embed(["fine", LONG], dimension=256)
    head = QwenTokenCounter().truncate(LONG, 8191)
    direct = client.embed([head], dimension=256)
    assert result.require_dense()[1] == direct.require_dense()[0]


def test_chunk_policy_averages_the_pieces(make_client: Factory) -> None:
    client = make_client()
    result = client.embed(
        ["fine", LONG, "also fine"], long_text="chunk", dimension=128, output_type="dense&sparse"
    )
    counter = QwenTokenCounter()
    pieces = counter.split(LONG, 8191)
    parts = np.array(client.embed(pieces, dimension=128).require_dense())
    weights = np.array([counter.count(p) for p in pieces], dtype=float)
    expected = (weights[:, None] * parts).sum(axis=0)
    expected /= np.linalg.norm(expected)
    assert len(result) == 3
    assert np.allclose(result.require_dense()[1], expected, atol=1e-6)
    assert result.require_dense()[0] == client.embed(["fine"], dimension=128).require_dense()[0]
    assert "retrieval" in result.require_sparse()[1].tokens
