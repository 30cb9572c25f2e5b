"""Encoder features of fixed corpora, computed once per encoder and kept in eco-guard's cache.

Every fit trains and calibrates on the built-in background (754 written prompts, or 2,786
with the stand-ins for near negatives; see :mod:`eco_guard.classifier.background`).
Embedding it took a few seconds of every fit and gives the same numbers every time, so it is
done once per encoder and corpus and stored under ``$ECO_GUARD_CACHE/features/`` (or
``~/.cache/eco-guard``), keyed by the texts, the encoder's model files (names, sizes,
mtimes), its feature layers, precision and runtime. Only the built-in corpora are cached, so
the cache grows with encoders (a few tens of MB each), never with policies or traffic. The stored array is exactly the computed one, so fitting the same
policy twice gives byte-identical heads whether or not the cache was warm. A cache that
cannot be written (read-only home) only costs time."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from eco_guard.runner.store import cache_dir

if TYPE_CHECKING:
    from eco_guard.classifier.encoder import Encoder

_FORMAT = 1
"""Bump when what is stored changes, so stale entries are ignored."""


def model_files_identity(model_dir: Path) -> list[str]:
    """The model directory's path and every file's name, size and mtime.

    Hashing the weights on every start would cost more than the load; a reinstalled
    package changes sizes or mtimes, which invalidates anything keyed on this.
    """
    parts = [str(model_dir.resolve())]
    for path in sorted(model_dir.rglob("*")):
        if path.is_file():
            st = path.stat()
            parts.append(f"{path.relative_to(model_dir)}|{st.st_size}|{st.st_mtime_ns}")
    return parts


def corpus_features(encoder: Encoder, texts: Sequence[str], compute: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """``compute(texts)`` (the encoder's ``[n, feature_dim]`` features), from the cache when present."""
    texts = list(texts)
    key = _key(encoder, texts)
    path = cache_dir() / "features" / f"{key}.npy"
    try:
        cached = np.load(path, allow_pickle=False)
        if cached.shape == (len(texts), encoder.feature_dim):
            return cached
    except (OSError, ValueError):  # absent, truncated or unreadable: compute it again
        pass
    feats = compute(texts)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, feats, allow_pickle=False)
        os.replace(tmp, path)  # readers see the whole array or none
    except OSError:  # a full disk leaves no half-written file behind
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return feats  # .npy stores float32 exactly, so a cold fit uses the very array a warm one reads


def _key(encoder: Encoder, texts: list[str]) -> str:
    digest = hashlib.sha256()
    ident = [str(_FORMAT), encoder.precision, encoder.runtime, repr(encoder.feature_layers), *model_files_identity(encoder.path)]
    for part in ident + texts:
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:24]
