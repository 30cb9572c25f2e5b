"""One linear head per target: which rows it trains on, how it is fitted, and how it scores.

Both sides of the product go through here: :mod:`eco_guard.classifier.fit` fits and
calibrates heads with these functions and :class:`~eco_guard.classifier.model.Classifier`
scores live prompts with the same ones, so a calibration score and a run-time score of
one text are computed by the same code (they differ only by the float rounding of a
differently padded encoder batch, ~1e-8), which is what lets the threshold keep its
stated false-positive rate.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
from scipy import sparse
from scipy.special import expit
from sklearn.linear_model import LogisticRegression

from eco_guard.errors import UserError

if TYPE_CHECKING:
    from eco_guard.classifier.features.encoder import Encoder


HEAD_C = 16.0
"""Inverse L2 strength of the heads. Unit-norm encoder features need weights of norm ~10-20 to
separate a topic, and the lexical block needs room to put large weights on a few rare
names: on TOFU (D1) C=4 reached TPR 0.96/0.93 on new questions/paraphrases, C=16 0.985/0.945
at the same calibrated FPR, with no FPR cost on the few-shot protocol (D3). Re-checked
for layer-pooled features on validation rows: C=32 and 64 were no better than 16."""


FeatureView = Literal["sentence", "layers"]
"""What the heads read from :meth:`Encoder.features`: the sentence-embedding block alone, or
every layer-pooled block. ``fit`` chooses per policy (see :func:`eco_guard.classifier.fit.select_features`)."""

VIEWS: tuple[FeatureView, ...] = get_args(FeatureView)


@dataclass(frozen=True)
class TargetData:
    """The labelled text a policy gives for one target."""

    id: str
    forget: list[str]
    retain: list[str]
    retain_groups: tuple[str | None, ...] = ()
    """The policy's group of each retain example, in order (None where it names none; empty when it names no groups):
    the neighbourhoods calibration holds its rate in (:mod:`eco_guard.classifier.calibration_groups`)."""


@dataclass(frozen=True)
class TargetPlan:
    """What one head trains on; ``retain`` are its retain rows (left out in turn when cross-fitting)."""

    train_texts: list[str]
    train_labels: np.ndarray
    retain: list[str]
    n_forget: int
    n_retain_train: int
    n_background_train: int


def plan_target(target: TargetData, targets: list[TargetData], bg_train: list[str]) -> TargetPlan:
    """Choose one head's training rows: its forget texts against everything it must not flag.

    A forget text is never a negative for its own target (if the background or another
    target contains it, the policy's forget list wins).
    """
    positives = unique_texts(target.forget)
    forget_set = set(positives)
    retain_train = [s for s in unique_texts(target.retain) if s not in forget_set]
    other_forget = [s for t in targets if t.id != target.id for s in t.forget]

    negatives = [s for s in unique_texts(retain_train + other_forget + bg_train) if s not in forget_set]
    if not negatives:
        raise UserError(f"target {target.id!r}: no negative examples to train on; add retain examples or background prompts")
    labels = np.concatenate([np.ones(len(positives), dtype=np.int64), np.zeros(len(negatives), dtype=np.int64)])
    return TargetPlan(
        train_texts=positives + negatives,
        train_labels=labels,
        retain=retain_train,
        n_forget=len(positives),
        n_retain_train=len(retain_train),
        n_background_train=len(set(negatives) & set(bg_train)),
    )


def fit_head(features: sparse.csr_matrix, labels: np.ndarray) -> tuple[np.ndarray, float]:
    """One logistic head (weights, intercept); balanced so a few forget examples are not outvoted."""
    head = LogisticRegression(C=HEAD_C, class_weight="balanced", max_iter=5000)
    head.fit(features, labels)
    return head.coef_[0], float(head.intercept_[0])


def head_without(
    plan: TargetPlan, left_out: set[str], feats: sparse.csr_matrix, row_of: dict[str, int]
) -> tuple[np.ndarray, float] | None:
    """The plan's head fitted again without the texts in ``left_out`` (for cross-fitted scores).

    None when leaving them out empties one class: there is then no head that never saw them.
    """
    rest = [k for k, s in enumerate(plan.train_texts) if s not in left_out]
    labels = plan.train_labels[rest]
    if labels.size == 0 or labels.min() == labels.max():
        return None
    return fit_head(feats[[row_of[plan.train_texts[k]] for k in rest]], labels)


def view_columns(feats: np.ndarray, view: FeatureView, dim: int) -> np.ndarray:
    """The columns of :meth:`Encoder.features` a view reads; ``sentence`` is the last block, rescaled to unit norm.

    Fitting and scoring both go through here, so a text's features, and so its score,
    are computed the same way in calibration and at run time.
    """
    if view == "layers":
        return feats
    return feats[:, -dim:] * np.float32(np.sqrt(feats.shape[1] // dim))


def view_width(encoder: Encoder, view: FeatureView) -> int:
    return encoder.feature_dim if view == "layers" else encoder.dim


def features(emb: np.ndarray, lex: sparse.csr_matrix) -> sparse.csr_matrix:
    """Embedding and lexical blocks side by side (the lexical rows already carry the lexicon's weight)."""
    return sparse.hstack([sparse.csr_matrix(emb.astype(np.float64)), lex], format="csr")


def head_scores(emb: np.ndarray, lex: sparse.csr_matrix, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Sigmoid of the linear heads, in float64 so thresholds compare at full precision.

    The same linear function as ``features(emb, lex) @ weights.T``, computed per block:
    stacking a dense embedding into a sparse matrix on every request cost more than the
    products themselves.
    """
    dim = emb.shape[1]
    linear = emb.astype(np.float64) @ weights[:, :dim].T + np.asarray(lex @ weights[:, dim:].T)
    return expit(linear + bias)


def unique_texts(texts: Iterable[str]) -> list[str]:
    """Distinct non-blank texts in first-seen order, so splits depend only on content and seed."""
    return list(dict.fromkeys(s for s in texts if s.strip()))
