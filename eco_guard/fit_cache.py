"""Content-addressed results of earlier fits, so refitting an edited policy redoes only what changed.

A user writing a policy refits it many times, usually after editing one target. Two
things a fit computes depend only on their inputs and cost generation time: the clean
model's answers to the forget questions, and each target's strength search. Both are
stored under ``$ECO_GUARD_CACHE/fits/<model key>/`` (``~/.cache/eco-guard`` by default;
``$ECO_GUARD_FIT_CACHE`` moves it),
one small JSON file per entry, named by the SHA-256 of everything the result depends
on (model identity, prompt, decoding options, corruption, objective, search budget and
:data:`FORMAT`). An entry can therefore never be stale: different inputs give a
different name. The model key covers the model files' names, sizes and mtimes and the
device and dtype the model ran in (:func:`model_key`), and a new model directory removes
the entries of models that were replaced (:func:`eco_guard.cache.prune_superseded`).

A cache that cannot be written (read-only home) only costs time; an unreadable entry is
recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from .cache import cache_dir, prune_superseded, write_entry_marker

#: bump when what an entry holds changes meaning, so old entries are ignored
FORMAT = 2


def fits_root() -> Path:
    """``$ECO_GUARD_FIT_CACHE``, or ``fits/`` in eco-guard's cache (tests point it at a temporary directory)."""
    env = os.environ.get("ECO_GUARD_FIT_CACHE")
    return Path(env).expanduser() if env else cache_dir() / "fits"


def model_key(model_dir: Path, device: str, dtype: str) -> str:
    """Identity of a loaded model: its files (names, sizes, mtimes) and where and how it runs."""
    from .cache import model_files_key

    return hashlib.sha256(f"{model_files_key(model_dir)}|{device}|{dtype}|{FORMAT}".encode()).hexdigest()[:16]


def content_digest(content: object) -> str:
    """SHA-256 of ``content`` as canonical JSON (sorted keys): the name of its entry."""
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


class FitCache:
    """Entries of one model; counts what one fit found (``hits``) and had to compute (``misses``).

    One instance lives for one fit, so its counters say what that fit reused.
    """

    def __init__(self, key: str, *, source: Path | None = None, root: Path | None = None) -> None:
        self.dir = (root or fits_root()) / key
        self.hits: Counter[str] = Counter()
        self.misses: Counter[str] = Counter()
        self._writable = True
        if source is not None:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                write_entry_marker(self.dir, source, key)
                prune_superseded(self.dir, source, key)
            except OSError:
                self._writable = False

    def _path(self, kind: str, content: object) -> Path:
        digest = content_digest(content)
        return self.dir / kind / digest[:2] / f"{digest}.json"

    def get(self, kind: str, content: object) -> Any | None:
        """The stored value for ``content``, or None (counted as a miss)."""
        try:
            value = json.loads(self._path(kind, content).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.misses[kind] += 1
            return None
        self.hits[kind] += 1
        return value

    def put(self, kind: str, content: object, value: object) -> None:
        """Store ``value`` for ``content`` atomically; a failed write is ignored (it only costs time)."""
        if not self._writable:
            return
        path = self._path(kind, content)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".entry.", dir=path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(value, fh, ensure_ascii=False)
            os.replace(tmp, path)
        except OSError:
            self._writable = False

    def reused(self, kind: str) -> tuple[int, int]:
        """(entries found, entries looked up) of ``kind`` in this fit."""
        return self.hits[kind], self.hits[kind] + self.misses[kind]
