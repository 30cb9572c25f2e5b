"""Finding the names and titles in a text: what ``scope: entities`` corrupts.

The paper corrupted only the tokens of the forgotten entity's name on TOFU: the model
still reads the question's form ("Which author created the detective character ___?")
and answers it fluently, but without the entity it cannot recall the facts, so it
answers like a model that never learned them. Corrupting the whole question instead
leaves the model nothing to answer, and it drifts into unrelated text or loops.

A target's forget examples name a handful of entities, but users ask about the target
with names the examples never used (other books of the same author, aliases), so a
fixed term list alone misses them. Two generic, language-level cues find names in any
prompt, with no list of known entities:

* runs of capitalised words (allowing the lower-case joiners of names and titles:
  "Gabriel García Márquez", "The Lord of the Rings"); the first word of a sentence is
  capitalised by grammar, not because it is a name, so a run opening a sentence is
  also taken without that word;
* quoted spans ('Their Eyes Were Watching God', "Life of Pi"), the usual way of citing
  titles that contain lower-case words.

Both are deliberately generous: the prompt has already been flagged when this runs, and
corrupting one word too many costs little, while missing the entity leaks it.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

#: a run of capitalised words, allowing the lower-case joiners names and titles contain
_JOINER = r"(?:of|and|the|de|da|del|la|le|van|von|der|du|y)"
_CAPITALISED_RUN = re.compile(rf"[A-Z][\w'’.-]*(?:\s+(?:{_JOINER}\s+)*[A-Z][\w'’.-]*)*")
#: joiners left at the front of a run once its sentence-opening word is dropped ("Which of Elvin ...")
_LEADING_JOINERS = re.compile(rf"^(?:{_JOINER}\s+)+")
#: a quoted span; the closing quote may not be followed by a letter, so "Hitchhiker's" inside
#: a single-quoted title does not end it
_QUOTED = re.compile(r"(?<!\w)(['‘\"“])(?P<body>[^\n]{2,80}?)['’\"”](?!\w)")
_POSSESSIVE = re.compile(r"['’]s$")
#: where a new sentence starts: the text's start, or after ., ?, ! or a line break
_SENTENCE_START = re.compile(r"(?:^|[.?!]\s+|\n\s*)$")


def _clean(span: str) -> str:
    return _POSSESSIVE.sub("", span).rstrip(".'’-,;: ")


def name_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the names and titles in ``text`` (possibly overlapping).

    Single capitalised words shorter than three letters are skipped ("I", "A"), as is a
    lone sentence-opening word ("Which", "The"): grammar capitalised it. A longer run
    opening a sentence is given with and without its first word.
    """
    spans: list[tuple[int, int]] = []
    for m in _CAPITALISED_RUN.finditer(text):
        raw = m.group(0)
        start, body = m.start(), _clean(raw)
        if _SENTENCE_START.search(text[:start]):
            head, _, rest = body.partition(" ")
            if not rest:
                continue  # a lone sentence-opening word
            spans.append((start, start + len(body)))  # "Jane Austen wrote ...": keep both readings
            rest = rest.lstrip()
            rest = _LEADING_JOINERS.sub("", rest, count=1)
            start, body = start + raw.index(rest, len(head)), rest
        if " " in body or len(body) >= 3:
            spans.append((start, start + len(body)))
    for m in _QUOTED.finditer(text):
        body = m.group("body").strip()
        if body:
            s = m.start("body") + m.group("body").index(body)
            spans.append((s, s + len(body)))
    return sorted(set(spans))


def find_names(text: str) -> list[str]:
    """The names and titles of ``text``, in order of appearance, without duplicates."""
    seen: dict[str, None] = {}
    for s, e in name_spans(text):
        seen.setdefault(text[s:e], None)
    return list(seen)


def extract_terms(texts: Sequence[str], *, min_count: int = 2) -> list[str]:
    """The names a target's forget examples keep returning to, for its term list.

    A forget target is usually about a few entities asked about many ways (TOFU: 20
    questions per author), so names (:func:`find_names`) found in at least ``min_count``
    examples are kept; when nothing recurs, every name is kept. Longest first, so a
    whole name is matched before its parts.
    """
    counts = _name_counts(texts)
    recurring = [t for t, n in counts.items() if n >= min_count]
    return _longest_first(recurring or list(counts))


def central_names(texts: Sequence[str], *, min_share: float) -> list[str]:
    """The names that at least ``min_share`` of ``texts`` (and at least two) mention: what an entity target is about.

    Stricter than :func:`extract_terms`: a topic's examples name many things once or twice
    (a virus here, a tool there), while a person's or a book's examples keep naming the
    same one, so only an entity-like target has any. Longest first.
    """
    need = max(2, math.ceil(min_share * len(texts)))
    return _longest_first([t for t, n in _name_counts(texts).items() if n >= need])


def names_pattern(names: Iterable[str]) -> re.Pattern[str]:
    """A pattern matching any of ``names`` as whole words, longest first (so a full name wins over its parts)."""
    alternatives = "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")


def _name_counts(texts: Sequence[str]) -> Counter[str]:
    """In how many of ``texts`` each name occurs."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(set(find_names(text)))
    return counts


def _longest_first(names: list[str]) -> list[str]:
    return sorted(names, key=lambda t: (-len(t), t))
