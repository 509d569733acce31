"""Where a secret could hide in an exception, and a check that it hides in none of them.

An exception travels further than its message: error reporters pickle it, walk its
``__cause__`` and ``__context__`` chain, and capture the local variables of every frame
of its traceback (``pytest --showlocals``, Sentry's default). Each is checked here.
"""

from __future__ import annotations

import pickle
import traceback
from pathlib import Path

import httpx

TESTS_DIR = str(Path(__file__).resolve().parent)


def secret_leaks(error: BaseException, secret: str) -> list[str]:
    """Every place ``secret`` can be read from ``error``; empty when it is kept in."""
    places: list[str] = []
    seen: set[int] = set()

    def visit(exc: BaseException | None, where: str) -> None:
        if exc is None or id(exc) in seen:
            return
        seen.add(id(exc))
        texts = {"str": str(exc), "repr": repr(exc), "attributes": repr(vars(exc))}
        places.extend(f"{where} {label}" for label, text in texts.items() if secret in text)
        for name, value in vars(exc).items():
            if isinstance(value, (httpx.Request, httpx.Response)):
                places.append(f"{where}.{name} is an httpx object carrying the request headers")
        try:
            data = pickle.dumps(exc)
            pickle.loads(data)
        except Exception as problem:
            places.append(f"{where} does not round-trip through pickle ({problem!r})")
        else:
            if secret.encode() in data:
                places.append(f"{where} pickle")
        summary = traceback.TracebackException.from_exception(exc, capture_locals=True)
        for frame in summary.stack:
            if frame.filename.startswith(TESTS_DIR):
                continue  # the test's own locals are the caller's business
            for name, value in (frame.locals or {}).items():
                if secret in value:
                    places.append(f"{where}: local {name!r} of {frame.name} ({frame.filename})")
        visit(exc.__cause__, f"{where}.__cause__")
        visit(exc.__context__, f"{where}.__context__")
        inner_errors = getattr(exc, "errors", None)
        for index, inner in enumerate(inner_errors if isinstance(inner_errors, list) else []):
            if isinstance(inner, BaseException):
                visit(inner, f"{where}.errors[{index}]")
        inner_cause = getattr(exc, "cause", None)
        if isinstance(inner_cause, BaseException):
            visit(inner_cause, f"{where}.cause")

    visit(error, "error")
    return places
