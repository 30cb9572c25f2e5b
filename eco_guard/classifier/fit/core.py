"""Heads on given features, and the one threshold they share.

:func:`fit_core` is the inner fit: the real fit runs it once, and choosing the features
(:mod:`eco_guard.classifier.fit.selection`) runs it on each candidate and fold.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

import numpy as np
from tqdm import tqdm

from eco_guard.classifier.calibration import Calibration, joint_threshold
from eco_guard.classifier.calibration_groups import Groups, group_report, grouped_sources
from eco_guard.classifier.features.lexical import Lexicon
from eco_guard.classifier.fit.held_out import RETAIN, NegativeSplit, held_out_max_scores
from eco_guard.classifier.heads import TargetData, TargetPlan, features, fit_head, head_scores, plan_target, unique_texts
from eco_guard.classifier.negatives.neighbours import cross_fitted_retain_scores, cross_target_scores, neighbour_scores
from eco_guard.errors import UserError


@dataclass(frozen=True)
class CoreFit:
    """Fitted heads, their shared calibration, and every embedded text's scores."""

    weights: np.ndarray
    bias: np.ndarray
    lexicon: Lexicon
    calibration: Calibration
    plans: list[TargetPlan]
    scores: np.ndarray


def fit_core(
    targets: list[TargetData],
    feats: np.ndarray,
    row_of: dict[str, int],
    texts: list[str],
    split: NegativeSplit,
    target_fpr: float,
    lexical_weight: float,
    *,
    overlapping: frozenset[tuple[int, int]] = frozenset(),
    progress: bool = False,
    estimate: bool = True,
    retain_name: str = RETAIN,
    groups: Groups | None = None,
) -> CoreFit:
    """Heads for ``targets`` on already-embedded ``feats`` (rows per ``row_of``) and their joint threshold.

    See :func:`~eco_guard.classifier.fit.procedure.fit_heads` for which texts train and which calibrate; ``overlapping``
    (target index pairs, see :func:`overlapping_targets`) says whose examples are not each
    other's calibration neighbours. ``estimate`` adds the 2-fold false-positive estimate
    to the calibration note (skipped by the inner fits of :func:`~eco_guard.classifier.fit.selection.select_features`, which
    only need the threshold). ``retain_name`` names the cross-fitted retain texts in the
    calibration note (see :func:`~eco_guard.classifier.fit.held_out.retain_source_name`).
    ``groups`` (:mod:`~eco_guard.classifier.calibration_groups`) cuts the calibration set,
    or the cross-fitted retain texts, into neighbourhoods that each calibrate on their own.
    """
    plans = [plan_target(t, targets, split.bg_train) for t in targets]
    # Held out from every head: no text any head trains on may calibrate the shared threshold.
    trained = {s for plan in plans for s in plan.train_texts}
    sources = {
        "calibration": [s for s in split.calibration_set if s not in trained],
        **{name: [s for s in held if s not in trained] for name, held in split.bg_cal.items()},
    }
    # Texts trained only as some head's retain rows: cross-fitting keeps them unseen.
    not_retain = {s for t in targets for s in t.forget} | set(split.bg_train)
    retain_cal = [] if split.calibration_set else unique_texts(s for plan in plans for s in plan.retain if s not in not_retain)

    lexicon = Lexicon.fit([s for t in targets for s in t.forget], sorted(trained), lexical_weight)
    lex = lexicon.transform(texts)
    train_feats = features(feats, lex)
    weights = np.zeros((len(targets), train_feats.shape[1]))
    bias = np.zeros(len(targets))
    for i, plan in enumerate(tqdm(plans, desc="fitting heads", unit="target", disable=not progress, file=sys.stderr)):
        weights[i], bias[i] = fit_head(train_feats[[row_of[s] for s in plan.train_texts]], plan.train_labels)

    # Calibrate with the exact scoring code used at run time, so a calibration score and
    # a live score of the same text differ only by the float rounding of a differently
    # padded encoder batch (~1e-8).
    all_scores = head_scores(feats, lex, weights, bias)
    max_scores = {name: held_out_max_scores(all_scores, row_of, v, split.pieces) for name, v in sources.items() if v}
    grouped: list[tuple[str, list[str], np.ndarray]] = []  # (source, texts, max scores) cut by groups
    if groups is not None and "calibration" in max_scores:
        grouped.append(("calibration", sources["calibration"], max_scores["calibration"]))
        max_scores.update(grouped_sources(*grouped[-1], groups, target_fpr))
    if not split.calibration_set:
        # Without a traffic sample, the policy's own examples are the nearest neighbours we
        # know: retain texts, and for each head the other targets' forget texts. Both were
        # trained on, so both are scored cross-fitted; pooled, they are one source.
        near: list[np.ndarray] = []
        if retain_cal:
            rows = [row_of[s] for s in retain_cal]
            scored, retain_scores = cross_fitted_retain_scores(
                plans, retain_cal, all_scores[rows], train_feats, row_of, feats[rows], lex[rows], groups.of if groups else None
            )
            if groups is not None:  # neighbourhoods the pooled threshold fails get their own; other targets' examples apart
                grouped.append((retain_name, scored, retain_scores))
                max_scores = {**grouped_sources(*grouped[-1], groups, target_fpr), **max_scores}
            else:
                near.append(retain_scores)
        others = np.zeros(0)
        if len(overlapping) < len(targets) * (len(targets) - 1):  # some pair of targets are each other's neighbours
            others = neighbour_scores(cross_target_scores(targets, plans, train_feats, row_of, feats, lex), overlapping)
        pooled = np.concatenate([*near, others])
        if pooled.size:
            # Named for what it holds: retain alone when every target overlaps every other.
            name = (f"{retain_name} and other targets' examples" if near else "other targets' examples") if others.size else retain_name
            max_scores = {name: pooled, **max_scores}
    if not max_scores:
        raise UserError("no held-out negatives to calibrate the threshold on; add retain examples or background prompts")
    calibration = joint_threshold(max_scores, target_fpr, len(targets), estimate=estimate)
    if groups is not None and grouped:
        reports = [group_report(*g, groups, calibration.threshold, target_fpr, list(max_scores)) for g in grouped]
        over = tuple(item for _, o in reports for item in o.items())
        notes = ". ".join(note for note, _ in reports)
        calibration = replace(calibration, note=f"{calibration.note}. Calibration groups: {notes}", estimated_fpr=calibration.estimated_fpr + over)
    if overlapping:
        pairs = ", ".join(sorted(f"{targets[a].id!r} and {targets[b].id!r}" for a, b in overlapping if a < b))
        calibration = replace(
            calibration,
            note=f"{calibration.note}. Targets whose examples are as alike across the pair as within each, so not "
            f"counted as each other's neighbours (consider merging them): {pairs}",
        )
    return CoreFit(weights, bias, lexicon, calibration, plans, all_scores)
