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
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor

class CorruptedRowsNoRepeat(LogitsProcessor):
    """Bans repeated ``n``-grams in the batch rows listed in ``rows`` only.

    State is per instance, and one instance serves one ``generate`` call.
    """

    def __init__(self, rows: Sequence[int], n: int) -> None:
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        self.rows = sorted(set(rows))
        self.n = n
        self._start: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._start is None:
            self._start = input_ids.shape[1]
        generated = input_ids[:, self._start :]
        length = generated.shape[1]
        if length + 1 < self.n:
            return scores
        for row in self.rows:
            banned = self._banned(generated[row].tolist())
            if banned:
                scores[row, banned] = -float("inf")
        return scores

    def _banned(self, tokens: list[int]) -> list[int]:
        """Tokens that would follow the last n-1 tokens the way they were followed before."""
        k = self.n - 1
        if k == 0:
            return sorted(set(tokens))
        prefix = tokens[-k:]
        return sorted({tokens[i + k] for i in range(len(tokens) - k) if tokens[i : i + k] == prefix})


def loop_guard(corrupted_rows: Sequence[int], n: int) -> CorruptedRowsNoRepeat | None:
    """The processor for one decode call, or ``None`` when no row needs it (or ``n`` is 0)."""
    return CorruptedRowsNoRepeat(corrupted_rows, n) if corrupted_rows and n > 0 else None
