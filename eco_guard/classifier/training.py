"""Fitting a policy's heads: which texts train and which calibrate, which features, one shared threshold.

The procedure behind ``eco-guard fit``'s classifier (:func:`fit_heads`): embed every text
once, choose the feature view and lexical weight by held-out recall on the policy's own
forget examples (:func:`select_features`), fit one logistic head per target
(:mod:`eco_guard.classifier.heads`), and calibrate one threshold for all heads by split
conformal prediction on every source of held-out negatives
(:mod:`eco_guard.classifier.calibration`), including the policy's own examples scored
cross-fitted (:mod:`eco_guard.classifier.neighbours`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Required, TypedDict

import numpy as np
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from eco_guard.classifier.background import background_prompts, near_negative_stand_ins
from eco_guard.classifier.calibration import Calibration, joint_threshold
from eco_guard.canonical import Canonicalizer, scored_pieces
from eco_guard.classifier.encoder import Encoder
from eco_guard.classifier.embedded import Embedded
from eco_guard.classifier.heads import (
    VIEWS,
    FeatureView,
    TargetData,
    TargetPlan,
    features,
    fit_head,
    head_scores,
    plan_target,
    unique_texts,
    view_columns,
)
from eco_guard.classifier.lexical import Lexicon
from eco_guard.classifier.neighbours import (
    cross_fitted_retain_scores,
    cross_target_scores,
    neighbour_scores,
    overlapping_targets,
)
from eco_guard.classifier.swaps import (
    MIN_NEAR_RETAIN,
    Swaps,
    candidate_swaps,
    entity_names,
    lacks_near_retain,
    near_retain_counts,
    with_copies,
    with_swapped_retain,
    without_mentions,
)
from eco_guard.errors import UserError


SELECTION_TARGETS = 20
"""Most targets :func:`select_features` fits; a larger policy is judged on this many, drawn
at random (seeded). The choice costs about 40 head fits per target it looks at (4
candidates x 2 folds x a head and its 4 cross-fitted calibration heads), which made it
most of a fit as policies grow: 60 two-question people took 148 s, 142 of them choosing.
Which regime a policy is in (a handful of wordings per target, or hundreds) shows on 20
targets as well as on all. Every benchmark policy has at most 20, so each is still
chosen on all of its targets."""

LEXICAL_WEIGHTS = (1.0, 2.0)
"""Scales of the lexical block against the unit-norm encoder block that ``fit`` compares.
Names and rare terms decide entity-like targets, so there a heavier lexical block helps
(validation rows: TOFU recall 0.82 -> 0.875 at weight 2, with the few-shot D3 false
positives on unseen authors down 0.053 -> 0.038); with a handful of examples it ties
heads to the examples' exact words (the France/Python test policy: 3 of 7 rewordings
missed at 2, none at 1), and topic-like targets lose recall (WMDP 0.92 -> 0.89). One
fixed weight cannot serve all three, so :func:`select_features` measures which suits the
policy; 1.0, listed first, wins ties."""

NO_NEAR_NEGATIVES = (
    f"the policy has fewer than {MIN_NEAR_RETAIN} retain examples near its targets (everyday ones are not near) "
    "and no classifier.calibration set, so the false-positive rate "
    "is certified only on eco-guard's built-in generic prompts (and, with several targets, the other targets' "
    "examples); prompts close to a target (other people, neighbouring topics) can be flagged far more often. Add "
    "retain examples of what must still pass, or a classifier.calibration sample of real traffic"
)
"""Said in the calibration note (so in the fit report) and as a warning by ``fit`` when
:func:`lacks_near_negatives`: even with the stand-ins for near negatives, the generalisation
probes measured 0.2-6% of questions about other people flagged by a one-person policy (with
its name-swapped copies; 13-36% without), and 2.4-3.4% of exam questions on other subjects
by a topic's, against a certified 1%."""

RETAIN = "cross-fitted retain"
"""Name of the policy's own near negatives as a calibration source, as notes and reports give it."""

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
    :func:`with_swapped_retain`), so the report does not pass them off as the policy's."""
    lacks_near_retain: bool = False
    """No retain examples near the target: none, or most no nearer than everyday prompts (see
    :func:`near_retain_counts`; always False with a calibration set, which says what is near)."""
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
    calibration: Sequence[str] | None
    progress: bool
    canonical: Canonicalizer | None


def fit_heads(
    encoder: Encoder,
    targets: Sequence[TargetData],
    *,
    target_fpr: float,
    seed: int = 0,
    background: Sequence[str] | None = None,
    calibration: Sequence[str] | None = None,
    progress: bool = True,
    canonical: Canonicalizer | None = None,
) -> FittedHeads:
    """Fit one head per target, then calibrate one threshold for all of them.

    Negatives for a target's head are its retain texts, the other targets' forget texts
    and the background prompts (with questions about made-up people and about other
    subjects when the policy has no calibration set and fewer than ten retain examples near
    its targets, see :func:`near_negative_stand_ins` and :func:`lacks_near_negatives`). Half
    of the background is held out from every head. Without a calibration set, an entity target with fewer than ten retain examples near it
    (:func:`near_retain_counts`; everyday ones are not near) gets copies of its forget
    examples naming made-up people as retain examples (:mod:`eco_guard.classifier.swaps`).
    ``calibration`` (the policy's ``classifier.calibration`` negatives: a sample of the
    traffic the guard will see) is held out too. Without it, every head trains on all
    of its retain texts, and the retain texts calibrate *cross-fitted*: each half of a
    target's retain list is scored by a head fitted without that half (see
    :func:`cross_fitted_retain_scores`). Holding the second half out of training (the
    former rule) left each head half its few retain examples and certified the rate on
    half as many negatives (D3: 2.4% / 5.0% FPR on unseen TOFU questions / authors at a
    1% target, against 1.4% / 2.8% cross-fitted, at the same recall). With several
    targets, each target's forget texts join them, scored by the other heads fitted
    without them (:func:`cross_target_scores`): they are the nearest non-target
    neighbours every other head has, and 10 retain authors alone under-stated the rate
    on unseen ones (D3 validation rows: 5.3% -> 2.6%; test rows: 1.4% / 2.8% -> 0.8% /
    0.5% at recall 0.990 / 0.993). Targets that overlap (one topic split in two, see
    :func:`overlapping_targets`) are not each other's neighbours.

    The threshold is shared by every head and uses the *max score over targets* as the
    conformal score: a prompt counts as flagged when any target flags it, so this is
    what makes ``target_fpr`` bound the rate at which a negative is flagged at all
    (per-target thresholds let n targets flag up to n times that rate). Each source of
    held-out negatives (policy calibration or cross-fitted near neighbours; each corpus of
    the held-out background, see :func:`held_out_sources`) gets its own split-conformal
    threshold and the largest wins, so the rate is bounded for traffic like *each* source
    rather than for their mixture, where a large generic background would hide a high rate
    on near neighbours.

    The encoder runs once; whether the heads read the sentence embedding or every
    layer-pooled block, and how much the lexical block weighs, are then chosen by
    held-out recall on the policy's own forget examples (see :func:`select_features`),
    and the report says which and why.

    ``canonical`` is the guard's reader of disguised text (:mod:`eco_guard.canonical`):
    live texts are scored as written and in canonical form, so every held-out negative is
    too, and the threshold certifies the rate of the two readings together.
    """
    targets = list(targets)
    validate_targets(targets)
    if not 0.0 < target_fpr < 1.0:
        raise UserError(f"target_fpr must be strictly between 0 and 1, got {target_fpr}")
    builtin = background is None
    chat = background_prompts() if background is None else background
    # Every distinct text is embedded once, whatever roles it plays in any fit below; the
    # built-in corpora once per encoder (feature cache). A caller's own background is not
    # cached: the cache holds a bounded set of corpora.
    embedded = Embedded(encoder, progress=progress)
    embedded.add_corpus(chat, cached=builtin)
    embedded.add([s for t in targets for s in t.forget + t.retain] + list(calibration or []))
    # With a calibration set the policy has said what near traffic looks like; without one,
    # retain examples no nearer to their target than everyday prompts say nothing about it.
    near: list[int] = []  # near retain examples per target; none are looked for with a calibration set
    if not calibration:
        near = near_retain_counts(targets, lambda ts: view_columns(embedded.matrix(ts), "sentence", encoder.dim), chat)
    lacking_ids = {t.id for t, n in zip(targets, near) if lacks_near_retain(n, len(unique_texts(t.retain)))}
    bare = lacks_near_negatives(sum(near), calibration)
    corpora: dict[str, Sequence[str]] = {"held-out background": chat}
    if builtin and bare:
        # Without near negatives of the policy's own, generic questions about made-up people and
        # about other subjects stand in for them (see near_negative_stand_ins for why only then).
        stand_ins = near_negative_stand_ins()
        corpora.update(stand_ins)
        for corpus in stand_ins.values():
            embedded.add_corpus(corpus, cached=True)
    corpora = without_mentions(corpora, entity_names(targets))
    # An entity target without enough retain examples near it gets its examples about made-up people as retain (swaps.py).
    swaps = candidate_swaps([t for t, n in zip(targets, near) if n < MIN_NEAR_RETAIN], seed)
    embedded.add([c for sw in swaps for c in sw.copies], desc="embedding name-swapped copies")
    bg = unique_texts(s for corpus in corpora.values() for s in corpus)
    bg_order = np.random.default_rng(seed).permutation(len(bg))
    n_bg_cal = len(bg) // 2
    user_cal = unique_texts(calibration or [])
    # Held-out texts are scored as live prompts are, by their highest-scoring piece; the
    # background's pieces are cached like the background (all of it: the split varies by seed).
    bg_pieces = calibration_pieces(bg)
    embedded.add_corpus(unique_texts(p for ps in bg_pieces.values() for p in ps), cached=builtin)
    user_pieces = calibration_pieces(user_cal, canonical)
    embedded.add([p for ps in user_pieces.values() for p in ps], desc="embedding calibration sentences and windows")
    if canonical is not None:
        # The canonical readings depend on the policy's names, so they are embedded uncached.
        bg_pieces = calibration_pieces(bg, canonical)
        embedded.add([p for ps in bg_pieces.values() for p in ps], desc="embedding canonical forms")
    split = _Negatives(
        bg_train=[bg[i] for i in bg_order[n_bg_cal:]],
        bg_cal=held_out_sources(corpora, [bg[i] for i in bg_order[:n_bg_cal]]),
        user_cal=user_cal,
        pieces={**bg_pieces, **user_pieces},
    )
    piece_texts = [p for ps in split.pieces.values() for p in ps]
    texts = unique_texts(bg + [s for t in targets for s in t.forget + t.retain] + user_cal + [c for sw in swaps for c in sw.copies] + piece_texts)
    row_of = {text: i for i, text in enumerate(texts)}
    feats = embedded.matrix(texts)
    views: dict[FeatureView, np.ndarray] = {v: view_columns(feats, v, encoder.dim) for v in (VIEWS if encoder.feature_layers else ("sentence",))}
    # Only a fit without a calibration set uses other targets' examples as negatives.
    overlapping = frozenset() if split.user_cal else overlapping_targets(targets, views["sentence"], row_of)
    policy_targets = targets
    targets, swapped_note = with_swapped_retain(targets, swaps)
    choice, view_note = select_features(
        policy_targets, views, row_of, texts, split, target_fpr, overlapping, swaps, seed=seed, progress=progress
    )
    core = fit_core(
        targets,
        views[choice.view],
        row_of,
        texts,
        split,
        target_fpr,
        choice.lexical_weight,
        overlapping=overlapping,
        progress=progress,
        retain_name=_retain_source_name(any(t.retain for t in policy_targets), any(sw.copies for sw in swaps)),
    )
    calibrated = core.calibration
    calibrated = replace(calibrated, note=calibrated.note + swapped_note + (f". Caution: {NO_NEAR_NEGATIVES}" if bare else ""))
    fits = [
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
            n_swapped_retain=len(trained.retain) - len(target.retain),
            lacks_near_retain=target.id in lacking_ids,
            n_near_retain=near[i] if near else 0,
        )
        for i, (target, trained, plan) in enumerate(zip(policy_targets, targets, core.plans))
    ]
    return FittedHeads(
        target_ids=[t.id for t in targets],
        weights=core.weights,
        bias=core.bias,
        thresholds=np.full(len(targets), core.calibration.threshold),
        lexicon=core.lexicon,
        view=choice.view,
        fits=fits,
    )


def _retain_source_name(policy_retain: bool, copies: bool) -> str:
    """What the cross-fitted retain source holds, for the calibration note: the policy's examples, copies, or both."""
    if not copies:
        return RETAIN
    return f"{RETAIN} and name-swapped copies" if policy_retain else "cross-fitted name-swapped copies"


def lacks_near_negatives(n_near_retain: int, calibration: Sequence[str] | None) -> bool:
    """True when the policy gives too few negatives of its own near its targets: no calibration set, and fewer
    than :data:`MIN_NEAR_RETAIN` retain examples near their targets over all targets (see :func:`near_retain_counts`).

    The built-in background is then all a head knows of "not this target", so the certified
    rate holds only for traffic like it; ``fit`` warns, and adds the stand-ins for near
    negatives. A few near retain examples are not enough: a WMDP topic from 20 questions, with
    one or two questions from each of three neighbouring MMLU subjects as retain examples,
    flagged 7-10% and 3% of the other subjects' questions (the stand-ins bring a topic to
    2.4-3.4%), against 0.2-0.4% with four from each.
    """
    return not calibration and n_near_retain < MIN_NEAR_RETAIN


def calibration_pieces(texts: Sequence[str], canonical: Canonicalizer | None = None) -> dict[str, list[str]]:
    """The pieces (:func:`eco_guard.classifier.chunking.text_pieces`) of each multi-sentence text.

    A live prompt is judged by its highest-scoring piece, and a text of k sentences has
    about 1.5k chances to score high, so the held-out negatives that certify the rate are
    scored the same way: a calibration sample of long prompts then raises the threshold as
    much as such traffic needs. One-sentence texts are their own single piece. With a
    ``canonical`` reader, the pieces of a text's canonical form join them, as they do for
    a live prompt (:func:`eco_guard.canonical.scored_pieces`).
    """
    out: dict[str, list[str]] = {}
    for text in texts:
        pieces = scored_pieces(text, canonical)
        if len(pieces) > 1:
            out[text] = pieces
    return out


def piece_max_scores(scores: np.ndarray, row_of: dict[str, int], texts: Sequence[str], pieces: dict[str, list[str]]) -> np.ndarray:
    """The max over targets and over each text's pieces (the text alone when it has none) of ``scores``' rows."""
    return np.array([scores[[row_of[p] for p in pieces.get(s, (s,))]].max() for s in texts])


def held_out_sources(corpora: dict[str, Sequence[str]], held_out: list[str]) -> dict[str, list[str]]:
    """The held-out half of the background, kept apart by corpus (in ``held_out``'s order): each calibrates as its own source.

    The stand-ins for near negatives are near in different ways (other people, other
    subjects), and pooled with the chat prompts a high rate on one kind hides in the mix,
    exactly as a generic background would hide near neighbours (see :func:`fit_heads`).
    A text in two corpora counts for the first.
    """
    corpus_of: dict[str, str] = {}
    for name, corpus in corpora.items():
        for text in corpus:
            corpus_of.setdefault(text, name)
    sources: dict[str, list[str]] = {name: [] for name in corpora}
    for text in held_out:
        sources[corpus_of[text]].append(text)
    return sources


@dataclass(frozen=True)
class _Negatives:
    """The fit's background split (half trains heads, half calibrates, by corpus) and the policy's calibration texts."""

    bg_train: list[str]
    bg_cal: dict[str, list[str]]
    user_cal: list[str]
    pieces: dict[str, list[str]]
    """The pieces of each multi-sentence held-out text (see :func:`calibration_pieces`)."""


@dataclass(frozen=True)
class _Candidate:
    """One feature set :func:`select_features` compares: an encoder view and a lexical weight."""

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
    plans: list[TargetPlan]
    scores: np.ndarray


def fit_core(
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
    retain_name: str = RETAIN,
) -> _Core:
    """Heads for ``targets`` on already-embedded ``feats`` (rows per ``row_of``) and their joint threshold.

    See :func:`fit_heads` for which texts train and which calibrate; ``overlapping``
    (target index pairs, see :func:`overlapping_targets`) says whose examples are not each
    other's calibration neighbours. ``estimate`` adds the 2-fold false-positive estimate
    to the calibration note (skipped by the inner fits of :func:`select_features`, which
    only need the threshold). ``retain_name`` names the cross-fitted retain texts in the
    calibration note (see :func:`_retain_source_name`).
    """
    plans = [plan_target(t, targets, split.bg_train) for t in targets]
    # Held out from every head: no text any head trains on may calibrate the shared threshold.
    trained = {s for plan in plans for s in plan.train_texts}
    sources = {
        "calibration": [s for s in split.user_cal if s not in trained],
        **{name: [s for s in held if s not in trained] for name, held in split.bg_cal.items()},
    }
    # Texts trained only as some head's retain rows: cross-fitting keeps them unseen.
    not_retain = {s for t in targets for s in t.forget} | set(split.bg_train)
    retain_cal = [] if split.user_cal else unique_texts(s for plan in plans for s in plan.retain if s not in not_retain)

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
    max_scores = {name: piece_max_scores(all_scores, row_of, v, split.pieces) for name, v in sources.items() if v}
    if not split.user_cal:
        # Without a traffic sample, the policy's own examples are the nearest neighbours we
        # know: retain texts, and for each head the other targets' forget texts. Both were
        # trained on, so both are scored cross-fitted; pooled, they are one source.
        near: list[np.ndarray] = []
        if retain_cal:
            rows = [row_of[s] for s in retain_cal]
            near.append(cross_fitted_retain_scores(plans, retain_cal, all_scores[rows], train_feats, row_of, feats[rows], lex[rows]))
        others = np.zeros(0)
        if len(overlapping) < len(targets) * (len(targets) - 1):  # some pair of targets are each other's neighbours
            others = neighbour_scores(cross_target_scores(targets, plans, train_feats, row_of, feats, lex), overlapping)
        pooled = np.concatenate([*near, others])
        if pooled.size:
            # Named for what it holds: retain alone when every target overlaps every other.
            max_scores = {(f"{retain_name} and other targets' examples" if others.size else retain_name): pooled, **max_scores}
    if not max_scores:
        raise UserError("no held-out negatives to calibrate the threshold on; add retain examples or background prompts")
    calibration = joint_threshold(max_scores, target_fpr, len(targets), estimate=estimate)
    if overlapping:
        pairs = ", ".join(sorted(f"{targets[a].id!r} and {targets[b].id!r}" for a, b in overlapping if a < b))
        calibration = replace(
            calibration,
            note=f"{calibration.note}. Targets whose examples are as alike across the pair as within each, so not "
            f"counted as each other's neighbours (consider merging them): {pairs}",
        )
    return _Core(weights, bias, lexicon, calibration, plans, all_scores)


def select_features(
    targets: list[TargetData],
    views: dict[FeatureView, np.ndarray],
    row_of: dict[str, int],
    texts: list[str],
    split: _Negatives,
    target_fpr: float,
    overlapping: frozenset[tuple[int, int]],
    swaps: Sequence[Swaps] = (),
    *,
    seed: int = 0,
    progress: bool = False,
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
    two head fits per candidate; the encoder runs once. ``swaps``: the name-swapped copies
    the real fit gives as retain examples, each fold only those of the examples it keeps.
    A policy of more than :data:`SELECTION_TARGETS` targets is judged on that many, drawn
    with ``seed``.
    """
    plain = _Candidate("sentence", LEXICAL_WEIGHTS[0])
    if not any(len(unique_texts(t.forget)) >= 2 for t in targets):
        return plain, "sentence-embedding features (no held-out forget examples to compare feature sets on)"
    judged = "each target's forget list"
    if len(targets) > SELECTION_TARGETS:
        drawn = sorted(np.random.default_rng(seed).choice(len(targets), SELECTION_TARGETS, replace=False).tolist())
        new_index = {old: new for new, old in enumerate(drawn)}
        overlapping = frozenset((new_index[a], new_index[b]) for a, b in overlapping if a in new_index and b in new_index)
        judged = f"the forget lists of {SELECTION_TARGETS} of the {len(targets)} targets, drawn at random"
        targets = [targets[i] for i in drawn]
    folds = forget_folds(targets, swaps)
    recall: dict[_Candidate, float] = {}
    bar = tqdm(
        total=len(LEXICAL_WEIGHTS) * len(views) * len(folds), desc="choosing features", unit="fit",
        disable=not progress, file=sys.stderr,
    )
    with bar:
        for weight in LEXICAL_WEIGHTS:
            for view in views:
                hits = total = 0
                for kept, held in folds:
                    core = fit_core(
                        kept, views[view], row_of, texts, split, target_fpr, weight, overlapping=overlapping, estimate=False
                    )
                    rows = [row_of[s] for s in held]
                    hits += int(np.sum(core.scores[rows].max(axis=1) > core.calibration.threshold))
                    total += len(rows)
                    bar.update()
                recall[_Candidate(view, weight)] = hits / total
    chosen = max(recall, key=lambda c: recall[c])  # the first of equals: the simplest
    shown = ", ".join(f"{c.name} {r:.3f}" for c, r in recall.items())
    return chosen, (
        f"{chosen.name} features, chosen by recall on held-out forget examples at the calibrated threshold "
        f"(2-fold over {judged}: {shown})"
    )


def forget_folds(targets: list[TargetData], swaps: Sequence[Swaps] = ()) -> list[tuple[list[TargetData], list[str]]]:
    """Two folds, each keeping alternate halves of every target's forget list; and the examples each holds out.

    Targets with one example keep it in both. With ``swaps``, each fold's targets also get
    the name-swapped copies of the examples they keep (never of those held out) as retain.
    """
    folds: list[tuple[list[TargetData], list[str]]] = []
    for fold in (0, 1):
        kept, held = [], []
        for t in targets:
            forget = unique_texts(t.forget)
            if len(forget) < 2:
                kept.append(t)
                continue
            kept.append(TargetData(t.id, forget[fold::2], t.retain))
            held += forget[1 - fold :: 2]
        folds.append((with_copies(kept, swaps), held))
    return folds


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
