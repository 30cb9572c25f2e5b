"""Lexical features: which words and word pairs of the forget examples a prompt reuses.

Sentence embeddings place "Where was Basil Mahfouz Al-Kuwaiti born?" right next to any
other question about any other author's birthplace: they capture the kind of question,
not the rare name that makes it about a forget target. Entity-like targets (people,
products, code names) are recognised by exactly such rare words, so the classifier
adds a TF-IDF view over the vocabulary of the forget examples. Restricting the
vocabulary to forget-example terms keeps it small (a few thousand terms at most) and
means the features can only say "this prompt shares words with something to forget";
the idf, computed over every training text including the background and retain
examples, makes words that ordinary prompts use anyway ("the", "author", "what")
nearly worthless, so the head's weight goes to the distinctive ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import CountVectorizer

TOKEN_PATTERN = r"(?u)\b\w+\b"
"""Single letters and digits count: initials, years and version numbers are identifying."""

NGRAM_RANGE = (1, 2)
"""Bigrams carry full names ("Jaime Vasquez") and terms ("gain of function") whose
parts are common words on their own."""


@dataclass(frozen=True)
class Lexicon:
    """A fixed vocabulary with idf weights; turns texts into TF-IDF rows of norm ``weight``.

    ``weight`` scales the lexical block against the unit-norm encoder block the heads
    read beside it: how much a prompt's shared rare words count against its meaning
    (0: not at all, the rows are all zero, for topics whose words their field shares).
    Which weight suits a policy is measured by ``fit_heads`` (:mod:`eco_guard.classifier.fit`).
    """

    terms: tuple[str, ...]
    idf: np.ndarray
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.idf.shape != (len(self.terms),):
            raise ValueError(f"idf has shape {self.idf.shape}, expected ({len(self.terms)},)")
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not (np.isfinite(w) and w >= 0):
            raise ValueError(f"lexical weight must be a number >= 0 (0: no lexical block), got {w!r}")
        # Built once and used read-only afterwards, so one Lexicon is safe to share between
        # threads; the warm-up transform settles sklearn's lazily validated vocabulary.
        vectorizer = _vectorizer(list(self.terms) or ["\x00"])
        vectorizer.transform(["warm up"])
        object.__setattr__(self, "_vectorizer", vectorizer)

    @property
    def size(self) -> int:
        """Number of lexical feature columns."""
        return len(self.terms)

    @classmethod
    def fit(cls, vocabulary_texts: Sequence[str], corpus: Sequence[str], weight: float = 1.0) -> Lexicon:
        """Vocabulary from ``vocabulary_texts`` (the forget examples), idf from ``corpus``.

        Smoothed idf (as in sklearn) with the vocabulary texts counted as documents too,
        so a term seen only in forget examples gets the highest weight, not infinity.
        """
        terms = sorted(_vectorizer(None).fit(list(vocabulary_texts)).vocabulary_)
        counts = _vectorizer(terms).transform(list(corpus))
        df = np.bincount(counts.nonzero()[1], minlength=len(terms)).astype(np.float64)
        idf = np.log((1.0 + len(corpus)) / (1.0 + df)) + 1.0
        return cls(tuple(terms), idf, weight)

    def transform(self, texts: Sequence[str]) -> sparse.csr_matrix:
        """Sublinear TF-IDF rows, each of L2 norm ``weight`` (or all zero when no term matches)."""
        counts = self._vectorizer.transform(list(texts)).astype(np.float64)  # type: ignore[attr-defined]
        if not self.terms:
            return sparse.csr_matrix((counts.shape[0], 0))
        counts.data = 1.0 + np.log(counts.data)
        rows = counts.multiply(self.idf[None, :]).tocsr()
        norms = np.sqrt(np.asarray(rows.multiply(rows).sum(axis=1)).ravel())
        norms[norms == 0.0] = 1.0
        return sparse.diags(self.weight / norms) @ rows


def analyzer() -> Callable[[str], list[str]]:
    """The lexical block's tokenisation as a function: a text's lower-cased words and word pairs.

    For other code that must split texts exactly as the lexical features do (the baseline
    detectors of benchmarks/baselines.py).
    """
    return _vectorizer(None).build_analyzer()


def _vectorizer(vocabulary: list[str] | None) -> CountVectorizer:
    """The one tokenisation used for fitting and scoring, so they can never disagree."""
    return CountVectorizer(
        lowercase=True,
        token_pattern=TOKEN_PATTERN,
        ngram_range=NGRAM_RANGE,
        vocabulary=vocabulary,
        dtype=np.float64,
    )
