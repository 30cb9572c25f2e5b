"""Neighbourhoods of the held-out negatives, each calibrating the threshold on its own (Mondrian conformal).

Split conformal certifies ``target_fpr`` on traffic like the pooled held-out negatives.
A topic's neighbouring subject is a small share of that pool, so it can be flagged twenty
times as often while the pool stays at 1% (the issue-27 measurements: MMLU chemistry at
0.198 under a hazardous-chemistry policy). Cutting the negatives into groups and giving
each group its own conformal threshold (the largest wins, as for the sources already,
see :func:`~eco_guard.classifier.calibration.joint_threshold`) bounds the rate for traffic
like *each* group: group-conditional, or Mondrian, conformal prediction. Only the groups
the pooled threshold fails (flagged above ``target_fpr`` by more than chance) get their own
(:func:`grouped_sources`); the rest are held by the pooled one.

The groups are the policy's own (a ``group_field`` on the retain examples, see
docs/policy.md) or, when it gives none, clusters the fit finds among the negatives that
calibrate (k-means on sentence embeddings). A group must be large enough that each half of
it can certify ``target_fpr`` alone (the 2-fold estimate the report gives per group,
:func:`~eco_guard.classifier.calibration.joint_threshold`, calibrates on halves), so
smaller groups are merged with their nearest group (centroid cosine) until each is; a
policy with too few negatives for two such groups is calibrated as before, pooled.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom
from sklearn.cluster import KMeans
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from eco_guard.classifier.calibration import conformal_threshold
from eco_guard.classifier.features.embedded import Embedded
from eco_guard.classifier.heads import TargetData, unique_texts
from eco_guard.classifier.negatives.background import knowledge_questions
from eco_guard.classifier.features.lexical import analyzer

UNGROUPED = "ungrouped"
"""The group of a calibrating text the policy gave no group for (name-swapped copies, say)."""

_NAME_TERMS = 3
"""Words that name a found cluster in the report ("cluster 2 (cell, protein, dna)")."""

_MAX_NAMES = 3
"""Given groups merged into one are listed up to this many, then counted."""


@dataclass(frozen=True)
class Groups:
    """Which group each calibrating text belongs to; sources are cut by it in :func:`grouped_sources`."""

    of: Mapping[str, str]
    found: bool
    """True when the fit found the groups (clusters), False when the policy gave them."""

    def names(self) -> list[str]:
        return list(dict.fromkeys(self.of.values()))


def min_group_size(target_fpr: float) -> int:
    """The smallest group that calibrates on its own: twice what split conformal needs to certify ``target_fpr``,
    so that each half of it still can in the 2-fold estimate (99 negatives at 1%, so 198)."""
    return 2 * (math.ceil(1.0 / target_fpr - 1e-9) - 1)


def calibration_groups(
    texts: Sequence[str], given: Mapping[str, str], sentence: np.ndarray, target_fpr: float, seed: int
) -> Groups | None:
    """The groups of ``texts`` (the negatives that will calibrate; ``sentence`` their unit sentence embeddings, row per text).

    ``given`` maps texts to the policy's group names; when any text has one, the policy's
    groups are used (texts without one form :data:`UNGROUPED`). Otherwise the fit clusters
    the texts into about ``len(texts) / min_group_size`` groups. Either way groups smaller
    than :func:`min_group_size` are merged with their nearest until none is. None when
    fewer than two groups remain: the pool is then one group, calibrated as before.
    """
    texts = unique_texts(texts)
    size = min_group_size(target_fpr)
    if len(texts) < 2 * size:
        return None
    unit = sentence / np.maximum(np.linalg.norm(sentence, axis=1, keepdims=True), 1e-12)
    found = not any(t in given for t in texts)
    if found:
        k = len(texts) // size
        label_of = [str(c) for c in KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(unit)]
    else:
        label_of = [given.get(t, UNGROUPED) for t in texts]
    members: dict[str, list[int]] = {}
    for i, name in enumerate(label_of):
        members.setdefault(name, []).append(i)
    merged = _merge_small(members, unit, size)
    if len(merged) < 2:
        return None
    if found:  # named after merging, by what the merged cluster is about
        merged = {_cluster_name(k, [texts[i] for i in rows], texts): rows for k, rows in enumerate(merged.values(), start=1)}
    return Groups({texts[i]: name for name, rows in merged.items() for i in rows}, found)


def fit_groups(
    targets: Sequence[TargetData],
    calibration_set: Sequence[str],
    sentence: Callable[[list[str]], np.ndarray],
    target_fpr: float,
    seed: int,
) -> Groups | None:
    """The groups of one fit's calibrating negatives: the policy's calibration set when it gives one (groups found), else
    its retain examples (the policy's groups, see ``TargetData.retain_groups``, or groups found). ``sentence`` embeds texts."""
    if calibration_set:
        texts, given = unique_texts(calibration_set), {}
    else:
        forget = {s for t in targets for s in t.forget}
        texts = [s for s in unique_texts(s for t in targets for s in t.retain) if s not in forget]
        given = {}
        for t in targets:
            for text, group in zip(t.retain, t.retain_groups):
                if group:
                    given.setdefault(text, group)
    if len(texts) < 2 * min_group_size(target_fpr):
        return None
    return calibration_groups(texts, given, sentence(texts), target_fpr, seed)


def _merge_small(members: dict[str, list[int]], unit: np.ndarray, size: int) -> dict[str, list[int]]:
    """Merge the smallest group into the one with the nearest centroid until every group has ``size`` members (or one is left)."""
    groups = {name: list(rows) for name, rows in members.items()}
    parts = {name: [name] for name in groups}
    while len(groups) > 1:
        smallest = min(groups, key=lambda n: (len(groups[n]), n))
        if len(groups[smallest]) >= size:
            break
        centroids = {n: unit[rows].mean(axis=0) for n, rows in groups.items()}
        here = centroids.pop(smallest)
        nearest = max(centroids, key=lambda n: float(here @ centroids[n]) / max(float(np.linalg.norm(centroids[n])), 1e-12))
        groups[nearest] += groups.pop(smallest)
        parts[nearest] += parts.pop(smallest)
    return {_joined(parts[name]): rows for name, rows in groups.items()}


def _joined(names: list[str]) -> str:
    shown = sorted(names)
    if len(shown) <= _MAX_NAMES:
        return " + ".join(shown)
    return " + ".join(shown[:_MAX_NAMES]) + f" + {len(shown) - _MAX_NAMES} more"


def _cluster_name(number: int, members: Sequence[str], texts: Sequence[str]) -> str:
    """A readable name for a found cluster: its number and the words most over-represented in it against all ``texts``,
    so the report and a warning can say which neighbourhood is flagged."""
    words = analyzer()

    def content(text: str) -> set[str]:
        return {w for w in words(text) if w.isalpha() and len(w) > 2 and w not in ENGLISH_STOP_WORDS}

    overall = Counter(w for t in texts for w in content(t))
    counts = Counter(w for t in members for w in content(t))
    # Share within the cluster times the share of the word's uses that fall in it; ties by the word.
    ranked = sorted(counts, key=lambda w: (-(counts[w] / len(members)) * (counts[w] / overall[w]), w))
    return f"cluster {number} ({', '.join(ranked[:_NAME_TERMS])})"


SPLIT_P = 0.05
"""A group of the policy's calibrates on its own when, at the threshold its whole source sets, it is flagged more often than
``target_fpr`` explains by chance (one-sided binomial test below this p-value). Groups the pooled threshold already
holds for stay pooled: splitting every group raised the threshold to the largest of many small-sample order
statistics, which costs recall with nothing to show for it (see :func:`grouped_sources`)."""


def _group_rows(texts: Sequence[str], groups: Groups) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        rows.setdefault(groups.of.get(text, UNGROUPED), []).append(i)
    return rows


def _too_often(flagged: int, n: int, target_fpr: float) -> bool:
    """More flags among ``n`` than ``target_fpr`` explains by chance (one-sided binomial test at :data:`SPLIT_P`)."""
    return flagged > 0 and float(binom.sf(flagged - 1, n, target_fpr)) < SPLIT_P


def grouped_sources(source: str, texts: Sequence[str], scores: np.ndarray, groups: Groups, target_fpr: float) -> dict[str, np.ndarray]:
    """The whole source, plus each group of the policy's that the whole source's threshold fails (see :data:`SPLIT_P`), as a
    source of its own.

    ``scores`` are ``texts``' max scores, in order. With the largest threshold winning (see
    :func:`~eco_guard.classifier.calibration.joint_threshold`), a split-out group's own
    split-conformal threshold bounds its rate at ``target_fpr``. Groups the fit found
    (clusters) never split: they are reported, and warned about, by :func:`group_report`.
    On D2 (WMDP bio and cyber, MMLU calibration rows in 11 found clusters) letting them
    split set the threshold by a 195-question biology cluster, and held-out recall fell
    from 0.92 to 0.71; a policy that names its groups asks for that trade, an unnamed
    cluster does not.
    """
    out = {source: scores}
    if groups.found:
        return out
    pooled = conformal_threshold(scores, target_fpr).threshold
    for name, idx in _group_rows(texts, groups).items():
        if _too_often(int(np.sum(scores[idx] > pooled)), len(idx), target_fpr):
            out[f"{source}: {name}"] = scores[idx]
    return out


def group_report(
    source: str, texts: Sequence[str], scores: np.ndarray, groups: Groups, threshold: float, target_fpr: float, split: Sequence[str]
) -> tuple[str, dict[str, float]]:
    """A line for the calibration note (every group: size, rate at the fit's threshold) and the groups flagged above
    ``target_fpr`` by more than chance, by ``"<source>: <group>"`` (the fit adds them to its estimates, so ``fit`` warns,
    naming them). ``split``: the sources that calibrated on their own."""
    parts: list[str] = []
    over: dict[str, float] = {}
    for name, idx in _group_rows(texts, groups).items():
        flagged = int(np.sum(scores[idx] > threshold))
        label = f"{source}: {name}"
        parts.append(f"{name} n={len(idx)} {flagged / len(idx):.3f}" + (" (calibrated on its own)" if label in split else ""))
        if label not in split and _too_often(flagged, len(idx), target_fpr):
            over[label] = flagged / len(idx)
    kind = "found by the fit (clusters; reported, not calibrated apart)" if groups.found else "given by the policy"
    return f"{source} in {len(parts)} groups {kind}; each group's rate at the threshold: {'; '.join(parts)}", over


GROUP_FOLDS = 5
"""Folds a grouped retain list is cross-fitted in: each fold's head trains on four fifths of every group, nearer the
final head (trained on all) than a head on half. Measured on WMDP-bio with its seven neighbouring subjects given
(benchmarks/topics.py): the same threshold and recall as halves (0.709), because a group's few highest-scoring
questions set its 1% threshold either way. Costs a head per fold and target, so only grouped policies (hundreds of
retain examples) pay it; halves would serve as well on what was measured."""


def grouped_folds(retain: Sequence[str], group_of: Mapping[str, str] | None) -> list[list[str]]:
    """The parts a head's retain list is cross-fitted in: two contiguous halves of the list, or, with groups,
    :data:`GROUP_FOLDS` contiguous slices of each group.

    Contiguous, because files list an entity's rows together (see
    :func:`~eco_guard.classifier.negatives.neighbours.cross_fitted_retain_scores`). Per
    group, because a head trained with none of a group would score all of it as unseen
    territory, when the final head is trained on all of each: a retain list sorted by
    subject put whole neighbouring subjects in one half.
    """
    retain = list(retain)
    if not group_of:
        half = len(retain) - len(retain) // 2
        return [retain[:half], retain[half:]]
    by_group: dict[str, list[str]] = {}
    for text in retain:
        by_group.setdefault(group_of.get(text, UNGROUPED), []).append(text)
    folds: list[list[str]] = [[] for _ in range(GROUP_FOLDS)]
    for rows in by_group.values():
        bounds = np.linspace(0, len(rows), GROUP_FOLDS + 1).round().astype(int)
        for k in range(GROUP_FOLDS):
            folds[k] += rows[bounds[k] : bounds[k + 1]]
    return [fold for fold in folds if fold]


PROBE = "built-in knowledge questions"
"""How the probe's groups are named in the estimates (see :func:`probe_neighbourhoods`)."""


@dataclass(frozen=True)
class Probe:
    """The fitted heads' flag rate on each cluster of the built-in knowledge questions, and which exceed ``target_fpr``."""

    rates: dict[str, tuple[int, float]]
    """Cluster name -> (questions, rate flagged at the fit's threshold)."""
    over: dict[str, float]
    """The clusters flagged above ``target_fpr`` by more than chance (:data:`SPLIT_P`): named in the fit's estimates,
    so ``fit`` warns about them."""

    def note(self, threshold: float) -> str:
        shown = "; ".join(f"{name} n={n} {rate:.3f}" for name, (n, rate) in self.rates.items())
        return (
            f"Neighbourhood probe: the {PROBE} no head trained on, in clusters of related subjects, flagged at threshold "
            f"{threshold:.4f}: {shown}"
        )


def probe_neighbourhoods(
    embedded: Embedded,
    trained: set[str],
    score: Callable[[list[str]], np.ndarray],
    threshold: float,
    target_fpr: float,
    seed: int,
) -> Probe:
    """How often the fitted heads flag each neighbourhood of ``texts`` (the built-in exam-style questions over 76 subjects
    that no head trained on): the check a policy without its field's subjects among its negatives cannot make itself.

    A topic head calibrated without its neighbouring subjects holds ``target_fpr`` on what it
    was calibrated on and can flag its field at many times that (WMDP-bio from 20 questions:
    MMLU's related subjects at 27%). These questions are clustered (sentence embeddings,
    clusters of about half :func:`min_group_size`, since they only estimate), each cluster is
    named by its words, and its rate at the final threshold is reported; a cluster above
    ``target_fpr`` by more than chance becomes one of the fit's estimates, so ``fit`` warns,
    naming it. ``score`` gives the max score over targets of texts (embedded already);
    ``trained``: the texts some head trained on, left out.
    """
    corpus = knowledge_questions()
    embedded.add_corpus(corpus, cached=True)
    texts = [s for s in unique_texts(corpus) if s not in trained]
    size = max(min_group_size(target_fpr) // 2, 2)
    if len(texts) < 2 * size:
        return Probe({}, {})
    sentence = embedded.matrix(texts)[:, -embedded.encoder.dim :]
    unit = sentence / np.maximum(np.linalg.norm(sentence, axis=1, keepdims=True), 1e-12)
    labels = KMeans(n_clusters=len(texts) // size, n_init=4, random_state=seed).fit_predict(unit)
    members: dict[str, list[int]] = {}
    for i, c in enumerate(labels.tolist()):
        members.setdefault(str(c), []).append(i)
    merged = _merge_small(members, unit, size)
    scores = score(texts)
    rates: dict[str, tuple[int, float]] = {}
    over: dict[str, float] = {}
    for k, rows in enumerate(merged.values(), start=1):
        name = f"{PROBE}, {_cluster_name(k, [texts[i] for i in rows], texts)}"
        flagged = int(np.sum(scores[rows] > threshold))
        rates[name] = (len(rows), flagged / len(rows))
        if flagged and float(binom.sf(flagged - 1, len(rows), target_fpr)) < SPLIT_P:
            over[name] = flagged / len(rows)
    return Probe(rates, over)
