"""Example texts shared by the classifier tests, and a small fit-and-count helper."""

from __future__ import annotations

from collections.abc import Sequence

from eco_guard.classifier import Classifier, Encoder, TargetData


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


def fit_and_count_flags(
    encoder: Encoder, forget: list[str], held_out: list[str], others: list[str], retain: Sequence[str] = ()
) -> tuple[int, int, str]:
    """Fit one target (no calibration set); count flags on each list; the calibration note."""
    clf, fits = Classifier.fit(encoder, [TargetData("target", forget, list(retain))], target_fpr=0.01, progress=False)
    verdicts = clf.decide(clf.score(held_out + others))
    flags = [v.flagged for v in verdicts]
    return sum(flags[: len(held_out)]), sum(flags[len(held_out) :]), fits[0].calibration.note

