"""Encoder features of the built-in corpora, computed once and read back from eco-guard's cache."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from eco_guard.classifier import Encoder, background_prompts
from eco_guard.cache import ENTRY_MARKER, write_entry_marker
from eco_guard.classifier.features.feature_cache import corpus_features


def test_background_features_are_computed_once_and_read_back(
    encoder: Encoder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ECO_GUARD_CACHE", str(tmp_path))
    texts = background_prompts()[:40]
    calls: list[int] = []

    def compute(batch: list[str]) -> np.ndarray:
        calls.append(len(batch))
        return encoder.features(batch)

    # What earlier environments left: an encoder directory that was deleted, and a flat-layout file.
    stale = tmp_path / "features" / "model-0123456789abcdef"
    stale.mkdir(parents=True)
    write_entry_marker(stale, tmp_path / "deleted-venv" / "model", "x")
    flat = tmp_path / "features" / ("ab" * 12 + ".npy")
    flat.write_bytes(b"old")

    cold = corpus_features(encoder, texts, compute)
    warm = corpus_features(encoder, texts, compute)
    assert calls == [40]  # the second call read the cache
    np.testing.assert_array_equal(cold, warm)  # a cold fit uses exactly what a warm one reads
    np.testing.assert_allclose(warm, encoder.features(texts), atol=1e-5)
    assert not list(tmp_path.glob("features/*/*.tmp"))
    [entry_dir] = [d for d in (tmp_path / "features").iterdir()]  # the stale directory and file are gone
    assert (entry_dir / ENTRY_MARKER).is_file() and not stale.exists() and not flat.exists()
    # Other texts are another entry; a damaged entry is computed again, not trusted.
    corpus_features(encoder, texts[:20], compute)
    assert calls == [40, 20]
    for entry in tmp_path.glob("features/*/*.npy"):
        entry.write_bytes(b"garbage")
    np.testing.assert_array_equal(corpus_features(encoder, texts, compute), cold)
    assert calls == [40, 20, 40]
    # An unwritable cache only costs time.
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("ECO_GUARD_CACHE", str(blocked))
    np.testing.assert_array_equal(corpus_features(encoder, texts, compute), cold)

