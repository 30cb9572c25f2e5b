"""Which negatives train the heads and which calibrate the threshold.

Half of the background trains and half is held out, kept apart by corpus so that each
corpus calibrates as its own source; the policy's calibration set only calibrates; every
held-out text is scored by its highest-scoring piece, as a live prompt is. Also what a
fit says when the policy gives too few negatives near its targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from eco_guard.classifier.features.embedded import Embedded
from eco_guard.classifier.heads import unique_texts
from eco_guard.classifier.negatives.swaps import MIN_NEAR_RETAIN
from eco_guard.canonical import Canonicalizer, scored_pieces
from eco_guard.classifier.pieces import max_over_pieces

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
class NegativeSplit:
    """The fit's background split (half trains heads, half calibrates, by corpus) and the policy's calibration set."""

    bg_train: list[str]
    bg_cal: dict[str, list[str]]
    calibration_set: list[str]
    """The policy's calibration set (``classifier.calibration``), deduplicated."""
    pieces: dict[str, list[str]]
    """The pieces of each multi-sentence held-out text (see :func:`held_out_pieces`)."""


def retain_source_name(policy_retain: bool, copies: bool) -> str:
    """What the cross-fitted retain source holds, for the calibration note: the policy's examples, copies, or both."""
    if not copies:
        return RETAIN
    return f"{RETAIN} and name-swapped copies" if policy_retain else "cross-fitted name-swapped copies"


def lacks_near_negatives(n_near_retain: int, calibration_set: Sequence[str] | None) -> bool:
    """True when the policy gives too few negatives of its own near its targets: no calibration set, and fewer
    than :data:`MIN_NEAR_RETAIN` retain examples near their targets over all targets (see :func:`near_retain_counts`).

    The built-in background is then all a head knows of "not this target", so the certified
    rate holds only for traffic like it; ``fit`` warns, and adds the stand-ins for near
    negatives. A few near retain examples are not enough: a WMDP topic from 20 questions, with
    one or two questions from each of three neighbouring MMLU subjects as retain examples,
    flagged 7-10% and 3% of the other subjects' questions (the stand-ins bring a topic to
    2.4-3.4%), against 0.2-0.4% with four from each.
    """
    return not calibration_set and n_near_retain < MIN_NEAR_RETAIN


def held_out_pieces(texts: Sequence[str], canonical: Canonicalizer | None = None) -> dict[str, list[str]]:
    """The pieces (:func:`~eco_guard.classifier.pieces.text_pieces`) of each multi-sentence text.

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


def held_out_max_scores(scores: np.ndarray, row_of: dict[str, int], texts: Sequence[str], pieces: dict[str, list[str]]) -> np.ndarray:
    """Each text's calibration score: the max over targets and over its pieces (the text alone when it has none) of ``scores``' rows."""
    own = [pieces.get(s, (s,)) for s in texts]
    rows = [row_of[p] for ps in own for p in ps]
    return max_over_pieces(scores[rows], [len(ps) for ps in own]).max(axis=1)


def held_out_sources(corpora: dict[str, Sequence[str]], held_out: list[str]) -> dict[str, list[str]]:
    """The held-out half of the background, kept apart by corpus (in ``held_out``'s order): each calibrates as its own source.

    The stand-ins for near negatives are near in different ways (other people, other
    subjects), and pooled with the chat prompts a high rate on one kind hides in the mix,
    exactly as a generic background would hide near neighbours (see :func:`~eco_guard.classifier.fit.procedure.fit_heads`).
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



def split_negatives(
    corpora: dict[str, Sequence[str]],
    calibration_set: Sequence[str] | None,
    embedded: Embedded,
    *,
    seed: int,
    cached: bool,
    canonical: Canonicalizer | None = None,
) -> NegativeSplit:
    """Half of the background (all ``corpora``, shuffled with ``seed``) trains the heads and
    half calibrates, kept apart by corpus; the calibration set only calibrates. Embeds the
    held-out texts' pieces (the background's from the feature cache when ``cached``).

    ``canonical`` is the guard's reader of disguised text: live texts are scored as
    written and in canonical form, so every held-out negative is too, and the threshold
    certifies the rate of the two readings together."""
    bg = unique_texts(s for corpus in corpora.values() for s in corpus)
    bg_order = np.random.default_rng(seed).permutation(len(bg))
    n_bg_cal = len(bg) // 2
    calibration_texts = unique_texts(calibration_set or [])
    # Held-out texts are scored as live prompts are, by their highest-scoring piece; the
    # background's pieces are cached like the background (all of it: the split varies by seed).
    bg_pieces = held_out_pieces(bg)
    embedded.add_corpus(unique_texts(p for ps in bg_pieces.values() for p in ps), cached=cached)
    user_pieces = held_out_pieces(calibration_texts, canonical)
    embedded.add([p for ps in user_pieces.values() for p in ps], desc="embedding calibration sentences and windows")
    if canonical is not None:
        # The canonical readings depend on the policy's names, so they are embedded uncached.
        bg_pieces = held_out_pieces(bg, canonical)
        embedded.add([p for ps in bg_pieces.values() for p in ps], desc="embedding canonical forms")
    return NegativeSplit(
        bg_train=[bg[i] for i in bg_order[n_bg_cal:]],
        bg_cal=held_out_sources(corpora, [bg[i] for i in bg_order[:n_bg_cal]]),
        calibration_set=calibration_texts,
        pieces={**bg_pieces, **user_pieces},
    )
