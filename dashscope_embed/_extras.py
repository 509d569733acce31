"""Optional dependencies: which extra provides which module, and the error that says so.

The core needs only httpx and pydantic. Everything else comes with an extra, and a
missing one must say which extra to install rather than surface a bare
``ModuleNotFoundError`` from deep inside an import.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

# The top-level modules each extra brings, as ``ModuleNotFoundError.name`` reports them
# (kept equal to pyproject.toml's extras by a test).
EXTRA_MODULES: dict[str, frozenset[str]] = {
    "llama-index": frozenset({"llama_index"}),
    "langchain": frozenset({"langchain_core"}),
    "emulator": frozenset({"uvicorn", "numpy", "orjson"}),
    "bulk": frozenset({"numpy", "pyarrow", "simdjson"}),
    "tokenizer": frozenset({"dashscope", "tiktoken"}),
    "ray": frozenset({"ray", "pyarrow", "numpy"}),
}


class MissingExtraError(ModuleNotFoundError):
    """An optional feature was used without its extra installed.

    A :class:`ModuleNotFoundError` (so ``except ImportError`` still catches it) whose
    message names the feature, the extra and the ``pip install`` line.
    """

    def __init__(self, feature: str, extra: str, module: str) -> None:
        self.feature, self.extra = feature, extra
        super().__init__(
            f"{feature} needs the '{extra}' extra: pip install 'dashscope-embed[{extra}]' "
            f"(the module {module!r} is not installed)",
            name=module,
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.feature, self.extra, self.name))


@contextmanager
def needs_extra(feature: str, extra: str) -> Iterator[None]:
    """Turn a missing module of ``extra`` into a :class:`MissingExtraError`.

    A missing module the extra does not bring (a broken install of something else) is
    re-raised unchanged.
    """
    try:
        yield
    except MissingExtraError:
        raise
    except ModuleNotFoundError as error:
        root = (error.name or "").split(".")[0]
        if root not in EXTRA_MODULES[extra]:
            raise
        raise MissingExtraError(feature, extra, root) from None


@contextmanager
def needs_package(feature: str, package: str) -> Iterator[None]:
    """Turn a missing package that no extra brings (a vector store's own integration,
    which the user picks) into an ``ImportError`` naming ``feature`` and ``package``."""
    try:
        yield
    except ImportError as error:
        raise ImportError(f"{feature}: pip install {package}") from error
