"""Encoder features of fixed corpora, computed once per encoder and kept in eco-guard's cache.

Every fit trains and calibrates on the built-in background (754 written prompts, or 2,786
with the stand-ins for near negatives; see :mod:`eco_guard.classifier.negatives.background`).
Embedding it took a few seconds of every fit and gives the same numbers every time, so it is
done once per encoder and corpus and stored under ``$ECO_GUARD_CACHE/features/`` (or
``~/.cache/eco-guard``): one directory per encoder (its model files' names, sizes and
mtimes, feature layers, precision and runtime), one file per corpus (its texts). A new
directory removes those of encoders that were deleted or replaced (:mod:`eco_guard.cache`),
and the files of the earlier flat layout. Only the built-in corpora are cached, so the
cache grows with encoders (a few tens of MB each), never with policies or traffic. The
stored array is exactly the computed one, so fitting the same policy twice gives
byte-identical heads whether or not the cache was warm. A cache that cannot be written
(read-only home) only costs time."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from eco_guard.cache import cache_dir, digest, model_files_key, prune_superseded, write_entry_marker

if TYPE_CHECKING:
    from eco_guard.classifier.features.encoder import Encoder

_FLAT_NAME = re.compile(r"[0-9a-f]{24}\.npy")

_FORMAT = 1
"""Bump when what is stored changes, so stale entries are ignored."""


def corpus_features(encoder: Encoder, texts: Sequence[str], compute: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """``compute(texts)`` (the encoder's ``[n, feature_dim]`` features), from the cache when present."""
    texts = list(texts)
    entry = cache_dir() / "features" / f"{encoder.path.parent.name}-{_encoder_key(encoder)}"
    path = entry / f"{_corpus_key(texts)}.npy"
    try:
        cached = np.load(path, allow_pickle=False)
        if cached.shape == (len(texts), encoder.feature_dim):
            return cached
    except (OSError, ValueError):  # absent, truncated or unreadable: compute it again
        pass
    feats = compute(texts)
    tmp: str | None = None
    try:
        if not entry.is_dir():
            entry.mkdir(parents=True, exist_ok=True)
            identity = model_files_key(encoder.path)
            write_entry_marker(entry, encoder.path, identity)
            prune_superseded(entry, encoder.path, identity)
            _remove_flat_layout(entry.parent)
        fd, tmp = tempfile.mkstemp(dir=entry, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, feats, allow_pickle=False)
        os.replace(tmp, path)  # readers see the whole array or none
    except OSError:  # a full disk leaves no half-written file behind
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return feats  # .npy stores float32 exactly, so a cold fit uses the very array a warm one reads


def _remove_flat_layout(features: Path) -> None:
    """Delete the files of the layout before per-encoder directories (``features/<24 hex>.npy``): nothing reads them now."""
    for old in features.glob("*.npy"):
        if _FLAT_NAME.fullmatch(old.name):
            old.unlink(missing_ok=True)


def _encoder_key(encoder: Encoder) -> str:
    """What makes two encoders' features differ: the model files, feature layers, precision and runtime."""
    return digest([str(_FORMAT), encoder.precision, encoder.runtime, repr(encoder.feature_layers), model_files_key(encoder.path)])[:16]


def _corpus_key(texts: list[str]) -> str:
    return digest(texts)[:24]
