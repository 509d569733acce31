"""Test-only packages that cannot be installed beside the oldest supported frameworks.

The floors run (``scripts/test_floors.sh``) installs the lowest versions the package
declares; a few test tools (LangChain's standard suites, langchain-qdrant,
langchain-classic, the Milvus integrations) need newer framework releases than our floors,
so that run leaves them out and sets ``DASHSCOPE_EMBED_FLOORS=1``. Only then may a test
that needs one skip; in the normal run a missing one is an error, so a broken install
never passes as a skip.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

FLOORS_RUN = os.environ.get("DASHSCOPE_EMBED_FLOORS") == "1"

# The top-level names of those packages, for code (notebooks) that imports them.
LEFT_OUT_OF_THE_FLOORS_RUN = (
    "langchain_tests",
    "langchain_qdrant",
    "langchain_classic",
    "langchain_milvus",
    "llama_index.vector_stores.milvus",
    "ray",
)


def require(module: str) -> ModuleType:
    """Import ``module``; in the floors run, skip the calling test (or module) without it."""
    if FLOORS_RUN:
        why = "cannot be installed beside the floors (scripts/floors-overrides.txt)"
        return pytest.importorskip(module, reason=f"{module} {why}")
    return importlib.import_module(module)


def require_those_used_by(source: str) -> None:
    """``require`` each left-out package that ``source`` (a notebook's text) imports."""
    for module in LEFT_OUT_OF_THE_FLOORS_RUN:
        if f"from {module}" in source or f"import {module}" in source:
            require(module)
