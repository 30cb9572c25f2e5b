"""Per-target prompt classifier: one logistic head per forget target over layer-pooled
encoder features joined with lexical (TF-IDF) features of the forget vocabulary.

The encoder half recognises topics and rewordings; the lexical half recognises the
rare words (names, titles, jargon) that make a prompt about *this* target rather than
about something of the same kind (see :mod:`eco_guard.classifier.lexical`). Heads are
linear, so a decision costs one encoder forward, one sparse TF-IDF row and a
``[features, n_targets]`` product, and fitting a policy takes seconds. What makes the
scores usable is the threshold: it is calibrated by split conformal prediction on
negatives no head saw, so "flag when score > threshold" comes with a stated
false-positive rate (see :mod:`eco_guard.classifier.calibration` and :meth:`Classifier.fit`).
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from safetensors.numpy import load_file, save_file
from scipy import sparse
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from eco_guard.classifier.background import background_prompts
from eco_guard.classifier.calibration import Calibration, conformal_threshold
from eco_guard.classifier.encoder import Encoder
from eco_guard.classifier.lexical import Lexicon
from eco_guard.errors import GuardLoadError, InputError, UserError

FORMAT_NAME = "eco-guard-classifier"
FORMAT_VERSION = 4
"""3: heads read layer-pooled features (:meth:`Encoder.features`), not the sentence embedding.
4: the lexical block's weight is chosen per policy and recorded (``lexical_weight``)."""
WEIGHTS_FILE = "classifier.safetensors"
META_FILE = "classifier.json"

_C = 16.0
"""Inverse L2 strength of the heads. Unit-norm encoder features need weights of norm ~10-20 to
separate a topic, and the lexical block needs room to put large weights on a few rare
names: on TOFU (D1) C=4 reached TPR 0.96/0.93 on new questions/paraphrases, C=16 0.985/0.945
at the same calibrated FPR, with no FPR cost on the few-shot protocol (D3). Re-checked
for layer-pooled features on validation rows: C=32 and 64 were no better than 16."""

LEXICAL_WEIGHTS = (1.0, 2.0)
"""Scales of the lexical block against the unit-norm encoder block that ``fit`` compares.
Names and rare terms decide entity-like targets, so there a heavier lexical block helps
(validation rows: TOFU recall 0.82 -> 0.875 at weight 2, with the few-shot D3 false
positives on unseen authors down 0.053 -> 0.038); with a handful of examples it ties
heads to the examples' exact words (the France/Python test policy: 3 of 7 rewordings
missed at 2, none at 1), and topic-like targets lose recall (WMDP 0.92 -> 0.89). One
fixed weight cannot serve all three, so :func:`_select_features` measures which suits the
policy; 1.0, listed first, wins ties."""

FeatureView = Literal["sentence", "layers"]
"""What the heads read from :meth:`Encoder.features`: the sentence-embedding block alone, or
every layer-pooled block. ``fit`` chooses per policy (see :func:`_select_features`)."""
_VIEWS: tuple[FeatureView, ...] = get_args(FeatureView)

_TARGET_FOLDS = 2
"""Groups of targets whose forget texts are left out together when :func:`_cross_target_scores`
scores them with the other heads. More groups keep the re-fitted heads closer to the final
ones, at ``groups x targets`` head fits. On D3 validation rows 2, 5, 10 and 20 (leave one
target out) groups all traced the same recall/false-positive curve; more groups only set
a slightly lower threshold (20: recall 0.780 at FPR 0.027, against 0.750 at 0.026 with 2)
for 3-5 times the fit time."""

_NEIGHBOURS = "cross-fitted retain and other targets' examples"

_OVERLAP_RATIO = 0.95
"""Two targets overlap when their examples are at least this alike across the pair, relative to
within each (see :func:`_overlapping_targets`); measured 1.03-1.12 for one topic or author split
in two against at most 0.87 for two different authors."""

_EMBED_CHUNK = 256
"""Texts per progress-bar step while fitting; large enough to keep the encoder batched."""


@dataclass(frozen=True)
class TargetData:
    """The labelled text a policy gives for one target."""

    id: str
    forget: list[str]
    retain: list[str]


@dataclass(frozen=True)
class TargetFit:
    """What fitting one head used and achieved, for the fit report.

    ``n_calibration`` and ``calibration`` describe the threshold shared by all heads
    (see :meth:`Classifier.fit`), so they are the same for every target of one fit.
    """

    id: str
    n_forget: int
    n_retain_train: int
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
    """The final head's in-sample scores on the target's forget and retain texts, in the order
    given (blank texts skipped), for the fit report's histograms: scoring them again would
    embed every example a second time, which on a large policy doubled the fit."""


@dataclass(frozen=True)
class Verdict:
    """The classifier's decision on one text.

    ``score`` and ``threshold`` are always those of a real target (the flagged one with the
    largest margin, or the highest-scoring one when nothing is flagged), so a passing
    request still shows how close it came.
    """

    target_index: int | None
    target_id: str | None
    score: float
    threshold: float
    flagged: bool


class Classifier:
    """Per-target logistic heads over encoder features, with conformally calibrated thresholds.

    Thresholds are stored per target (``fit`` sets them all to one jointly calibrated
    value, see there). Immutable after construction, so one instance can serve many threads. Scores are
    sigmoid outputs in [0, 1] of heads trained with balanced class weights: they rank
    prompts but are not calibrated probabilities; the thresholds carry the calibration.
    Decision rule: a target is flagged when ``score > threshold`` (strict).
    """

    def __init__(
        self,
        encoder: Encoder,
        target_ids: list[str],
        weights: np.ndarray,
        bias: np.ndarray,
        thresholds: np.ndarray,
        lexicon: Lexicon | None = None,
        view: FeatureView = "sentence",
    ) -> None:
        n = len(target_ids)
        if n == 0:
            raise UserError("a classifier needs at least one target")
        if len(set(target_ids)) != n:
            raise UserError(f"target ids must be unique, got {target_ids}")
        weights = _frozen(weights)
        bias = _frozen(bias)
        thresholds = _frozen(thresholds)
        lexicon = lexicon if lexicon is not None else Lexicon((), np.zeros(0))
        if view not in _VIEWS:
            raise UserError(f"feature view must be one of {_VIEWS}, got {view!r}")
        width = _view_width(encoder, view)
        if weights.shape != (n, width + lexicon.size) or bias.shape != (n,) or thresholds.shape != (n,):
            raise UserError(
                f"head shapes do not match {n} targets, {view} features of width {width} and {lexicon.size} lexical "
                f"features: weights {weights.shape}, "
                f"bias {bias.shape}, thresholds {thresholds.shape}"
            )
        self._encoder = encoder
        self._target_ids = list(target_ids)
        self._weights = weights
        self._bias = bias
        self._thresholds = thresholds
        self._lexicon = lexicon
        self._view: FeatureView = view

    @property
    def view(self) -> FeatureView:
        """Which encoder features the heads read (chosen by :meth:`fit`)."""
        return self._view

    @property
    def encoder(self) -> Encoder:
        """The encoder the heads were fitted on; callers embedding text themselves must use it."""
        return self._encoder

    @property
    def target_ids(self) -> list[str]:
        """Target ids in column order of :meth:`score` (a copy, so callers cannot reorder ours)."""
        return list(self._target_ids)

    @property
    def thresholds(self) -> np.ndarray:
        """Per-target thresholds (read-only), in the order of :attr:`target_ids`."""
        return self._thresholds

    @property
    def weights(self) -> np.ndarray:
        """Head weights ``[n_targets, dim + lexical terms]`` (read-only); for reports and reproducibility checks."""
        return self._weights

    @property
    def bias(self) -> np.ndarray:
        """Head intercepts ``[n_targets]`` (read-only)."""
        return self._bias

    @property
    def lexicon(self) -> Lexicon:
        """The lexical vocabulary the heads' trailing weight columns belong to."""
        return self._lexicon

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Scores ``[n, n_targets]`` for a batch of texts; one encoder call for the whole batch."""
        feats = _view(self._encoder.features(texts), self._view, self._encoder.dim)
        return _head_scores(feats, self._lexicon.transform(texts), self._weights, self._bias)

    def decide(self, scores: np.ndarray) -> list[Verdict]:
        """Apply the thresholds; when several targets fire, report the one furthest above its threshold.

        The margin (score - threshold) rather than the raw score picks the target because
        thresholds may differ per head (``fit`` shares one, but a classifier can be built
        with its own): a 0.9 on a strict head can be weaker evidence than a 0.6 on a
        lenient one.
        """
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 2 or scores.shape[1] != len(self._target_ids):
            raise InputError(f"expected scores of shape [n, {len(self._target_ids)}], got {scores.shape}")
        flagged = scores > self._thresholds
        margins = np.where(flagged, scores - self._thresholds, -np.inf)
        verdicts: list[Verdict] = []
        for row in range(scores.shape[0]):
            if flagged[row].any():
                i = int(np.argmax(margins[row]))
                verdicts.append(Verdict(i, self._target_ids[i], float(scores[row, i]), float(self._thresholds[i]), True))
            else:
                i = int(np.argmax(scores[row]))
                verdicts.append(Verdict(None, None, float(scores[row, i]), float(self._thresholds[i]), False))
        return verdicts

    def save(self, directory: Path) -> None:
        """Write the heads (safetensors, exact float64) and their metadata (JSON) to ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        save_file(
            {"weights": self._weights, "bias": self._bias, "thresholds": self._thresholds, "idf": self._lexicon.idf},
            str(directory / WEIGHTS_FILE),
        )
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "target_ids": self._target_ids,
            "encoder": self._encoder.name,
            "encoder_precision": self._encoder.precision,
            "encoder_runtime": self._encoder.runtime,  # informational: both runtimes give the same features to ~1e-7
            "dim": self._encoder.feature_dim,
            "feature_layers": list(self._encoder.feature_layers),
            "feature_view": self._view,
            "lexical_terms": list(self._lexicon.terms),
            "lexical_weight": self._lexicon.weight,
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: Path, encoder: Encoder) -> Classifier:
        """Restore heads saved by :meth:`save`, refusing anything that would score garbage.

        A dim mismatch means the heads were fitted on another encoder and is an error; a
        different encoder *name* with the same dim is only warned about, because moving or
        renaming a model directory is legitimate.
        """
        meta = _read_meta(directory)
        try:
            tensors = load_file(str(directory / WEIGHTS_FILE))
        except Exception as exc:  # safetensors raises several types for a missing or damaged file
            raise GuardLoadError(f"{directory / WEIGHTS_FILE}: cannot read classifier heads ({exc}); re-run fit") from exc
        missing = {"weights", "bias", "thresholds", "idf"} - set(tensors)
        if missing:
            raise GuardLoadError(f"{directory / WEIGHTS_FILE}: missing tensors {sorted(missing)}; re-run fit")
        view = meta.get("feature_view")
        if view not in _VIEWS:
            raise GuardLoadError(f"{directory / META_FILE}: feature_view must be one of {_VIEWS}, got {view!r}; re-run fit")
        if meta["dim"] != encoder.feature_dim or meta.get("feature_layers") != list(encoder.feature_layers):
            raise GuardLoadError(
                f"{directory}: heads were fitted on {meta['dim']}-wide features of layers {meta.get('feature_layers')} "
                f"({meta['encoder']}), but the loaded encoder {encoder.name} gives {encoder.feature_dim}-wide features "
                f"of layers {list(encoder.feature_layers)}; load the encoder used for fitting"
            )
        fitted_precision = meta.get("encoder_precision", "float32")
        if fitted_precision != encoder.precision:
            raise GuardLoadError(
                f"{directory}: heads were calibrated with a {fitted_precision} encoder but the encoder runs in "
                f"{encoder.precision}; thresholds only hold at the precision they were fitted at "
                f"(set classifier.precision: {fitted_precision} or re-run fit)"
            )
        if meta["encoder"] != encoder.name:
            warnings.warn(
                f"{directory}: heads were fitted with encoder {meta['encoder']!r}, loading with {encoder.name!r}",
                stacklevel=2,
            )
        arrays = {k: np.asarray(tensors[k], dtype=np.float64) for k in ("weights", "bias", "thresholds", "idf")}
        if not all(np.all(np.isfinite(a)) for a in arrays.values()):
            raise GuardLoadError(f"{directory / WEIGHTS_FILE}: contains NaN or infinite values; re-run fit")
        try:
            lexicon = Lexicon(tuple(meta["lexical_terms"]), arrays["idf"], meta.get("lexical_weight"))
            return cls(encoder, meta["target_ids"], arrays["weights"], arrays["bias"], arrays["thresholds"], lexicon, view)
        except (UserError, ValueError) as exc:
            raise GuardLoadError(f"{directory}: inconsistent classifier files: {exc}") from exc

    @classmethod
    def fit(
        cls,
        encoder: Encoder,
        targets: Sequence[TargetData],
        *,
        target_fpr: float,
        seed: int = 0,
        background: Sequence[str] | None = None,
        calibration: Sequence[str] | None = None,
        progress: bool = True,
    ) -> tuple[Classifier, list[TargetFit]]:
        """Fit one head per target, then calibrate one threshold for all of them.

        Negatives for a target's head are its retain texts, the other targets' forget texts
        and the background prompts. Half of the background is held out from every head.
        ``calibration`` (the policy's ``classifier.calibration`` negatives: a sample of the
        traffic the guard will see) is held out too. Without it, every head trains on all
        of its retain texts, and the retain texts calibrate *cross-fitted*: each half of a
        target's retain list is scored by a head fitted without that half (see
        :func:`_cross_fitted_retain_scores`). Holding the second half out of training (the
        former rule) left each head half its few retain examples and certified the rate on
        half as many negatives (D3: 2.4% / 5.0% FPR on unseen TOFU questions / authors at a
        1% target, against 1.4% / 2.8% cross-fitted, at the same recall). With several
        targets, each target's forget texts join them, scored by the other heads fitted
        without them (:func:`_cross_target_scores`): they are the nearest non-target
        neighbours every other head has, and 10 retain authors alone under-stated the rate
        on unseen ones (D3 validation rows: 5.3% -> 2.6%; test rows: 1.4% / 2.8% -> 0.8% /
        0.5% at recall 0.990 / 0.993). Targets that overlap (one topic split in two, see
        :func:`_overlapping_targets`) are not each other's neighbours.

        The threshold is shared by every head and uses the *max score over targets* as the
        conformal score: a prompt counts as flagged when any target flags it, so this is
        what makes ``target_fpr`` bound the rate at which a negative is flagged at all
        (per-target thresholds let n targets flag up to n times that rate). Each source of
        held-out negatives (policy calibration or cross-fitted near neighbours; held-out background)
        gets its own split-conformal threshold and the largest wins, so the rate is bounded
        for traffic like *each* source rather than for their mixture, where a large generic
        background would hide a high rate on near neighbours.

        The encoder runs once; whether the heads read the sentence embedding or every
        layer-pooled block, and how much the lexical block weighs, are then chosen by
        held-out recall on the policy's own forget examples (see :func:`_select_features`),
        and the report says which and why.
        """
        targets = list(targets)
        _validate_targets(targets)
        if not 0.0 < target_fpr < 1.0:
            raise UserError(f"target_fpr must be strictly between 0 and 1, got {target_fpr}")
        bg = _unique(background_prompts() if background is None else background)
        bg_order = np.random.default_rng(seed).permutation(len(bg))
        n_bg_cal = len(bg) // 2
        split = _Negatives(
            bg_train=[bg[i] for i in bg_order[n_bg_cal:]],
            bg_cal=[bg[i] for i in bg_order[:n_bg_cal]],
            user_cal=_unique(calibration or []),
        )
        # Every distinct text is embedded exactly once, whatever roles it plays in any fit below.
        texts = _unique(
            [s for t in targets for s in t.forget + t.retain] + split.bg_train + split.bg_cal + split.user_cal
        )
        row_of = {text: i for i, text in enumerate(texts)}
        feats = _embed(encoder, texts, progress)
        views: dict[FeatureView, np.ndarray] = {v: _view(feats, v, encoder.dim) for v in (_VIEWS if encoder.feature_layers else ("sentence",))}
        # Only a fit without a calibration set uses other targets' examples as negatives.
        overlapping = frozenset() if split.user_cal else _overlapping_targets(targets, views["sentence"], row_of)
        choice, view_note = _select_features(targets, views, row_of, texts, split, target_fpr, overlapping)
        core = _fit_core(
            targets,
            views[choice.view],
            row_of,
            texts,
            split,
            target_fpr,
            choice.lexical_weight,
            overlapping=overlapping,
            progress=progress,
        )
        fits = [
            TargetFit(
                id=target.id,
                n_forget=plan.n_forget,
                n_retain_train=plan.n_retain_train,
                n_background_train=plan.n_background_train,
                n_calibration=core.calibration.n_calibration,
                calibration=core.calibration,
                train_auc=float(roc_auc_score(plan.train_labels, core.scores[[row_of[s] for s in plan.train_texts], i])),
                view_note=view_note,
                forget_scores=tuple(float(core.scores[row_of[s], i]) for s in target.forget if s in row_of),
                retain_scores=tuple(float(core.scores[row_of[s], i]) for s in target.retain if s in row_of),
            )
            for i, (target, plan) in enumerate(zip(targets, core.plans))
        ]
        thresholds = np.full(len(targets), core.calibration.threshold)
        return cls(encoder, [t.id for t in targets], core.weights, core.bias, thresholds, core.lexicon, choice.view), fits


@dataclass(frozen=True)
class _Negatives:
    """The fit's background split (half trains heads, half calibrates) and the policy's calibration texts."""

    bg_train: list[str]
    bg_cal: list[str]
    user_cal: list[str]


@dataclass(frozen=True)
class _Candidate:
    """One feature set :func:`_select_features` compares: an encoder view and a lexical weight."""

    view: FeatureView
    lexical_weight: float

    @property
    def name(self) -> str:
        return f"{self.view} + lexical x{self.lexical_weight:g}"


@dataclass(frozen=True)
class _Core:
    """Fitted heads, their shared calibration, and every embedded text's scores."""

    weights: np.ndarray
    bias: np.ndarray
    lexicon: Lexicon
    calibration: Calibration
    plans: list[_TargetPlan]
    scores: np.ndarray


def _fit_core(
    targets: list[TargetData],
    feats: np.ndarray,
    row_of: dict[str, int],
    texts: list[str],
    split: _Negatives,
    target_fpr: float,
    lexical_weight: float,
    *,
    overlapping: frozenset[tuple[int, int]] = frozenset(),
    progress: bool = False,
    estimate: bool = True,
) -> _Core:
    """Heads for ``targets`` on already-embedded ``feats`` (rows per ``row_of``) and their joint threshold.

    See :meth:`Classifier.fit` for which texts train and which calibrate; ``overlapping``
    (target index pairs, see :func:`_overlapping_targets`) says whose examples are not each
    other's calibration neighbours. ``estimate`` adds the 2-fold false-positive estimate
    to the calibration note (skipped by the inner fits of :func:`_select_features`, which
    only need the threshold).
    """
    plans = [_plan_target(t, targets, split.bg_train) for t in targets]
    # Held out from every head: no text any head trains on may calibrate the shared threshold.
    trained = {s for plan in plans for s in plan.train_texts}
    sources = {
        "calibration": [s for s in split.user_cal if s not in trained],
        "held-out background": [s for s in split.bg_cal if s not in trained],
    }
    # Texts trained only as some head's retain rows: cross-fitting keeps them unseen.
    not_retain = {s for t in targets for s in t.forget} | set(split.bg_train)
    retain_cal = [] if split.user_cal else _unique(s for plan in plans for s in plan.retain if s not in not_retain)

    lexicon = Lexicon.fit([s for t in targets for s in t.forget], sorted(trained), lexical_weight)
    lex = lexicon.transform(texts)
    train_feats = _features(feats, lex)
    weights = np.zeros((len(targets), train_feats.shape[1]))
    bias = np.zeros(len(targets))
    for i, plan in enumerate(tqdm(plans, desc="fitting heads", unit="target", disable=not progress, file=sys.stderr)):
        weights[i], bias[i] = _fit_head(train_feats[[row_of[s] for s in plan.train_texts]], plan.train_labels)

    # Calibrate with the exact scoring code used at run time, so a calibration score and
    # a live score of the same text differ only by the float rounding of a differently
    # padded encoder batch (~1e-8).
    all_scores = _head_scores(feats, lex, weights, bias)
    max_scores = {name: all_scores[[row_of[s] for s in v]].max(axis=1) for name, v in sources.items() if v}
    if not split.user_cal:
        # Without a traffic sample, the policy's own examples are the nearest neighbours we
        # know: retain texts, and for each head the other targets' forget texts. Both were
        # trained on, so both are scored cross-fitted; pooled, they are one source.
        near: list[np.ndarray] = []
        if retain_cal:
            rows = [row_of[s] for s in retain_cal]
            near.append(_cross_fitted_retain_scores(plans, retain_cal, all_scores[rows], train_feats, row_of, feats[rows], lex[rows]))
        others = np.zeros(0)
        if len(overlapping) < len(targets) * (len(targets) - 1):  # some pair of targets are each other's neighbours
            others = _neighbour_scores(_cross_target_scores(targets, plans, train_feats, row_of, feats, lex), overlapping)
        pooled = np.concatenate([*near, others])
        if pooled.size:
            # Named for what it holds: retain alone when every target overlaps every other.
            max_scores = {(_NEIGHBOURS if others.size else "cross-fitted retain"): pooled, **max_scores}
    if not max_scores:
        raise UserError("no held-out negatives to calibrate the threshold on; add retain examples or background prompts")
    calibration = _joint_threshold(max_scores, target_fpr, len(targets), estimate=estimate)
    if overlapping:
        pairs = ", ".join(sorted(f"{targets[a].id!r} and {targets[b].id!r}" for a, b in overlapping if a < b))
        calibration = replace(
            calibration,
            note=f"{calibration.note}. Targets whose examples are as alike across the pair as within each, so not "
            f"counted as each other's neighbours (consider merging them): {pairs}",
        )
    return _Core(weights, bias, lexicon, calibration, plans, all_scores)


def _select_features(
    targets: list[TargetData],
    views: dict[FeatureView, np.ndarray],
    row_of: dict[str, int],
    texts: list[str],
    split: _Negatives,
    target_fpr: float,
    overlapping: frozenset[tuple[int, int]],
) -> tuple[_Candidate, str]:
    """Pick the feature view and lexical weight with the best recall on the policy's own held-out forget examples.

    Layer-pooled features and a heavier lexical block both see wording as well as
    meaning. With hundreds of examples per target that separates rewordings of a forget
    question from the same kind of question about something else; with a handful it
    ties the heads to the examples' exact words, and a calibrated threshold then misses
    rewordings; and for topics, whose examples share no names, heavier words only add
    noise. Which regime a policy is in is measured, not guessed: each candidate (view x
    :data:`LEXICAL_WEIGHTS`) is fitted twice, each time on alternate halves of every
    target's forget list, with the threshold calibrated exactly as in the real fit, and
    scored on the other half. On the issue-3 protocols the views alone chose ``layers``
    for the large policies (TOFU, 200 forget examples: held-out recall 0.865 -> 0.890;
    WMDP: 0.905 -> 0.923) and ``sentence`` for the few-shot ones (20 authors x 5
    examples: 0.800 vs 0.700; the 8-example France/Python test policy: 0.688 vs 0.438).
    Candidates are tried simplest first (sentence, weight 1) and one must beat every
    earlier one strictly to be chosen, so ties keep the view the encoder was trained to
    produce. Policies with no target of two or more forget examples keep it too. Costs
    two head fits per candidate; the encoder runs once.
    """
    plain = _Candidate("sentence", LEXICAL_WEIGHTS[0])
    if not any(len(_unique(t.forget)) >= 2 for t in targets):
        return plain, "sentence-embedding features (no held-out forget examples to compare feature sets on)"
    # The same two folds for every candidate: targets with one example keep it in both.
    folds: list[tuple[list[TargetData], list[str]]] = []
    for fold in (0, 1):
        kept, held = [], []
        for t in targets:
            forget = _unique(t.forget)
            if len(forget) < 2:
                kept.append(t)
                continue
            kept.append(TargetData(t.id, forget[fold::2], t.retain))
            held += forget[1 - fold :: 2]
        folds.append((kept, held))
    recall: dict[_Candidate, float] = {}
    for weight in LEXICAL_WEIGHTS:
        for view in views:
            hits = total = 0
            for kept, held in folds:
                core = _fit_core(
                    kept, views[view], row_of, texts, split, target_fpr, weight, overlapping=overlapping, estimate=False
                )
                rows = [row_of[s] for s in held]
                hits += int(np.sum(core.scores[rows].max(axis=1) > core.calibration.threshold))
                total += len(rows)
            recall[_Candidate(view, weight)] = hits / total
    chosen = max(recall, key=lambda c: recall[c])  # the first of equals: the simplest
    shown = ", ".join(f"{c.name} {r:.3f}" for c, r in recall.items())
    return chosen, (
        f"{chosen.name} features, chosen by recall on held-out forget examples at the calibrated threshold "
        f"(2-fold over each target's forget list: {shown})"
    )


def _fit_head(features: sparse.csr_matrix, labels: np.ndarray) -> tuple[np.ndarray, float]:
    """One logistic head (weights, intercept); balanced so a few forget examples are not outvoted."""
    head = LogisticRegression(C=_C, class_weight="balanced", max_iter=5000)
    head.fit(features, labels)
    return head.coef_[0], float(head.intercept_[0])


def _cross_fitted_retain_scores(
    plans: list[_TargetPlan],
    texts: list[str],
    scores: np.ndarray,
    feats: sparse.csr_matrix,
    row_of: dict[str, int],
    emb: np.ndarray,
    lex: sparse.csr_matrix,
) -> np.ndarray:
    """Max-over-targets scores of retain ``texts`` from heads that never trained on them.

    ``scores``, ``emb`` and ``lex`` are the final heads' scores and the embedding and
    lexical rows of ``texts``; ``feats`` is the full training feature matrix, rows per
    ``row_of``. Each target's retain list is cut into two contiguous halves in the order
    given (files list an entity's rows together, so a random split would score near-copies
    of training rows); for each half a second head is fitted without it, and its scores
    replace the final head's for that half. Other heads never saw those texts (callers
    pass only texts trained as retain rows). A text no head can be re-fitted without (no
    negatives left) is dropped rather than scored optimistically. Costs two extra heads
    per target with retain examples.
    """
    scores = scores.copy()
    index = {s: k for k, s in enumerate(texts)}
    keep = np.ones(len(texts), dtype=bool)
    for i, plan in enumerate(plans):
        half = len(plan.retain) - len(plan.retain) // 2
        for fold in (plan.retain[:half], plan.retain[half:]):
            own = [index[s] for s in fold if s in index]
            if not own:
                continue
            head = _head_without(plan, set(fold), feats, row_of)
            if head is None:
                keep[own] = False
                continue
            w, b = head
            scores[own, i] = _head_scores(emb[own], lex[own], w[None, :], np.array([b]))[:, 0]
    return scores[keep].max(axis=1)


def _head_without(
    plan: _TargetPlan, left_out: set[str], feats: sparse.csr_matrix, row_of: dict[str, int]
) -> tuple[np.ndarray, float] | None:
    """The plan's head fitted again without the texts in ``left_out`` (for cross-fitted scores).

    None when leaving them out empties one class: there is then no head that never saw them.
    """
    rest = [k for k, s in enumerate(plan.train_texts) if s not in left_out]
    labels = plan.train_labels[rest]
    if labels.size == 0 or labels.min() == labels.max():
        return None
    return _fit_head(feats[[row_of[plan.train_texts[k]] for k in rest]], labels)


def _cross_target_scores(
    targets: list[TargetData],
    plans: list[_TargetPlan],
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
    is exactly such a neighbour for every head but its own (see :func:`_neighbour_scores`).
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
            head = _head_without(plan, {s for i in members if i != j for s in targets[i].forget}, feats, row_of)
            if head is None:
                fitted[j] = False
            else:
                weights[j], bias[j] = head
        for a in members:
            rows = [row_of[s] for s in _unique(targets[a].forget)]
            out[a] = np.where(fitted, _head_scores(emb[rows], lex[rows], weights, bias), np.nan)
    return out


def _neighbour_scores(cross: list[np.ndarray], overlapping: frozenset[tuple[int, int]]) -> np.ndarray:
    """Max score over the heads each target's forget texts are neighbours for.

    A text of target ``a`` flagged by ``a`` counts as caught, so ``a``'s own head never
    counts; nor does the head of a target that overlaps ``a`` (see
    :func:`_overlapping_targets`), whose flags on ``a``'s texts are hits too, nor one that
    could not be fitted without them (NaN).
    """
    out: list[np.ndarray] = []
    for a, scores in enumerate(cross):
        skip = np.array([b == a or (a, b) in overlapping for b in range(scores.shape[1])])
        best = np.where(skip | np.isnan(scores), -np.inf, scores).max(axis=1, initial=-np.inf)
        out.append(best[np.isfinite(best)])  # a text no counted head could score is dropped
    return np.concatenate(out) if out else np.zeros(0)


def _overlapping_targets(targets: list[TargetData], sentence: np.ndarray, row_of: dict[str, int]) -> frozenset[tuple[int, int]]:
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
    embs = [unit[[row_of[s] for s in _unique(t.forget)]] for t in targets]

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


def _joint_threshold(
    max_scores: dict[str, np.ndarray], target_fpr: float, n_targets: int, *, estimate: bool = True
) -> Calibration:
    """The largest of the per-source conformal thresholds, with a note naming each source.

    A source too small to certify ``target_fpr`` on its own (a few held-out retain
    examples) is not dropped: all sources are then also pooled, and the pooled threshold
    competes too, so those near neighbours still count, with the guarantee stated for
    the mixture.
    """
    per_source = {name: conformal_threshold(scores, target_fpr) for name, scores in max_scores.items()}
    candidates = {name: c for name, c in per_source.items() if c.achievable}
    if len(candidates) < len(per_source):
        candidates["all sources pooled"] = conformal_threshold(np.concatenate(list(max_scores.values())), target_fpr)
    name, best = max(candidates.items(), key=lambda item: item[1].threshold)
    parts = [
        f"{n}: n={c.n_calibration}, threshold {c.threshold:.4f}" + ("" if c.achievable else " (too few to certify alone)")
        for n, c in {**per_source, **candidates}.items()
    ]
    note = (
        f"one threshold shared by all {n_targets} target(s), calibrated on the max score over targets; "
        f"split conformal per source of held-out negatives ({'; '.join(parts)}); the largest ({name}) is used"
    )
    if not best.achievable:
        note += f". {best.note}"
    if estimate:
        rates = ", ".join(f"{n} {r:.4f}" for n, r in _two_fold_fpr(max_scores, target_fpr, n_targets).items())
        note += f". Estimated false-positive rate on unseen negatives (2-fold cross-calibration): {rates}"
    return Calibration(
        threshold=best.threshold,
        target_fpr=target_fpr,
        n_calibration=sum(c.n_calibration for c in per_source.values()),
        achievable=best.achievable,
        note=note,
    )


def _two_fold_fpr(max_scores: dict[str, np.ndarray], target_fpr: float, n_targets: int) -> dict[str, float]:
    """Flag rate of each source at a threshold calibrated without those rows.

    The rate on the calibration rows themselves is <= target_fpr by construction, so it
    says nothing; calibrating on alternate halves and measuring on the other half gives
    an honest estimate of what new traffic like each source will see.
    """
    flagged = {name: 0 for name in max_scores}
    for fold in (0, 1):
        fitted = {n: v[fold::2] for n, v in max_scores.items() if v[fold::2].size}
        threshold = _joint_threshold(fitted, target_fpr, n_targets, estimate=False).threshold
        for name, scores in max_scores.items():
            flagged[name] += int(np.sum(scores[1 - fold :: 2] > threshold))
    return {name: flagged[name] / max(v.size, 1) for name, v in max_scores.items()}


@dataclass(frozen=True)
class _TargetPlan:
    """What one head trains on; ``retain`` are its retain rows (left out in turn when cross-fitting)."""

    train_texts: list[str]
    train_labels: np.ndarray
    retain: list[str]
    n_forget: int
    n_retain_train: int
    n_background_train: int


def _plan_target(target: TargetData, targets: list[TargetData], bg_train: list[str]) -> _TargetPlan:
    """Choose one head's training rows: its forget texts against everything it must not flag.

    A forget text is never a negative for its own target (if the background or another
    target contains it, the policy's forget list wins).
    """
    positives = _unique(target.forget)
    forget_set = set(positives)
    retain_train = [s for s in _unique(target.retain) if s not in forget_set]
    other_forget = [s for t in targets if t.id != target.id for s in t.forget]

    negatives = [s for s in _unique(retain_train + other_forget + bg_train) if s not in forget_set]
    if not negatives:
        raise UserError(f"target {target.id!r}: no negative examples to train on; add retain examples or background prompts")
    labels = np.concatenate([np.ones(len(positives), dtype=np.int64), np.zeros(len(negatives), dtype=np.int64)])
    return _TargetPlan(
        train_texts=positives + negatives,
        train_labels=labels,
        retain=retain_train,
        n_forget=len(positives),
        n_retain_train=len(retain_train),
        n_background_train=len(set(negatives) & set(bg_train)),
    )


def _validate_targets(targets: list[TargetData]) -> None:
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


def _view(feats: np.ndarray, view: FeatureView, dim: int) -> np.ndarray:
    """The columns of :meth:`Encoder.features` a view reads; ``sentence`` is the last block, rescaled to unit norm.

    Fitting and scoring both go through here, so a text's features, and so its score,
    are computed the same way in calibration and at run time.
    """
    if view == "layers":
        return feats
    return feats[:, -dim:] * np.float32(np.sqrt(feats.shape[1] // dim))


def _view_width(encoder: Encoder, view: FeatureView) -> int:
    return encoder.feature_dim if view == "layers" else encoder.dim


def _features(emb: np.ndarray, lex: sparse.csr_matrix) -> sparse.csr_matrix:
    """Embedding and lexical blocks side by side (the lexical rows already carry the lexicon's weight)."""
    return sparse.hstack([sparse.csr_matrix(emb.astype(np.float64)), lex], format="csr")


def _head_scores(emb: np.ndarray, lex: sparse.csr_matrix, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Sigmoid of the linear heads, in float64 so thresholds compare at full precision.

    The same linear function as ``_features(emb, lex) @ weights.T``, computed per block:
    stacking a dense embedding into a sparse matrix on every request cost more than the
    products themselves.
    """
    dim = emb.shape[1]
    linear = emb.astype(np.float64) @ weights[:, :dim].T + np.asarray(lex @ weights[:, dim:].T)
    return expit(linear + bias)


def _embed(encoder: Encoder, texts: list[str], progress: bool) -> np.ndarray:
    """Embed in chunks so a long fit shows progress; chunking does not change the result."""
    out = np.empty((len(texts), encoder.feature_dim), dtype=np.float32)
    with tqdm(total=len(texts), desc="embedding examples", unit="text", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(texts), _EMBED_CHUNK):
            chunk = texts[start : start + _EMBED_CHUNK]
            out[start : start + len(chunk)] = encoder.features(chunk)
            bar.update(len(chunk))
    return out


def _unique(texts: Iterable[str]) -> list[str]:
    """Distinct non-blank texts in first-seen order, so splits depend only on content and seed."""
    return list(dict.fromkeys(s for s in texts if s.strip()))


def _frozen(values: np.ndarray) -> np.ndarray:
    """A private float64 copy that cannot be written, so shared instances stay immutable."""
    arr = np.array(values, dtype=np.float64)
    arr.flags.writeable = False
    return arr


def _read_meta(directory: Path) -> dict[str, Any]:
    """Read and check ``classifier.json``; every failure says which file and what to do."""
    path = directory / META_FILE
    if not path.is_file():
        raise GuardLoadError(f"{path}: not found; is {directory} a fitted guard directory? Run `eco-guard fit` to create one")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GuardLoadError(f"{path}: unreadable ({exc}); re-run fit") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise GuardLoadError(f"{path}: not an eco-guard classifier file")
    if meta.get("format_version") != FORMAT_VERSION:
        raise GuardLoadError(
            f"{path}: format version {meta.get('format_version')!r}, this eco-guard reads version {FORMAT_VERSION}; "
            f"re-run fit with this version"
        )
    ids = meta.get("target_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise GuardLoadError(f"{path}: target_ids must be a list of strings")
    terms = meta.get("lexical_terms")
    if not isinstance(terms, list) or not all(isinstance(t, str) for t in terms):
        raise GuardLoadError(f"{path}: lexical_terms must be a list of strings")
    if not isinstance(meta.get("dim"), int) or not isinstance(meta.get("encoder"), str):
        raise GuardLoadError(f"{path}: missing or invalid 'dim' / 'encoder'")
    return meta
