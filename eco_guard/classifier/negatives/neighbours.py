"""Calibration negatives drawn from the policy's own examples, scored by heads that never saw them.

A policy without a ``classifier.calibration`` sample still has near neighbours of every
target: its retain examples, and every other target's forget examples. Each was trained
on by some head as a negative, so its in-sample score is optimistic; these functions
re-fit the heads without it (cross-fitting) so that the shared threshold is calibrated on
scores of texts the scoring head never saw (see
:func:`eco_guard.classifier.fit.fit_core`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import sparse

from eco_guard.classifier.calibration_groups import grouped_folds
from eco_guard.classifier.heads import TargetData, TargetPlan, head_scores, head_without, unique_texts


_TARGET_FOLDS = 2
"""Groups of targets whose forget texts are left out together when :func:`cross_target_scores`
scores them with the other heads. More groups keep the re-fitted heads closer to the final
ones, at ``groups x targets`` head fits. On D3 validation rows 2, 5, 10 and 20 (leave one
target out) groups all traced the same recall/false-positive curve; more groups only set
a slightly lower threshold (20: recall 0.780 at FPR 0.027, against 0.750 at 0.026 with 2)
for 3-5 times the fit time."""


_OVERLAP_RATIO = 0.95
"""Two targets overlap when their examples are at least this alike across the pair, relative to
within each (see :func:`overlapping_targets`); measured 1.03-1.12 for one topic or author split
in two against at most 0.87 for two different authors."""


def cross_fitted_retain_scores(
    plans: list[TargetPlan],
    texts: list[str],
    scores: np.ndarray,
    feats: sparse.csr_matrix,
    row_of: dict[str, int],
    emb: np.ndarray,
    lex: sparse.csr_matrix,
    group_of: Mapping[str, str] | None = None,
) -> tuple[list[str], np.ndarray]:
    """Max-over-targets scores of retain ``texts`` from heads that never trained on them, and the texts scored.

    ``scores``, ``emb`` and ``lex`` are the final heads' scores and the embedding and
    lexical rows of ``texts``; ``feats`` is the full training feature matrix, rows per
    ``row_of``. Each target's retain list is cut into two contiguous halves in the order
    given (files list an entity's rows together, so a random split would score near-copies
    of training rows); for each half a second head is fitted without it, and its scores
    replace the final head's for that half. Other heads never saw those texts (callers
    pass only texts trained as retain rows). A text no head can be re-fitted without (no
    negatives left) is dropped rather than scored optimistically. Costs two extra heads
    per target with retain examples. With calibration groups (``group_of``, see
    :mod:`eco_guard.classifier.calibration_groups`) the parts are slices of each group, five of them
    (:func:`~eco_guard.classifier.calibration_groups.grouped_folds`).
    """
    scores = scores.copy()
    index = {s: k for k, s in enumerate(texts)}
    keep = np.ones(len(texts), dtype=bool)
    for i, plan in enumerate(plans):
        for fold in grouped_folds(plan.retain, group_of):
            own = [index[s] for s in fold if s in index]
            if not own:
                continue
            head = head_without(plan, set(fold), feats, row_of)
            if head is None:
                keep[own] = False
                continue
            w, b = head
            scores[own, i] = head_scores(emb[own], lex[own], w[None, :], np.array([b]))[:, 0]
    return [s for s, k in zip(texts, keep) if k], scores[keep].max(axis=1)


def cross_target_scores(
    targets: list[TargetData],
    plans: list[TargetPlan],
    feats: sparse.csr_matrix,
    row_of: dict[str, int],
    emb: np.ndarray,
    lex: sparse.csr_matrix,
) -> list[np.ndarray]:
    """Every head's scores ``[texts, targets]`` of each target's forget texts, from heads fitted without them.

    Without a policy calibration set, the only negatives that look like real traffic are
    the retain examples, and they cover few entities (D3: 200 questions about 10 authors),
    so an unseen entity that resembles a target was flagged far above ``target_fpr``
    (validation: 5.3% of unseen TOFU questions at a 1% target). Another target's example
    is exactly such a neighbour for every head but its own (see :func:`neighbour_scores`).
    Every head trains on it as a negative, so it is scored cross-fitted: targets are dealt
    into :data:`_TARGET_FOLDS` groups, and for each group every head is fitted again
    without the group's forget texts (a head keeps its own), which costs ``groups x
    targets`` extra head fits. Item ``a`` of the list holds target ``a``'s distinct forget
    texts in order; NaN marks a head that cannot be fitted without them (no negatives left).
    """
    n = len(targets)
    folds = min(_TARGET_FOLDS, n)
    out: list[np.ndarray] = [np.zeros((0, n))] * n
    for fold in range(folds):
        members = range(fold, n, folds)
        weights = np.zeros((n, feats.shape[1]))
        bias = np.zeros(n)
        fitted = np.ones(n, dtype=bool)
        for j, plan in enumerate(plans):
            head = head_without(plan, {s for i in members if i != j for s in targets[i].forget}, feats, row_of)
            if head is None:
                fitted[j] = False
            else:
                weights[j], bias[j] = head
        for a in members:
            rows = [row_of[s] for s in unique_texts(targets[a].forget)]
            out[a] = np.where(fitted, head_scores(emb[rows], lex[rows], weights, bias), np.nan)
    return out


def neighbour_scores(cross: list[np.ndarray], overlapping: frozenset[tuple[int, int]]) -> np.ndarray:
    """Max score over the heads each target's forget texts are neighbours for.

    A text of target ``a`` flagged by ``a`` counts as caught, so ``a``'s own head never
    counts; nor does the head of a target that overlaps ``a`` (see
    :func:`overlapping_targets`), whose flags on ``a``'s texts are hits too, nor one that
    could not be fitted without them (NaN).
    """
    out: list[np.ndarray] = []
    for a, scores in enumerate(cross):
        skip = np.array([b == a or (a, b) in overlapping for b in range(scores.shape[1])])
        best = np.where(skip | np.isnan(scores), -np.inf, scores).max(axis=1, initial=-np.inf)
        out.append(best[np.isfinite(best)])  # a text no counted head could score is dropped
    return np.concatenate(out) if out else np.zeros(0)


def overlapping_targets(targets: list[TargetData], sentence: np.ndarray, row_of: dict[str, int]) -> frozenset[tuple[int, int]]:
    """Pairs of targets (both orders) whose forget examples are as alike across the pair as within each.

    Other targets' examples are calibration negatives only when they are about something
    else. When one topic is split into two targets, each head rightly flags the other's
    examples; counting those as false positives pushed the threshold so high that recall
    on new questions fell from 0.85 to 0.23 (WMDP-bio examples dealt into two targets of
    10). The test: mean cosine similarity of sentence embeddings across the pair, over the
    smaller mean within either target, at least :data:`_OVERLAP_RATIO`. Measured: 1.03-1.12
    for one topic or one author split in two, at most 0.87 between two different TOFU
    authors (D3's 190 pairs), about 0.5 between WMDP-bio and WMDP-cyber. Scores from the
    heads fitted without them could not tell these apart: with a few examples per target,
    a neighbouring author's head scores them as high as a split topic's. A target with one
    example has no within-similarity and is never judged overlapping.
    """
    unit = sentence / np.maximum(np.linalg.norm(sentence, axis=1, keepdims=True), 1e-12)
    embs = [unit[[row_of[s] for s in unique_texts(t.forget)]] for t in targets]

    def within(e: np.ndarray) -> float:
        n = len(e)
        return float((np.sum(e @ e.T) - n) / (n * (n - 1))) if n > 1 else np.nan

    inner = [within(e) for e in embs]
    pairs: set[tuple[int, int]] = set()
    for a in range(len(targets)):
        for b in range(a + 1, len(targets)):
            if not (np.isfinite(inner[a]) and np.isfinite(inner[b])):
                continue
            base = min(inner[a], inner[b])
            if base > 0 and float(np.mean(embs[a] @ embs[b].T)) >= _OVERLAP_RATIO * base:
                pairs |= {(a, b), (b, a)}
    return frozenset(pairs)
