"""Objects that must start afresh in a child process after ``os.fork()``.

A fork copies memory, not threads: a lock held by another thread stays held for ever
in the child, a count of requests in flight counts requests the child will never see
finish, and a pooled socket is shared with the parent (the two then read each other's
replies). Objects registered here get ``_after_fork()`` called in the child, before any
of its code runs.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class RenewsAfterFork(Protocol):
    def _after_fork(self) -> None: ...


# Weak references by id: pydantic models (the framework classes) are not hashable, so a
# WeakSet cannot hold them. An entry leaves when its object is collected.
_REGISTERED: dict[int, weakref.ReferenceType[RenewsAfterFork]] = {}


def renew_after_fork(obj: RenewsAfterFork) -> None:
    """Have ``obj._after_fork()`` called in every child forked from now on."""
    key = id(obj)
    _REGISTERED[key] = weakref.ref(obj, lambda _ref: _REGISTERED.pop(key, None))


def _renew_all() -> None:
    for ref in list(_REGISTERED.values()):
        obj = ref()
        if obj is not None:
            obj._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_all)
