"""Pytest plugin (registered by the package's entry point): the ``dashscope_emulator`` fixture.

Use it in your own tests::

    def test_my_rag_app(dashscope_emulator, monkeypatch):
        monkeypatch.setenv("DASHSCOPE_API_KEY", dashscope_emulator.api_key)
        monkeypatch.setenv("DASHSCOPE_BASE_URL", dashscope_emulator.base_url)
        ...  # your app now talks to the emulator

One emulator serves the whole session; its counters are reset before each test. Change
behaviour for a test with ``dashscope_emulator.configure(error_rate=0.1)``; settings are
restored afterwards. Loading this plugin needs nothing beyond the core package and
pytest: the emulator's own dependencies (the ``emulator`` extra) are imported only when
the fixture is used, and their absence is then an error naming the extra.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from dashscope_embed.emulator.server import Emulator


@pytest.fixture(scope="session")
def dashscope_emulator_session() -> Iterator[Emulator]:
    """One emulator for the whole test session."""
    from dashscope_embed import emulator as package  # its message names the extra if missing

    with package.Emulator() as emulator:
        yield emulator


@pytest.fixture
def dashscope_emulator(dashscope_emulator_session: Emulator) -> Iterator[Emulator]:
    """The session's emulator with fresh counters; settings changed in a test are undone."""
    emulator = dashscope_emulator_session
    saved = asdict(emulator.settings)
    emulator.reset()
    yield emulator
    emulator.configure(**saved)
