"""Keeping corrupted answers out of loops, without touching any other row of a batch.

A corrupted prompt is, to the model, partly unreadable. Greedy decoding then often falls
into its degenerate mode and repeats itself ("The original sentence is: The original
sentence is: ..."): on the E1 forget questions a fifth of the corrupted answers did so,
against one in fifty clean answers. A loop tells the user nothing false, but it is not
the fluent answer of a model that never learned the target, which is what ECO promises.

So rows that carry a corruption decode under a no-repeat-n-gram rule: a token that would
complete an n-gram the row has already produced is banned. Rows without a corruption are
left exactly as the bare model decodes them: the guarantee that unflagged answers are
identical, token for token, holds inside mixed batches too. The rule looks only at the
answer's own tokens (generation from ``inputs_embeds`` feeds the processor the generated
ids alone; the first length seen is taken as the start, whatever a version passes).

Why n = 2 (answers with a distinct-token ratio below 0.5, of 50, on the E1 forget
*training* questions, real_authors rows 0-49, 48 greedy tokens; the bare model: 1):

| corruption | no rule | n = 3 | n = 2 |
|---|---|---|---|
| entities, sigma 0.4 | 5 | 1 | 0 |
| entities, sigma 1.5 | | 0 | 0 |
| prompt, sigma 0.27 | | 2 | 0 |

n = 3 still let paraphrasing loops through ("The original sentence is: The original
text is: The original sentences are: ..."); n = 2 stopped them without changing recall
(0 of the 19 known answers at sigma 0.4 either way), and the answers still read
naturally, since ordinary prose rarely needs to repeat a word pair within 48 tokens.

An n-gram rule is blind to loops over a small alphabet. Gemma 3's tokenizer splits
numbers into single digits, and a corrupted Gemma answer that drifts into numbers can
go on for 40 tokens without repeating a digit pair ("The 2016-2122-13-0024-3040-4105-
5031-6061"): 3 of its 49 corrupted E1 test answers fell below the looping bar
(:data:`~eco_guard.runner.base.MIN_DISTINCT`) with n = 2 alone. So corrupted rows also
keep a floor on their distinct-token ratio: when one more already-used token would put
the answer below it, every token the answer has used is banned for that step, and the
model must say something new or stop (end-of-sequence is never banned: a finished row
has stopped using tokens). The floor is the looping bar itself. Measured on E1
(``benchmarks/results/efficacy*.md``): every SmolLM2 answer, both scopes, is token for
token what it was without the floor (whole-number tokens: the n-gram rule does the
work); on Gemma only the 3 answers that were below the bar changed (now 0.50-0.52), and
the entities scope has one answer held at the floor. A held answer is no loop, but
it need not read well either (a run of word pieces, say): the floor stops repetition,
the fluency bound of the strength search is what judges the prose. And since corrupted
answers now stay at or above the bar by construction, the evaluation's looping count
for them only checks this rule (re-tokenising the text can differ slightly from the
generated ids); the distinct-ratio minimum and the answers themselves say more.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from transformers import LogitsProcessor

if TYPE_CHECKING:
    from .base import GenerationOptions


class CorruptedRowsNoRepeat(LogitsProcessor):
    """Bans repeated ``n``-grams, and used tokens below a distinct-ratio floor, in the batch rows listed in ``rows`` only.

    ``n`` 0 turns the n-gram rule off and ``min_distinct`` 0 the floor. State is per
    instance, and one instance serves one ``generate`` call.
    """

    def __init__(self, rows: Sequence[int], n: int, min_distinct: float = 0.0) -> None:
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        if not 0.0 <= min_distinct < 1.0:
            raise ValueError(f"min_distinct must be in [0, 1), got {min_distinct}")
        self.rows = sorted(set(rows))
        self.n = n
        self.min_distinct = min_distinct
        self._start: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._start is None:
            self._start = input_ids.shape[1]
        generated = input_ids[:, self._start :]
        for row in self.rows:
            tokens = generated[row].tolist()
            banned = self._repeating(tokens) | self._worn(tokens)
            if banned:
                scores[row, sorted(banned)] = -float("inf")
        return scores

    def _repeating(self, tokens: list[int]) -> set[int]:
        """Tokens that would follow the last n-1 tokens the way they were followed before."""
        if self.n == 0 or len(tokens) + 1 < self.n:
            return set()
        k = self.n - 1
        if k == 0:
            return set(tokens)
        prefix = tokens[-k:]
        return {tokens[i + k] for i in range(len(tokens) - k) if tokens[i : i + k] == prefix}

    def _worn(self, tokens: list[int]) -> set[int]:
        """Every used token, when one more of them would put the distinct ratio below the floor."""
        used = set(tokens)
        return used if tokens and len(used) < self.min_distinct * (len(tokens) + 1) else set()


def loop_guard(corrupted_rows: Sequence[int], options: GenerationOptions) -> CorruptedRowsNoRepeat | None:
    """The processor for one decode call, or ``None`` when no row needs it (or both rules are off)."""
    n, floor = options.corrupted_no_repeat_ngram, float(options.corrupted_min_distinct)
    return CorruptedRowsNoRepeat(corrupted_rows, n, floor) if corrupted_rows and (n > 0 or floor > 0) else None
