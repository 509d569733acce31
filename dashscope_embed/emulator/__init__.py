"""A local DashScope emulator: test your RAG app offline, in CI, with no key.

Speaks the native and OpenAI-compatible embedding protocols, the async batch tasks, the
Batch API and multimodal embedding; validates requests the way the service does; gives
deterministic vectors that behave like embeddings; injects latency, throttling, 500s and
dropped connections on demand. Needs ``pip install dashscope-embed[emulator]``.

Three ways to run it:

* ``python -m dashscope_embed.emulator --port 8000`` (or ``dashscope-emulator``)
* ``with Emulator() as emu: ...`` in Python
* the ``dashscope_emulator`` pytest fixture, registered automatically
"""

from __future__ import annotations

from dashscope_embed.emulator.app import EmulatorApp
from dashscope_embed.emulator.server import Emulator, service_or_emulator
from dashscope_embed.emulator.state import EmulatorSettings

__all__ = ["Emulator", "EmulatorApp", "EmulatorSettings", "service_or_emulator"]
