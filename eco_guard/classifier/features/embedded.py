"""Encoder features of every text one fit reads, by text: each distinct text embedded once.

A fit decides in steps what it trains and calibrates on: the policy's examples first,
then whether the stand-ins for near negatives join (which depends on how near the retain
examples are to their targets, measured on the examples' own embeddings), then the
name-swapped copies of some targets' examples. Each step embeds only texts no earlier
step has, and the built-in corpora come from the feature cache, each corpus on its own,
so a policy that leaves the stand-ins out still finds the chat prompts cached.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from eco_guard.classifier.features.feature_cache import corpus_features
from eco_guard.classifier.heads import unique_texts

if TYPE_CHECKING:
    from eco_guard.classifier.features.encoder import Encoder


_EMBED_CHUNK = 256
"""Texts per progress-bar step while fitting; large enough to keep the encoder batched."""


class Embedded:
    """A growing table of encoder features (``[n, encoder.feature_dim]``, float32), one row per distinct text."""

    def __init__(self, encoder: Encoder, *, progress: bool) -> None:
        self.encoder = encoder
        self.progress = progress
        self._row: dict[str, int] = {}
        self._blocks: list[np.ndarray] = []

    def add(self, texts: Sequence[str], *, desc: str = "embedding examples") -> None:
        """Embed the distinct texts not yet in the table."""
        new = [s for s in unique_texts(texts) if s not in self._row]
        self._append(new, embed_texts(self.encoder, new, progress=self.progress, desc=desc))

    def add_corpus(self, corpus: Sequence[str], *, cached: bool) -> None:
        """Embed a whole background corpus, from the feature cache when ``cached`` (built-in corpora only: the cache stays bounded)."""
        texts = unique_texts(corpus)

        def compute(batch: list[str]) -> np.ndarray:
            return embed_texts(self.encoder, batch, progress=self.progress, desc="embedding background (once per encoder)")

        feats = corpus_features(self.encoder, texts, compute) if cached else compute(texts)
        keep = [k for k, s in enumerate(texts) if s not in self._row]
        self._append([texts[k] for k in keep], feats[keep])

    def matrix(self, texts: Sequence[str]) -> np.ndarray:
        """The rows of ``texts``, in their order (all must have been added)."""
        if len(self._blocks) != 1:  # joined once per call that follows new texts, not per text
            self._blocks = [np.concatenate(self._blocks) if self._blocks else np.zeros((0, self.encoder.feature_dim), np.float32)]
        table = self._blocks[0]
        return table[[self._row[s] for s in texts]]

    def _append(self, texts: list[str], feats: np.ndarray) -> None:
        if not texts:
            return
        first = len(self._row)
        self._row.update((s, first + k) for k, s in enumerate(texts))
        self._blocks.append(np.asarray(feats, dtype=np.float32))


def embed_texts(encoder: Encoder, texts: list[str], *, progress: bool, desc: str = "embedding examples") -> np.ndarray:
    """Embed in chunks so a long fit shows progress; chunking does not change the result."""
    out = np.empty((len(texts), encoder.feature_dim), dtype=np.float32)
    with tqdm(total=len(texts), desc=desc, unit="text", disable=not progress or not texts, file=sys.stderr) as bar:
        for start in range(0, len(texts), _EMBED_CHUNK):
            chunk = texts[start : start + _EMBED_CHUNK]
            out[start : start + len(chunk)] = encoder.features(chunk)
            bar.update(len(chunk))
    return out
