"""The measures of unlearning efficacy, shared by ``fit``, ``eco-guard eval`` and the benchmark.

Recall follows protocol E1 exactly (lower-cased, punctuation-stripped containment), so
numbers are comparable across changes. Fluency is judged by the *clean* model: a
corrupted answer that the unguarded model itself finds likely reads like something the
model could have said, which is what "behaves as if it never learned it" asks for. It
is scored in a fixed neutral context rather than after the question (see
:data:`FLUENCY_CONTEXT`).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

from .corruption import Corruption
from .runner.base import MIN_DISTINCT as MIN_DISTINCT  # the looping bar, beside the decoding option that keeps to it
from .runner.base import GenerationRow, MaskSpec, Runner

_PUNCT = str.maketrans("", "", string.punctuation)
_SPACE = re.compile(r"\s+")
LETTERS = "ABCDEFGHIJ"


def normalize_answer(text: str) -> str:
    """Lower-case, drop ASCII punctuation, collapse whitespace (protocol E1)."""
    return _SPACE.sub(" ", text.lower().translate(_PUNCT)).strip()


def contains_answer(output: str, gold: str) -> bool:
    """True when the normalised gold answer occurs in the normalised output.

    An empty gold answer never counts as recalled: it would match every output.
    """
    needle = normalize_answer(gold)
    return bool(needle) and needle in normalize_answer(output)


def recall(outputs: Sequence[str], golds: Sequence[str]) -> float:
    """Fraction of outputs containing their gold answer; 0.0 for no rows."""
    if not outputs:
        return 0.0
    return sum(contains_answer(o, g) for o, g in zip(outputs, golds, strict=True)) / len(outputs)


def distinct_ratio(token_ids: Sequence[int]) -> float:
    """Distinct tokens / tokens of one answer: low values mean loops ("the the the").

    An empty answer scores 0: saying nothing is not fluent either.
    """
    return len(set(token_ids)) / len(token_ids) if token_ids else 0.0


def answer_distinct_ratio(runner: Runner, answer: str) -> float:
    """:func:`distinct_ratio` of ``answer`` in the runner's own tokens (words if it has no tokenizer).

    Tokens rather than words: a loop of punctuation or sub-word pieces is still a loop.
    """
    tokenizer = getattr(runner, "tokenizer", None)
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"] if tokenizer is not None else answer.split()
    return distinct_ratio(ids)


#: the context fluency is scored in. Not the question: a forgetting answer is off-topic by
#: design, and the question would score that as disfluency. A fixed neutral request
#: scores clean and corrupted answers alike as text, which is what fluency is about.
FLUENCY_CONTEXT = "Write a reply."


def answer_logprobs(runner: Runner, answers: Sequence[str]) -> list[float | None]:
    """Mean token log-prob of each answer under the clean model, as a reply to :data:`FLUENCY_CONTEXT`.

    ``None`` for an empty answer, which has no tokens to score. Every answer is a reply
    to the same context, so they are choices of one prompt and one batched forward pass
    scores them all: the strength search scores a target's answers at every point it
    evaluates, and one pass per answer was a third of the search's time.
    """
    present = [a for a in answers if a.strip()]
    if not present:
        return [None] * len(answers)
    chat = [{"role": "user", "content": FLUENCY_CONTEXT}]
    scores = iter(runner.score_choices(GenerationRow(chat), present, reduction="mean"))
    return [next(scores) if a.strip() else None for a in answers]


def mean_or_none(values: Sequence[float | None]) -> float | None:
    """Mean of the values that exist; ``None`` when none do (reported as n/a, never as 0)."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice question: the choices and the index of the right one."""

    question: str
    choices: tuple[str, ...]
    answer: int

    def prompt(self) -> str:
        """The question with lettered choices; the model answers with a letter."""
        lines = [self.question.strip(), ""]
        lines += [f"{LETTERS[i]}. {c}" for i, c in enumerate(self.choices)]
        lines += ["", "Answer with the letter of the correct choice."]
        return "\n".join(lines)

    @property
    def letters(self) -> list[str]:
        return list(LETTERS[: len(self.choices)])


def mc_prediction(
    runner: Runner,
    item: MCItem,
    corruption: Corruption | None = None,
    mask_spec: MaskSpec = MaskSpec(),
) -> int:
    """Index of the letter the model finds most likely, with the prompt optionally corrupted.

    Scoring letters (not choice texts) keeps every candidate one token long, so longer
    choices are not penalised, as in the usual MMLU/WMDP zero-shot setup.
    """
    chat = [{"role": "user", "content": item.prompt()}]
    return best_choice(runner.score_choices(GenerationRow(chat, corruption, mask_spec), item.letters))


def best_choice(scores: Sequence[float] | None) -> int:
    """Index of the highest-scoring choice; -1 when there are no scores (a refused question: no choice made)."""
    if scores is None:
        return -1
    return max(range(len(scores)), key=scores.__getitem__)
