"""Fitting a policy's heads, step by step: which texts train and which calibrate, which features, one shared threshold.

The procedure behind ``eco-guard fit``'s classifier (:func:`fit_heads`): embed every text
once, choose the feature view and lexical weight by held-out recall on the policy's own
forget examples (:mod:`eco_guard.classifier.fit.selection`), fit one logistic head per
target (:mod:`eco_guard.classifier.heads`, :mod:`eco_guard.classifier.fit.core`), and
calibrate one threshold for all heads by split conformal prediction on every source of
held-out negatives (:mod:`eco_guard.classifier.calibration`,
:mod:`eco_guard.classifier.fit.held_out`), including the policy's own examples scored
cross-fitted (:mod:`eco_guard.classifier.negatives.neighbours`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Required, TypedDict

import numpy as np
from sklearn.metrics import roc_auc_score

from eco_guard.canonical import Canonicalizer
from eco_guard.classifier.calibration import Calibration
from eco_guard.classifier.calibration_groups import fit_groups, probe_neighbourhoods
from eco_guard.classifier.features.embedded import Embedded
from eco_guard.classifier.features.lexical import Lexicon
from eco_guard.classifier.fit.core import CoreFit, fit_core
from eco_guard.classifier.fit.held_out import (
    NO_NEAR_NEGATIVES,
    NegativeSplit,
    lacks_near_negatives,
    retain_source_name,
    split_negatives,
)
from eco_guard.classifier.fit.selection import select_features
from eco_guard.classifier.heads import VIEWS, FeatureView, TargetData, head_scores, unique_texts, view_columns
from eco_guard.classifier.negatives.background import background_prompts, near_negative_stand_ins
from eco_guard.classifier.negatives.neighbours import overlapping_targets
from eco_guard.classifier.negatives.swaps import (
    MIN_NEAR_RETAIN,
    Swaps,
    candidate_swaps,
    entity_names,
    lacks_near_retain,
    near_retain_counts,
    with_swapped_retain,
    without_mentions,
)
from eco_guard.errors import UserError

if TYPE_CHECKING:
    from eco_guard.classifier.features.encoder import Encoder


@dataclass(frozen=True)
class TargetFit:
    """What fitting one head used and achieved, for the fit report.

    ``n_calibration`` and ``calibration`` describe the threshold shared by all heads
    (see :func:`fit_heads`), so they are the same for every target of one fit.
    """

    id: str
    n_forget: int
    n_retain_train: int
    """Retain rows the head trained on, name-swapped copies included."""
    n_background_train: int
    n_calibration: int
    calibration: Calibration
    train_auc: float
    """AUROC on the head's own training rows: a sanity check, not an estimate of test quality."""
    view_note: str = ""
    """Which features ``fit`` chose (view and lexical weight) and each candidate's held-out recall
    (shared by all targets)."""
    forget_scores: tuple[float, ...] = ()
    retain_scores: tuple[float, ...] = ()
    """The final head's in-sample scores on the target's forget and retain texts (the policy's
    own, not the name-swapped copies), in the order given (blank texts skipped), for the fit
    report's histograms: scoring them again would embed every example a second time, which
    on a large policy doubled the fit."""
    n_swapped_retain: int = 0
    """How many of ``n_retain_train`` are name-swapped copies of its forget examples (see
    :func:`~eco_guard.classifier.negatives.swaps.with_swapped_retain`), so the report does not pass them off as the policy's."""
    lacks_near_retain: bool = False
    """No retain examples near the target: none, or most no nearer than everyday prompts (see
    :func:`~eco_guard.classifier.negatives.swaps.near_retain_counts`; always False with a calibration set, which says what is near)."""
    n_near_retain: int = 0
    """How many of the policy's retain examples for this target are near it (0 with a calibration set)."""


@dataclass(frozen=True)
class FittedHeads:
    """Everything :meth:`Classifier.fit` needs to build a classifier, and the per-target report rows."""

    target_ids: list[str]
    weights: np.ndarray
    bias: np.ndarray
    thresholds: np.ndarray
    lexicon: Lexicon
    view: FeatureView
    fits: list[TargetFit]


class FitOptions(TypedDict, total=False):
    """Keyword options of :func:`fit_heads` (and so of ``Classifier.fit``); only ``target_fpr`` is required."""

    target_fpr: Required[float]
    seed: int
    background: Sequence[str] | None
    calibration_set: Sequence[str] | None
    progress: bool
    canonical: Canonicalizer | None


def fit_heads(
    encoder: Encoder,
    targets: Sequence[TargetData],
    *,
    target_fpr: float,
    seed: int = 0,
    background: Sequence[str] | None = None,
    calibration_set: Sequence[str] | None = None,
    progress: bool = True,
    canonical: Canonicalizer | None = None,
) -> FittedHeads:
    """Fit one head per target, then calibrate one threshold for all of them.

    Negatives for a target's head are its retain texts, the other targets' forget texts
    and the background prompts (with questions about made-up people and about other
    subjects when the policy has no calibration set and fewer than ten retain examples near
    its targets, see :func:`~eco_guard.classifier.negatives.background.near_negative_stand_ins` and :func:`~eco_guard.classifier.fit.held_out.lacks_near_negatives`). Half
    of the background is held out from every head. Without a calibration set, an entity target with fewer than ten retain examples near it
    (:func:`~eco_guard.classifier.negatives.swaps.near_retain_counts`; everyday ones are not near) gets copies of its forget
    examples naming made-up people as retain examples (:mod:`eco_guard.classifier.negatives.swaps`).
    ``calibration_set`` (the policy's ``classifier.calibration`` negatives: a sample of the
    traffic the guard will see) is held out too. Without it, every head trains on all
    of its retain texts, and the retain texts calibrate *cross-fitted*: each half of a
    target's retain list is scored by a head fitted without that half (see
    :func:`~eco_guard.classifier.negatives.neighbours.cross_fitted_retain_scores`). Holding the second half out of training (the
    former rule) left each head half its few retain examples and certified the rate on
    half as many negatives (D3: 2.4% / 5.0% FPR on unseen TOFU questions / authors at a
    1% target, against 1.4% / 2.8% cross-fitted, at the same recall). With several
    targets, each target's forget texts join them, scored by the other heads fitted
    without them (:func:`~eco_guard.classifier.negatives.neighbours.cross_target_scores`): they are the nearest non-target
    neighbours every other head has, and 10 retain authors alone under-stated the rate
    on unseen ones (D3 validation rows: 5.3% -> 2.6%; test rows: 1.4% / 2.8% -> 0.8% /
    0.5% at recall 0.990 / 0.993). Targets that overlap (one topic split in two, see
    :func:`~eco_guard.classifier.negatives.neighbours.overlapping_targets`) are not each other's neighbours.

    The threshold is shared by every head and uses the *max score over targets* as the
    conformal score: a prompt counts as flagged when any target flags it, so this is
    what makes ``target_fpr`` bound the rate at which a negative is flagged at all
    (per-target thresholds let n targets flag up to n times that rate). Each source of
    held-out negatives (policy calibration or cross-fitted near neighbours; each corpus of
    the held-out background, see :func:`~eco_guard.classifier.fit.held_out.held_out_sources`) gets its own split-conformal
    threshold and the largest wins, so the rate is bounded for traffic like *each* source
    rather than for their mixture, where a large generic background would hide a high rate
    on near neighbours.

    The steps, each a function below: check the inputs; embed the policy's texts
    (:func:`_embed_policy`); count the retain examples near each target
    (:func:`_near_retain`); choose the background corpora (:func:`_background_corpora`);
    make name-swapped copies (:func:`_name_swaps`); split the negatives into training and
    held-out (:func:`~eco_guard.classifier.fit.held_out.split_negatives`); lay out the
    features (:func:`_feature_table`); choose the features and fit the heads; and write the
    report rows (:func:`_target_fits`).

    The encoder runs once; whether the heads read the sentence embedding or every
    layer-pooled block, and how much the lexical block weighs, are then chosen by
    held-out recall on the policy's own forget examples (see :func:`~eco_guard.classifier.fit.selection.select_features`),
    and the report says which and why.

    ``canonical`` is the guard's reader of disguised text (:mod:`eco_guard.canonical`):
    every held-out negative is scored as written and in canonical form, as live texts are.
    """
    targets = list(targets)
    validate_targets(targets)
    if not 0.0 < target_fpr < 1.0:
        raise UserError(f"target_fpr must be strictly between 0 and 1, got {target_fpr}")
    builtin = background is None
    chat = background_prompts() if background is None else background
    embedded = _embed_policy(encoder, targets, chat, calibration_set, cached=builtin, progress=progress)
    near = _near_retain(encoder, targets, embedded, chat, calibration_set)
    lacking_ids = {t.id for t, n in zip(targets, near) if lacks_near_retain(n, len(unique_texts(t.retain)))}
    bare = lacks_near_negatives(sum(near), calibration_set)
    corpora = _background_corpora(targets, chat, embedded, stand_ins=builtin and bare)
    swaps = _name_swaps(targets, near, embedded, seed)
    split = split_negatives(corpora, calibration_set, embedded, seed=seed, cached=builtin, canonical=canonical)
    table = _feature_table(encoder, embedded, targets, corpora, split, swaps)
    # Only a fit without a calibration set uses other targets' examples as negatives.
    overlapping = frozenset() if split.calibration_set else overlapping_targets(targets, table.views["sentence"], table.row_of)
    policy_targets = targets
    groups = fit_groups(targets, split.calibration_set, lambda ts: table.views["sentence"][[table.row_of[s] for s in ts]], target_fpr, seed)
    targets, swapped_note = with_swapped_retain(targets, swaps)
    choice, view_note = select_features(
        policy_targets, table.views, table.row_of, table.texts, split, target_fpr, overlapping, swaps, seed=seed, progress=progress,
        groups=groups,
    )
    core = fit_core(
        targets,
        table.views[choice.view],
        table.row_of,
        table.texts,
        split,
        target_fpr,
        choice.lexical_weight,
        overlapping=overlapping,
        progress=progress,
        retain_name=retain_source_name(any(t.retain for t in policy_targets), any(sw.copies for sw in swaps)),
        groups=groups,
    )
    calibrated = replace(core.calibration, note=core.calibration.note + swapped_note + (f". Caution: {NO_NEAR_NEGATIVES}" if bare else ""))
    calibrated = _with_probe(calibrated, embedded, core, choice.view, encoder.dim, seed)
    return FittedHeads(
        target_ids=[t.id for t in targets],
        weights=core.weights,
        bias=core.bias,
        thresholds=np.full(len(targets), core.calibration.threshold),
        lexicon=core.lexicon,
        view=choice.view,
        fits=_target_fits(policy_targets, targets, core, calibrated, table.row_of, view_note, lacking_ids, near),
    )


def _with_probe(calibrated: Calibration, embedded: Embedded, core: CoreFit, view: FeatureView, dim: int, seed: int) -> Calibration:
    """The calibration with the neighbourhood probe's rates in its note, and the clusters it flags too often among its
    estimates (so ``fit`` warns, naming them; :func:`~eco_guard.classifier.calibration_groups.probe_neighbourhoods`)."""
    probe = probe_neighbourhoods(
        embedded,
        {s for plan in core.plans for s in plan.train_texts},
        lambda ts: head_scores(view_columns(embedded.matrix(ts), view, dim), core.lexicon.transform(ts), core.weights, core.bias).max(axis=1),
        calibrated.threshold,
        calibrated.target_fpr,
        seed,
    )
    if not probe.rates:
        return calibrated
    return replace(
        calibrated, note=f"{calibrated.note}. {probe.note(calibrated.threshold)}", estimated_fpr=calibrated.estimated_fpr + tuple(probe.over.items())
    )


def _embed_policy(
    encoder: Encoder,
    targets: list[TargetData],
    chat: Sequence[str],
    calibration_set: Sequence[str] | None,
    *,
    cached: bool,
    progress: bool,
) -> Embedded:
    """The background and every text the policy gives, embedded once.

    Every distinct text is embedded once, whatever roles it plays in any fit below; the
    built-in corpora once per encoder (feature cache). A caller's own background is not
    cached: the cache holds a bounded set of corpora.
    """
    embedded = Embedded(encoder, progress=progress)
    embedded.add_corpus(chat, cached=cached)
    embedded.add([s for t in targets for s in t.forget + t.retain] + list(calibration_set or []))
    return embedded


def _near_retain(
    encoder: Encoder, targets: list[TargetData], embedded: Embedded, chat: Sequence[str], calibration_set: Sequence[str] | None
) -> list[int]:
    """How many retain examples are near each target (none are looked for with a calibration set).

    With a calibration set the policy has said what near traffic looks like; without one,
    retain examples no nearer to their target than everyday prompts say nothing about it.
    """
    if calibration_set:
        return []
    return near_retain_counts(targets, lambda ts: view_columns(embedded.matrix(ts), "sentence", encoder.dim), chat)


def _background_corpora(
    targets: list[TargetData], chat: Sequence[str], embedded: Embedded, *, stand_ins: bool
) -> dict[str, Sequence[str]]:
    """The background corpora, by name, without the texts that mention a target's entity.

    With ``stand_ins`` (no near negatives of the policy's own), generic questions about
    made-up people and about other subjects stand in for them (see
    :func:`~eco_guard.classifier.negatives.background.near_negative_stand_ins` for why only then).
    """
    corpora: dict[str, Sequence[str]] = {"held-out background": chat}
    if stand_ins:
        extra = near_negative_stand_ins()
        corpora.update(extra)
        for corpus in extra.values():
            embedded.add_corpus(corpus, cached=True)
    return without_mentions(corpora, entity_names(targets))


def _name_swaps(targets: list[TargetData], near: list[int], embedded: Embedded, seed: int) -> list[Swaps]:
    """Name-swapped copies for the entity targets without enough retain examples near them
    (:mod:`eco_guard.classifier.negatives.swaps`), embedded."""
    swaps = candidate_swaps([t for t, n in zip(targets, near) if n < MIN_NEAR_RETAIN], seed)
    embedded.add([c for sw in swaps for c in sw.copies], desc="embedding name-swapped copies")
    return swaps


@dataclass(frozen=True)
class _FeatureTable:
    """Every text of the fit, its row, and each encoder view of the rows."""

    texts: list[str]
    row_of: dict[str, int]
    views: dict[FeatureView, np.ndarray]


def _feature_table(
    encoder: Encoder,
    embedded: Embedded,
    targets: list[TargetData],
    corpora: dict[str, Sequence[str]],
    split: NegativeSplit,
    swaps: Sequence[Swaps],
) -> _FeatureTable:
    """One row per distinct text the fit reads, in a fixed order, and the views the heads may read."""
    bg = unique_texts(s for corpus in corpora.values() for s in corpus)
    piece_texts = [p for ps in split.pieces.values() for p in ps]
    texts = unique_texts(
        bg + [s for t in targets for s in t.forget + t.retain] + split.calibration_set + [c for sw in swaps for c in sw.copies] + piece_texts
    )
    feats = embedded.matrix(texts)
    views = {v: view_columns(feats, v, encoder.dim) for v in (VIEWS if encoder.feature_layers else ("sentence",))}
    return _FeatureTable(texts, {text: i for i, text in enumerate(texts)}, views)


def _target_fits(
    policy_targets: list[TargetData],
    trained: list[TargetData],
    core: CoreFit,
    calibrated: Calibration,
    row_of: dict[str, int],
    view_note: str,
    lacking_ids: set[str],
    near: list[int],
) -> list[TargetFit]:
    """The fit report's row for each target: what its head trained on, and how it scores its own examples."""
    return [
        TargetFit(
            id=target.id,
            n_forget=plan.n_forget,
            n_retain_train=plan.n_retain_train,
            n_background_train=plan.n_background_train,
            n_calibration=calibrated.n_calibration,
            calibration=calibrated,
            train_auc=float(roc_auc_score(plan.train_labels, core.scores[[row_of[s] for s in plan.train_texts], i])),
            view_note=view_note,
            forget_scores=tuple(float(core.scores[row_of[s], i]) for s in target.forget if s in row_of),
            retain_scores=tuple(float(core.scores[row_of[s], i]) for s in target.retain if s in row_of),
            n_swapped_retain=len(with_copies.retain) - len(target.retain),
            lacks_near_retain=target.id in lacking_ids,
            n_near_retain=near[i] if near else 0,
        )
        for i, (target, with_copies, plan) in enumerate(zip(policy_targets, trained, core.plans))
    ]


def validate_targets(targets: list[TargetData]) -> None:
    """Reject target lists that cannot produce a meaningful head, naming the offending target."""
    if not targets:
        raise UserError("need at least one target to fit a classifier")
    seen: set[str] = set()
    for t in targets:
        if not t.id:
            raise UserError("every target needs a non-empty id")
        if t.id in seen:
            raise UserError(f"duplicate target id {t.id!r}")
        seen.add(t.id)
        if not any(s.strip() for s in t.forget):
            raise UserError(f"target {t.id!r} has no forget examples")
