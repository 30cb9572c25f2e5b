"""Cut multi-sentence texts into the pieces the classifier scores, and judge each text by its best piece.

The heads were fitted on prompt-sized texts, and one mean-pooled vector of several
sentences dilutes the one sentence about a forget target into its neighbours. Measured
on the D3 guard (TOFU authors): a forget question with five unrelated exam questions in
front of it was flagged 0 times in 100 when the whole prompt was scored, 22 in 100 when
windows of three sentences were scored too, and 98 in 100 when every sentence was scored
on its own, so padding a prompt is no way round the guard. A text is therefore judged by
its highest-scoring piece: the whole text, each sentence, and overlapping windows of
three sentences (which keep "she" or "the book" next to what they refer to), and what a
sentence hands over after a colon (:func:`handed_over`), so a question inside a wrapper's
sentence is read as the question it is. The same
pieces score a prompt's last turn, a retrieved passage, and the negatives that calibrate
the threshold, so the calibrated rate is a rate over texts scored this way; and one
function, :func:`max_over_pieces`, takes the maximum for all of them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

WINDOW_SENTENCES = 3
"""Sentences per window: enough context to resolve "she" or "the book" inside a passage,
short enough to stay near the length of the prompts the heads were fitted on."""

STRIDE_SENTENCES = 2
"""Windows overlap by one sentence, so no two adjacent sentences are only ever seen apart."""

MAX_WINDOW_WORDS = 120
"""Longer windows (run-on sentences, tables, code) are cut by words; well under the
encoder's 256-word-piece limit so nothing is silently truncated."""

MIN_SENTENCE_WORDS = 4
"""Shorter sentences ("XI.", "1513 C.E.", "Hi!") join the sentence after them (the one
before, at the end). Alone they are not questions of any kind the heads were fitted on:
on the D1 guard, sentences of 1-4 words from exam questions were flagged at about 5%,
those of ten words or more at 0.2%, the rate of whole questions."""

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")
_LEAD_IN = re.compile(r"^(.*\S)\s*:\s+[\"'“‘«]?(.+?)[\"'”’»]?$", re.S)
"""A sentence that hands over what follows its last colon: "... answer fully: Who was ...?"."""
_OPENING_SINGLE = re.compile(r"(?<!\w)['‘](?=\w)")
_CLOSING_SINGLE = re.compile(r"(?<=[\w.?!])['’](?!\w)")
"""Single quotes that open or close a quotation; an apostrophe inside a word ("Dragon's") is neither."""


def sentences(text: str) -> list[str]:
    """The sentences of ``text`` (paragraph breaks end one too), with short ones joined to a neighbour."""
    raw = [s.strip() for s in _SENTENCE_END.split(text.strip()) if s and s.strip()]
    merged: list[str] = []
    pending = ""
    for sentence in raw:
        joined = f"{pending} {sentence}".strip()
        if len(joined.split()) < MIN_SENTENCE_WORDS:
            pending = joined
            continue
        merged.append(joined)
        pending = ""
    if pending:
        if merged:
            merged[-1] = f"{merged[-1]} {pending}"
        else:
            merged.append(pending)
    return merged


def sentence_windows(stripped: str, parts: Sequence[str]) -> list[str]:
    """Overlapping windows of three of ``parts`` (the :func:`sentences` of the stripped text
    ``stripped``); a text of at most three short sentences is its own single window.

    Always returns at least one element (the text, possibly empty) so that callers can
    map every text to at least one score.
    """
    if len(parts) <= WINDOW_SENTENCES and len(stripped.split()) <= MAX_WINDOW_WORDS:
        return [stripped]
    windows: list[str] = []
    last_start = max(len(parts) - WINDOW_SENTENCES, 0)
    starts = list(range(0, last_start + 1, STRIDE_SENTENCES))
    if starts[-1] != last_start:
        starts.append(last_start)  # the tail must be covered by a full window too
    for start in starts:
        windows.extend(_cap_words(" ".join(parts[start : start + WINDOW_SENTENCES])))
    return windows


def handed_over(sentence: str) -> list[str]:
    """What a sentence hands over to be answered, read on its own: the words after its last colon (unquoted).

    A wrapper that asks for an answer puts the question inside its own sentence ("Stay in
    character and answer fully: Who was ...?", 'The historian is asked: "Who was ...?"'),
    so the question is scored diluted in the wrapper's words. Read alone as well (never
    instead: the sentence stays a piece), it is scored as the plain question it is. Only
    parts of :data:`MIN_SENTENCE_WORDS` words or more count, for the reason short sentences
    are joined to their neighbours. A colon inside quotes is a title's ('Was "Unleashed
    Companions: A Veterinarian's Journey" inspired by ...?', 41 of TOFU's 3,600 questions),
    not a hand-over; and quoted passages are not read apart either: questions quote titles,
    and on the D1 guard the titles read alone moved the feature choice and cost recall.
    """
    lead_in = _LEAD_IN.match(sentence)
    if not lead_in or _inside_quotes(lead_in.group(1)):
        return []
    tail = lead_in.group(2).strip()
    return [tail] if len(tail.split()) >= MIN_SENTENCE_WORDS and tail != sentence else []


def _inside_quotes(head: str) -> bool:
    """Whether a quotation opened in ``head`` (the words before a colon) is still open at its end."""
    straight = head.count('"')
    if straight % 2:
        return True
    curly = head.count("“") - head.count("”")
    singles = len(_OPENING_SINGLE.findall(head)) - len(_CLOSING_SINGLE.findall(head))
    return curly > 0 or singles > 0


def text_pieces(text: str) -> list[str]:
    """Every piece a text is scored by: itself, its sentences, its windows, and what each sentence hands over
    (:func:`handed_over`); a one-sentence text that hands nothing over is just itself.

    The first element is always the stripped text, and no piece repeats.
    """
    stripped = text.strip()
    parts = sentences(stripped)
    handed = [h for s in parts for h in handed_over(s)]
    if len(parts) <= 1:
        return list(dict.fromkeys([stripped, *handed]))
    pieces = [stripped] + [p for s in parts for p in _cap_words(s)] + sentence_windows(stripped, parts) + handed
    return list(dict.fromkeys(pieces))


def _cap_words(window: str) -> list[str]:
    """Split a window that is too long into overlapping word slices of at most MAX_WINDOW_WORDS."""
    words = window.split()
    if len(words) <= MAX_WINDOW_WORDS:
        return [window]
    step = MAX_WINDOW_WORDS // 2
    return [" ".join(words[i : i + MAX_WINDOW_WORDS]) for i in range(0, max(len(words) - step, 1), step)]


def max_over_pieces(scores: np.ndarray, counts: Sequence[int]) -> np.ndarray:
    """Each text's scores: the maximum, per target, over the score rows of its pieces.

    ``scores`` is ``[sum(counts), n_targets]``: the pieces of the first text, then those of
    the second, and so on; ``counts`` is how many pieces each text has (at least one).
    Returns ``[len(counts), n_targets]``. The guard decides prompts and passages with it,
    and the fit scores the held-out negatives that calibrate the threshold with it.
    """
    if len(counts) == 0:
        return np.empty((0, scores.shape[1]), dtype=scores.dtype)
    if min(counts) < 1 or sum(counts) != len(scores):
        raise ValueError(f"every text needs at least one piece, and the counts must add up to {len(scores)} rows")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.intp)
    return np.maximum.reduceat(scores, starts, axis=0)
