"""Which targets lack near retain examples, and name-swapped copies of an entity target's forget examples to stand in for them.

Retain examples are what teaches a head where its target ends, but only those near it
(:func:`near_retain_counts`): "How do I reset my router?" says nothing about questions on
other people. And a few near ones are not enough either. A made-up novelist's head, from
five questions and no calibration set, flagged 7, 4, 3, 3, 1 and 0 of 8 same-form questions
about other people when given 2, 4, 6, 8, 10 and 15 of its own questions asked about other
made-up people as retain examples, and 7 of 8 with four everyday ones; with the copies below
added, none in every case.

So in a policy without a calibration set, an entity target with fewer than
:data:`MIN_NEAR_RETAIN` near retain examples gets copies. A target whose examples keep naming
one entity (a person, a book, a company; see :func:`~eco_guard.entities.central_names`) is
about that entity, yet a head without near negatives learns the *kind* of question its
examples are ("the genre of an author", "the parents of an author") as much as the name,
and the people-question stand-ins cannot match every policy's phrasing. The same questions
with the name replaced by made-up people's are the nearest negatives there are: trained
on, the head must key on the name; calibrated cross-fitted like any retain examples, the
threshold counts how often a question of the same form about someone else is flagged.

That holds only when the name is what the target is about. A topic's examples can keep
naming a term too (four of eight macroeconomics questions mention GDP), and there the
copies are still questions on the topic: as negatives they taught the head against its
own topic and, calibrated, raised the shared threshold until the six-subject probe
recalled 4% of held-out questions instead of 32%. What tells the two apart is how many
examples name it (:data:`ENTITY_SHARE`). Checking instead that the copies cost no recall
on held-out forget examples failed: a person's one example that does not name them ("the
author born in Baghdad on ...") is lost the same way, so the check turned away persons too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from eco_guard.classifier.negatives.background import name_parts, name_swapped
from eco_guard.classifier.heads import TargetData, unique_texts
from eco_guard.entities import central_names, names_pattern

ENTITY_SHARE = 0.75
"""A target is entity-like when one name occurs in at least this share of its forget examples.
Measured: the first five questions of TOFU's 200 authors name the author in four (161
authors) or all five (37; one author in three, one in none); of the six-subject probe's
eight questions per MMLU subject at most half share a name (GDP in macroeconomics), and of
WMDP's training questions, in groups of twenty, at most 0.3."""

SWAPS_PER_TARGET = 100
"""Copies made of each entity target's forget examples, spread evenly over the examples that
name the entity: enough to certify a 1% rate as a calibration source of their own. Measured
on the person probes (one TOFU author from five questions, no retain examples; questions
about 900 other authors flagged): none 26%; 3, 5, 10 and 20 copies per example, pooled with
the background because too few to certify alone, 16%, 9%, 5.4% and 4.3%; 100 per target,
their own source, 2.8% (0.2-6% per author); recall 0.987 throughout."""


NEAR_QUANTILE = 0.9
"""A retain example is near its target when its nearest forget example is closer to it than
to this share of generic chat prompts (sentence-embedding cosine); see :func:`near_retain_counts`."""


MIN_NEAR_RETAIN = 10
"""Near retain examples that are enough on their own. An entity target with fewer gets the
copies (measured in the module docstring: 10 near ones left 1 of 8 questions about other
people flagged, fewer left 3-7), and a policy with fewer over all its targets gets the
stand-ins for near negatives (:func:`eco_guard.classifier.fit.lacks_near_negatives`).
A target with this many is not reported as having generic retain examples, whatever share
of them the near ones are (:func:`lacks_near_retain`)."""


@dataclass(frozen=True)
class Swaps:
    """One target's copies, kept apart by the forget example each was made from, so folds can hold out both."""

    target_id: str
    by_example: dict[str, list[str]]

    @property
    def copies(self) -> list[str]:
        return [c for cs in self.by_example.values() for c in cs]

    def copies_of(self, examples: Sequence[str]) -> list[str]:
        """The copies made from ``examples`` only: a fold that holds an example out holds its copies out too."""
        return [c for s in examples for c in self.by_example.get(s, [])]


def entity_names(targets: Sequence[TargetData]) -> list[str]:
    """The names that make targets entity-like (:data:`ENTITY_SHARE`), over all targets."""
    return list(dict.fromkeys(n for t in targets for n in central_names(unique_texts(t.forget), min_share=ENTITY_SHARE)))


def without_mentions(corpora: dict[str, Sequence[str]], names: Sequence[str]) -> dict[str, Sequence[str]]:
    """``corpora`` without the texts that name any of ``names``: a prompt about a target's entity is no negative for it.

    The built-in corpora were written about made-up people and everyday things, but a
    target can still be named like one ("Carlos Garcia" is a made-up person here and a
    real one elsewhere), and a chat prompt can mention a real person a policy forgets.
    Unchanged (the same object, so the feature cache still applies) when nothing matches.
    """
    if not names:
        return corpora
    about = names_pattern(names)
    if not any(about.search(s) for corpus in corpora.values() for s in corpus):
        return corpora
    return {name: [s for s in corpus if not about.search(s)] for name, corpus in corpora.items()}


def near_retain_counts(targets: Sequence[TargetData], sentence: Callable[[Sequence[str]], np.ndarray], generic: Sequence[str]) -> list[int]:
    """How many of each target's retain examples are near it: closer to its nearest forget example than generic prompts are.

    Near means: closer to the target's nearest forget example (cosine of the unit-norm
    ``sentence(texts)`` embeddings) than :data:`NEAR_QUANTILE` of the ``generic`` prompts
    are. Measured shares: D3's 20 authors (10 retain questions on other authors each)
    90-100% near; the France/Python test policy's retain examples (other countries, other
    languages) 83% and 100%; the demo policy's 85%; WMDP topics with questions from
    neighbouring MMLU subjects 75% and 83%; four everyday questions 0%; two everyday and
    two about famous people 50%; world facts for real authors (protocol E1's policy) 2%;
    400 random MMLU questions for WMDP-bio and -cyber (the efficacy benchmark's policy)
    22%, which is 86 near ones. Without generic prompts to compare with, every retain
    example counts as near.
    """
    generic = unique_texts(generic)
    reference = sentence(generic) if generic else None
    counts: list[int] = []
    for t in targets:
        retain = unique_texts(t.retain)
        if reference is None or not retain:
            counts.append(len(retain))
            continue
        forget = sentence(unique_texts(t.forget))
        bar = np.quantile((reference @ forget.T).max(axis=1), NEAR_QUANTILE)
        counts.append(int(np.sum((sentence(retain) @ forget.T).max(axis=1) > bar)))
    return counts


def lacks_near_retain(n_near: int, n_retain: int) -> bool:
    """Whether a target's retain examples, ``n_near`` of ``n_retain`` near it, are generic: ``fit`` warns and the report marks them.

    True unless most of them are near, or at least :data:`MIN_NEAR_RETAIN` are; so also for a
    target without retain examples.
    """
    return not (n_near > n_retain / 2 or n_near >= MIN_NEAR_RETAIN)


def candidate_swaps(targets: Sequence[TargetData], seed: int) -> list[Swaps]:
    """Copies for every target whose examples name a central entity; targets without one get none."""
    out: list[Swaps] = []
    for i, t in enumerate(targets):
        forget = unique_texts(t.forget)
        names = central_names(forget, min_share=ENTITY_SHARE)
        if not names:
            continue
        mentions = names_pattern(name_parts(names))  # what name_swapped rewrites: parts of the name count too
        naming = [s for s in forget if mentions.search(s)]
        per_example = -(-SWAPS_PER_TARGET // len(naming))
        own, made = set(forget), 0
        by_example: dict[str, list[str]] = {}
        for k, text in enumerate(naming):
            copies = [c for c in name_swapped([text], names, per_text=per_example, seed=seed + 7919 * i + k) if c not in own]
            by_example[text] = copies[: SWAPS_PER_TARGET - made]
            made += len(by_example[text])
        out.append(Swaps(t.id, by_example))
    return out


def with_copies(targets: Sequence[TargetData], swaps: Sequence[Swaps]) -> list[TargetData]:
    """``targets`` with the copies of the forget examples each keeps as extra retain examples."""
    by_id = {sw.target_id: sw for sw in swaps}
    return [
        TargetData(t.id, t.forget, [*t.retain, *by_id[t.id].copies_of(unique_texts(t.forget))]) if t.id in by_id else t
        for t in targets
    ]


def with_swapped_retain(targets: list[TargetData], swaps: Sequence[Swaps]) -> tuple[list[TargetData], str]:
    """``targets`` with all their copies as retain examples, and a sentence for the calibration note."""
    copies = {s.target_id: s.copies for s in swaps if s.copies}
    if not copies:
        return targets, ""
    out = with_copies(targets, swaps)
    listed = ", ".join(f"{tid!r} ({len(c)})" for tid, c in copies.items())
    return out, (
        f". Entity targets with fewer than {MIN_NEAR_RETAIN} retain examples near them were given copies of their "
        f"forget examples naming made-up people, trained on and calibrated (cross-fitted) as retain examples: {listed}"
    )
