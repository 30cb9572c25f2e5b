"""Choosing what the heads read: the encoder view and the lexical weight, by held-out recall."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from eco_guard.classifier.calibration_groups import Groups
from eco_guard.classifier.fit.core import fit_core
from eco_guard.classifier.fit.held_out import NegativeSplit
from eco_guard.classifier.heads import FeatureView, TargetData, unique_texts
from eco_guard.classifier.negatives.swaps import Swaps, with_copies
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


PARALLEL_MIN_SECONDS = 6.0
"""Feature-choice work (the first fold fit's time, times the folds left) above which the rest
run in worker processes. Starting a worker costs about a second and a half (a fresh
interpreter importing numpy, scipy and scikit-learn), so a small policy, whose whole
choice takes a second or two, stays in this process."""

WORKERS_ENV = "ECO_GUARD_FIT_WORKERS"
"""Environment variable capping the worker processes of the feature choice (1: none)."""


def fit_workers() -> int:
    """How many processes the feature choice may use: the CPUs this process may run on, or :data:`WORKERS_ENV`.

    The fold fits are independent and spend their time in scikit-learn's L-BFGS and scipy's
    sparse products, which hold the GIL: threads gave nothing (warm D3, 29.9 s against 30.9 s
    serial), processes do.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if not raw:
        return cpus
    if not raw.isdigit() or int(raw) < 1:
        raise UserError(f"environment variable {WORKERS_ENV}={raw!r}: expected a whole number of worker processes, 1 or more")
    return min(int(raw), cpus)


@dataclass(frozen=True)
class Candidate:
    """One feature set :func:`select_features` compares: an encoder view and a lexical weight."""

    view: FeatureView
    lexical_weight: float

    @property
    def name(self) -> str:
        if not self.lexical_weight:
            return f"{self.view}, no lexical block"
        return f"{self.view} + lexical x{self.lexical_weight:g}"


NO_LEXICAL = Candidate("sentence", 0.0)
"""The plain embedding's features, tried last (so it must beat every other candidate strictly): a topic's forget
words are its field's words too ("reaction", "pathogen", "exploit"), and a lexical block that fires on them flags the
neighbouring subject, which the per-group calibration (:mod:`eco_guard.classifier.calibration_groups`) then pays for
in recall. These are the features of the embedding + logistic-regression baseline, so the choice can always fall
back to them."""


def select_features(
    targets: list[TargetData],
    views: dict[FeatureView, np.ndarray],
    row_of: dict[str, int],
    texts: list[str],
    split: NegativeSplit,
    target_fpr: float,
    overlapping: frozenset[tuple[int, int]],
    swaps: Sequence[Swaps] = (),
    *,
    seed: int = 0,
    progress: bool = False,
    groups: Groups | None = None,
) -> tuple[Candidate, str]:
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
    with ``seed``. ``groups``: the calibration groups of the real fit, so each candidate's
    threshold holds its rate per neighbourhood as the real one does.
    """
    plain = Candidate("sentence", LEXICAL_WEIGHTS[0])
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
    candidates = [Candidate(view, weight) for weight in LEXICAL_WEIGHTS for view in views] + [NO_LEXICAL]
    jobs = [(candidate, fold) for candidate in candidates for fold in folds]
    hits: dict[Candidate, int] = dict.fromkeys(candidates, 0)
    shared = (row_of, texts, split, target_fpr, overlapping, groups)
    bar = tqdm(total=len(jobs), desc="choosing features", unit="fit", disable=not progress, file=sys.stderr)
    with bar:
        for (candidate, _), n in zip(jobs, _fold_hits_all(jobs, views, shared)):
            hits[candidate] += n
            bar.update()
    total = sum(len(held) for _, held in folds)
    recall = {c: hits[c] / total for c in candidates}
    chosen = max(recall, key=lambda c: recall[c])  # the first of equals: the simplest
    shown = ", ".join(f"{c.name} {r:.3f}" for c, r in recall.items())
    return chosen, (
        f"{chosen.name} features, chosen by recall on held-out forget examples at the calibrated threshold "
        f"(2-fold over {judged}: {shown})"
    )


def _fold_hits(
    feats: np.ndarray,
    lexical_weight: float,
    kept: list[TargetData],
    held: list[str],
    row_of: dict[str, int],
    texts: list[str],
    split: NegativeSplit,
    target_fpr: float,
    overlapping: frozenset[tuple[int, int]],
    groups: Groups | None,
) -> int:
    """How many of the ``held`` forget examples one candidate's heads, fitted on ``kept``, flag at their calibrated threshold."""
    core = fit_core(kept, feats, row_of, texts, split, target_fpr, lexical_weight, overlapping=overlapping, estimate=False, groups=groups)
    rows = [row_of[s] for s in held]
    return int(np.sum(core.scores[rows].max(axis=1) > core.calibration.threshold))


def _fold_hits_all(
    jobs: list[tuple[Candidate, tuple[list[TargetData], list[str]]]], views: dict[FeatureView, np.ndarray], shared: tuple
) -> Iterator[int]:
    """:func:`_fold_hits` of every (candidate, fold) job, in order: the first here, the rest in worker processes
    when they are worth starting (:data:`PARALLEL_MIN_SECONDS`, :func:`fit_workers`).

    Every job is the same computation wherever it runs, so the choice does not depend on
    how many processes made it.
    """
    def call(job: tuple[Candidate, tuple[list[TargetData], list[str]]]) -> tuple:
        candidate, (kept, held) = job
        return (views[candidate.view], candidate.lexical_weight, kept, held, *shared)

    if not jobs:
        return
    start = time.perf_counter()
    yield _fold_hits(*call(jobs[0]))
    rest = jobs[1:]
    workers = min(fit_workers(), len(rest))
    if workers < 2 or (time.perf_counter() - start) * len(rest) < PARALLEL_MIN_SECONDS:
        for job in rest:
            yield _fold_hits(*call(job))
        return
    from joblib import Parallel, delayed  # scikit-learn's own dependency; loky workers are reused across fits

    yield from Parallel(n_jobs=workers, return_as="generator")(delayed(_fold_hits)(*call(job)) for job in rest)


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
