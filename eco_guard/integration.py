"""Helpers shared by the framework integrations (LangChain, LlamaIndex).

Kept here, free of any framework import, so that both integration packages resolve a
``guard=`` argument the same way without one depending on the other.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator

from .decision import Decision
from .guard import Guard

GuardLike = Guard | str | os.PathLike[str]

_loaded: dict[Path, Guard] = {}
_loaded_lock = threading.Lock()


def as_guard(guard: GuardLike) -> Guard:
    """A ``Guard`` object as is, or the fitted-guard directory at a path, loaded once.

    Loading is cached per resolved directory because a chain typically names the same
    guard in several components (router, chat model, middleware); each loading its own
    copy would hold the local model in memory several times.
    """
    if isinstance(guard, Guard):
        return guard
    if not isinstance(guard, (str, os.PathLike)):
        raise TypeError(f"guard must be a Guard or the path of a fitted-guard directory, got {type(guard).__name__}")
    path = Path(guard).expanduser().resolve()
    with _loaded_lock:
        if path not in _loaded:
            _loaded[path] = Guard.load(path)
        return _loaded[path]


def diverts(decision: Decision) -> bool:
    """Whether a request leaves the normal path: ``corrupt`` and ``refuse`` do, while
    ``pass`` and shadow-mode ``flag`` (log only) go to the downstream model untouched."""
    return decision.action in ("corrupt", "refuse")


GuardField = Annotated[Guard, BeforeValidator(as_guard)]
"""Type of a pydantic ``guard`` field (LangChain and LlamaIndex classes are pydantic
models): accepts a ``Guard`` or a fitted-guard directory, see :func:`as_guard`."""
