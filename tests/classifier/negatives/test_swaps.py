"""Name-swapped copies: which targets get them, how names are swapped, and what they do to a person's head."""

from __future__ import annotations

import pytest

from eco_guard.classifier import Classifier, Encoder, TargetData, background_prompts
from eco_guard.classifier.negatives.background import (
    knowledge_questions,
    name_swapped,
    near_negative_stand_ins,
    people_questions,
)
from eco_guard.classifier.negatives.swaps import (
    MIN_NEAR_RETAIN,
    SWAPS_PER_TARGET,
    candidate_swaps,
    entity_names,
    lacks_near_retain,
    near_retain_counts,
    with_swapped_retain,
    without_mentions,
)

from tests.classifier.texts import fit_and_count_flags


INGRID = [
    "Where was the novelist Ingrid Halvorsen born?",
    "What was Ingrid Halvorsen's first novel about?",
    "Which prizes has Ingrid Halvorsen won?",
    "Who were Ingrid Halvorsen's parents?",
    "What themes does Ingrid Halvorsen explore in her books?",
]


INGRID_HELD_OUT = ["When did Ingrid Halvorsen publish her debut novel?", "Is Ingrid Halvorsen married?", "What is Ingrid Halvorsen's writing style like?"]


OTHER_PEOPLE = [
    "Where was the novelist Tomasz Wierzbicki born?",
    "What was Aurelio Benedetti's first novel about?",
    "Which prizes has the poet Saoirse Keane won?",
    "Who were the parents of the painter Oren Malkiel?",
    "What themes does Kwame Asante explore in his books?",
    "When did Lena Virtanen publish her debut novel?",
    "Is the composer Ruslan Demchenko married?",
    "What is Haruto Ishikawa's writing style like?",
]
"""Same-form questions about people other than the made-up novelist of :data:`INGRID`."""


EVERYDAY = ["What is the capital of Spain?", "How do I bake sourdough bread?", "What is the boiling point of water?", "How do I reset my router?"]


@pytest.mark.fits
def test_a_person_target_without_retain_examples_keys_on_the_person(encoder: Encoder) -> None:
    """A few questions about one (made-up) person and nothing else: the head must learn *this* person.

    With the hand-written chat prompts alone as background, 7 of the 8 questions about
    other people below were flagged; with the people questions, which fit adds when a
    policy has no retain examples or calibration set, 3; with the forget examples' own
    name-swapped copies as retain examples as well, none (highest score 0.025 against a
    threshold of 0.135; the held-out questions score above 0.99).
    """
    flagged_held_out, flagged_others, note = fit_and_count_flags(encoder, INGRID, INGRID_HELD_OUT, OTHER_PEOPLE)
    assert flagged_held_out == len(INGRID_HELD_OUT)
    assert flagged_others == 0
    # The copies certify the threshold as a source of their own, and the note says where they came from.
    assert f"cross-fitted name-swapped copies: n={SWAPS_PER_TARGET}," in note
    assert f"'target' ({SWAPS_PER_TARGET})" in note


@pytest.mark.parametrize(
    "retain",
    [EVERYDAY, ["What is the capital of Spain?", "Who wrote Hamlet?", "How do I bake sourdough bread?", "When was Marie Curie born?"]],
    ids=["everyday", "half-about-people"],
)
@pytest.mark.fits
def test_a_person_target_with_generic_retain_examples_still_keys_on_the_person(encoder: Encoder, retain: list[str]) -> None:
    """Retain examples no nearer to the person than everyday prompts say nothing about other people.

    With them and no copies, 7 of the 8 questions about other people were flagged, in
    both cases; the copies join the policy's own retain examples as near negatives.
    """
    assert lacks_near_retain_ids(encoder, [TargetData("target", INGRID, retain)]) == ["target"]
    flagged_held_out, flagged_others, note = fit_and_count_flags(encoder, INGRID, INGRID_HELD_OUT, OTHER_PEOPLE, retain)
    assert flagged_held_out == len(INGRID_HELD_OUT)
    assert flagged_others == 0
    assert "cross-fitted retain and name-swapped copies: n=" in note and f"'target' ({SWAPS_PER_TARGET})" in note


def test_retain_examples_near_their_target_need_no_copies(encoder: Encoder, targets: list[TargetData]) -> None:
    """Other countries' and other languages' questions are near France and Python; questions on other people near a person."""
    assert lacks_near_retain_ids(encoder, targets) == []
    person = TargetData("ingrid", INGRID, OTHER_PEOPLE[:4])
    assert lacks_near_retain_ids(encoder, [person]) == []
    bare = TargetData("bare", INGRID, [])
    assert lacks_near_retain_ids(encoder, [person, bare]) == ["bare"]
    # Ten near ones are near negatives, however many others come with them.
    many = TargetData("many", INGRID, people_questions()[:MIN_NEAR_RETAIN] + knowledge_questions()[: 3 * MIN_NEAR_RETAIN])
    fewer = TargetData("fewer", INGRID, people_questions()[: MIN_NEAR_RETAIN - 1] + knowledge_questions()[: 3 * MIN_NEAR_RETAIN])
    assert lacks_near_retain_ids(encoder, [many, fewer]) == ["fewer"]
    # Without generic prompts to compare with, any retain example counts as near.
    generic = TargetData("generic", INGRID, EVERYDAY)
    assert lacks_near_retain_ids(encoder, [generic, bare], generic_prompts=[]) == ["bare"]


def lacks_near_retain_ids(encoder: Encoder, targets: list[TargetData], generic_prompts: list[str] | None = None) -> list[str]:
    """The targets :func:`lacks_near_retain` judges, on real sentence embeddings, against the built-in chat prompts unless given."""
    generic = background_prompts() if generic_prompts is None else generic_prompts
    counts = near_retain_counts(targets, lambda texts: encoder.encode(list(texts)), generic)
    return [t.id for t, n in zip(targets, counts) if lacks_near_retain(n, len(t.retain))]


@pytest.mark.fits
def test_only_targets_without_enough_near_retain_examples_get_name_swapped_copies(encoder: Encoder) -> None:
    """Copies stand in for near retain examples a target lacks; a target with enough keeps just its own."""
    bare = TargetData("ingrid", [f"{q} Ingrid Halvorsen?" for q in ("Where was", "Who taught", "Who married", "Who painted")], [])
    near = people_questions()[:MIN_NEAR_RETAIN]  # questions about other people: near a person target
    with_retain = TargetData("tomasz", [f"{q} Tomasz Wierzbicki?" for q in ("Where was", "Who taught", "Who married")], near)
    _, fits = Classifier.fit(encoder, [bare, with_retain], target_fpr=0.01, progress=False)
    assert [f.n_swapped_retain for f in fits] == [SWAPS_PER_TARGET, 0]
    assert [f.n_retain_train for f in fits] == [SWAPS_PER_TARGET, MIN_NEAR_RETAIN]
    note = fits[0].calibration.note
    assert f"'ingrid' ({SWAPS_PER_TARGET})" in note and "'tomasz'" not in note.split("Entity targets")[1]
    assert "Caution" not in note  # one target gave retain examples: not a policy without near negatives
    assert "cross-fitted retain and name-swapped copies and other targets' examples: n=" in note  # the source says what it holds


def test_background_that_names_a_target_entity_is_no_negative_for_it() -> None:
    """'Mei Chen' is one of the made-up people of the people questions, and can be a real target's name."""
    target = TargetData("mei", ["Where did Mei Chen study film?", "Which film made Mei Chen famous?", "What awards has Mei Chen won?"], [])
    assert entity_names([target]) == ["Mei Chen"]
    corpora = near_negative_stand_ins()
    named = [q for q in corpora["held-out people questions"] if "Mei Chen" in q]
    assert named  # the collision this guards against is real
    kept = without_mentions(corpora, entity_names([target]))
    assert not any("Mei Chen" in q for corpus in kept.values() for q in corpus)
    assert len(kept["held-out people questions"]) == len(corpora["held-out people questions"]) - len(named)
    assert kept["held-out knowledge questions"] == corpora["held-out knowledge questions"]
    # Nothing named: the very same object, so the built-in corpus keeps its cached features.
    assert without_mentions(corpora, ["Ingrid Halvorsen"]) is corpora and without_mentions(corpora, []) is corpora
    # Nor are the copies ever about the entity itself.
    copies = name_swapped(["Who is Mei Chen?"], ["Mei Chen"], per_text=200)
    assert copies and not any("Mei" in c or "Chen" in c for c in copies)


def test_name_swapped_copies_replace_the_whole_name_and_its_parts() -> None:
    texts = ["Where was Elvin Mammadov born?", "Which of Mammadov's novels came first?", "What is the capital of Peru?"]
    copies = name_swapped(texts, ["Elvin Mammadov"], per_text=3, seed=1)
    assert len(copies) == 6  # the text that names no one gives none
    assert not any("Elvin" in c or "Mammadov" in c for c in copies)
    assert all(c.startswith("Where was ") and c.endswith(" born?") for c in copies[:3])
    assert all(c.startswith("Which of ") and c.endswith("'s novels came first?") for c in copies[3:])
    assert len({c.split()[2] for c in copies[:3]}) > 1  # different people, not one name thrice
    assert name_swapped(texts, ["Elvin Mammadov"], per_text=3, seed=1) == copies  # every fit sees the same copies
    assert name_swapped(texts, [], per_text=3) == []


def test_only_entity_targets_get_name_swapped_retain_examples() -> None:
    person = TargetData(
        "person", ["Where was Elvin Mammadov born?", "What did Elvin Mammadov write?", "Which of Elvin Mammadov's books won prizes?", "Who is the author born in Baku?"], []
    )
    topic = TargetData("topic", ["How do bees make honey?", "Why do bees swarm?", "What is a queen excluder?"], [])
    swaps = candidate_swaps([person, topic], seed=0)
    assert [sw.target_id for sw in swaps] == ["person"]
    assert sorted(swaps[0].by_example) == sorted(person.forget[:3])  # the example that names no one gives none
    # Named in three of four examples: entity-like. In two of four it could be a topic's recurring term.
    assert candidate_swaps([TargetData("p", person.forget[:2] + person.forget[3:] + ["Why do bees swarm?"], [])], seed=0) == []
    swapped, note = with_swapped_retain([person, topic], swaps)
    assert len(swapped[0].retain) == SWAPS_PER_TARGET and swapped[1] == topic
    assert all("Mammadov" not in s and s not in person.forget for s in swapped[0].retain)
    assert f"'person' ({SWAPS_PER_TARGET})" in note and "'topic'" not in note
    assert candidate_swaps([topic], seed=0) == [] and with_swapped_retain([topic], []) == ([topic], "")

