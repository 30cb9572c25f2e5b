"""The answer classifier: does an answer reveal a forget target?

The input guard judges the question; a compliance team's promise is about the answer.
An answer reveals a target when it names it (its names, aliases and terms) or repeats
what the target's forget answers say. Both are lexical facts about the answer's words,
so this classifier is lexical: per target, a logistic head over

* TF-IDF of the words and word pairs of the target's forget answers and names (the
  :class:`~eco_guard.classifier.features.lexical.Lexicon` the prompt classifier uses), with idf
  over every training text, so words every answer uses weigh nothing, and
* three name features: a full name (or alias) of the target appears; a distinctive
  part of one (a surname alone) appears, outside other people's names; someone else is
  named (a person-like name that is none of the target's: answers about someone else
  name someone else). The answer is read as written and in canonical form
  (:mod:`eco_guard.canonical`: an answer asked for in leetspeak or spaced out).

Names given by the policy always count. Names extracted from the forget examples are
guesses, so they are sorted at fit: single words of the language ("Taiwan", "Lesbian")
are dropped, and names the examples only mention beside another of the target's names
(a birthplace, a genre: "Cape Town" beside an author's name) are *context*, which counts
as naming the target only in an answer that names no one else (:func:`_own_names`).

No encoder runs, so a 100-word answer is checked in about a millisecond, which is what
lets streaming hold each sentence back until it has passed. What it cannot see: an
answer that conveys the knowledge in none of the target's words (docs/threat-model.md).

The threshold is calibrated like the prompt classifier's: split conformal on negatives
no head saw (:mod:`eco_guard.classifier.calibration`): 2-fold cross-fitted scores of the
retain answers and the generic answer-like text, or a held-out calibration set when one
is given.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
from scipy import sparse
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from eco_guard.canonical import Canonicalizer, everyday_words, known_words, scored_pieces
from eco_guard.classifier.negatives.background import background_prompts, knowledge_questions, people_questions
from eco_guard.classifier.calibration import Calibration, joint_threshold
from eco_guard.classifier.heads import fit_head
from eco_guard.classifier.features.lexical import Lexicon
from eco_guard.entities import name_spans, names_pattern
from eco_guard.errors import GuardLoadError, UserError

WEIGHTS_FILE = "answers.safetensors"
META_FILE = "answers.json"
FORMAT_VERSION = 1

LEXICAL_WEIGHT = 1.0
"""The TF-IDF block has unit norm, as the name features have unit size."""

MAX_NEGATIVE_MENTIONS = 0.002
"""An extracted name that more than this share of the negatives mention is no name of the
target's own (on TOFU: "LGBTQ", "China", "January" are extracted from the forget questions
and named by 4% of other authors' answers)."""


@dataclass(frozen=True)
class AnswerTarget:
    """What one target's answers look like: its forget answers and its names."""

    id: str
    names: list[str]
    """Names the policy gives (``aliases``, corruption ``terms``): always kept."""
    forget_answers: list[str]
    retain_answers: list[str]
    extracted: list[str] = field(default_factory=list)
    """Names found in the forget examples at fit: kept only when no retain example and few
    negatives mention them (see :data:`MAX_NEGATIVE_MENTIONS`), since extraction also finds
    places, prizes, months and topics."""
    retain_questions: list[str] = field(default_factory=list)
    forget_examples: list[str] = field(default_factory=list)
    """Each forget example whole (question and answer), where the extracted names are counted
    together to tell the target's own names from its context (:func:`_context_names`);
    the forget answers when not given."""


@dataclass(frozen=True)
class AnswerVerdict:
    """The output stage's verdict on one answer (or an answer's prefix, when streaming)."""

    target: str | None
    score: float
    threshold: float
    flagged: bool


class NothingToCheck(UserError):
    """No target gives the output stage anything to look for in answers: no forget answers, and no names
    that survive the screening against retain examples and generic text. The fit then goes on without an
    output stage and warns (:func:`eco_guard.fitting.fit_guard`)."""


@dataclass(frozen=True)
class AnswerFitReport:
    """What the output stage trained on and achieved, for the fit report."""

    n_positive: int
    n_negative: int
    calibration: Calibration
    held_out_recall: float
    """Share of forget answers flagged by heads that never saw them (2-fold), at the threshold."""


@cache
def generic_answers() -> tuple[str, ...]:
    """Answer-like text written for this project: encyclopedic statements, biography sentences, assistant phrasing."""
    text = resources.files(__package__).joinpath("generic_answers.txt").read_text(encoding="utf-8")
    return tuple(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))


def _distinctive_parts(name: str, common: frozenset[str] | None = None) -> list[str]:
    """Words of a name that identify it alone (a surname): four letters or more and no word of ``common``
    (the everyday words by default)."""
    common = everyday_words() if common is None else common
    return [w for w in re.findall(r"[^\W\d_][\w'’-]*", name) if len(w) >= 4 and w.lower() not in common]


_PARTICLES = frozenset({"al", "bin", "ibn", "da", "das", "de", "del", "della", "den", "der", "di", "do", "dos", "du", "el", "la", "le", "van", "von"})
"""Lower-case words inside a person's name ("Isabella van Pletzen", "Ahmed bin Said")."""


def _person_like(span: str) -> bool:
    """Whether a capitalised run reads as someone's name: two to four words, capitalised but for
    name particles ("van", "de", "al"), the first no stop word, and the first or the last no
    everyday word. Titles, awards and genres ("The Matrimony Plan", "Global Influence",
    "Star Wars") fail that; "Jane Morrison" passes on her surname. An answer that names another
    person is about someone else, even when it repeats a title the target's answers use."""
    words = re.sub(r"['’]s$", "", span.strip()).split()
    if not 2 <= len(words) <= 4 or not words[0][:1].isupper() or not words[-1][:1].isupper():
        return False
    if not all(w[:1].isupper() or w in _PARTICLES for w in words):
        return False
    everyday = everyday_words()
    first, last = words[0].lower(), words[-1].lower()
    return first not in ENGLISH_STOP_WORDS and (first not in everyday or last not in everyday)


def _name_matcher(names: Sequence[str]) -> re.Pattern[str]:
    """Whole-word matches of ``names``: a name of several words in any case ("albert
    einstein" names him too), a single word only as written, since in lower case most
    single-word names are everyday words (Park, Promise, Irish)."""
    several = [n for n in names if len(n.split()) > 1]
    single = [n for n in names if len(n.split()) <= 1]
    parts = []
    if several:
        parts.append("(?i:" + names_pattern(several).pattern + ")")
    if single:
        parts.append(names_pattern(single).pattern)
    return re.compile("|".join(parts))


def _mentions(pattern: re.Pattern[str] | None, text: str) -> bool:
    return pattern is not None and pattern.search(text) is not None


def _words_of(name: str) -> frozenset[str]:
    """The words of a name, lower case, without a possessive ending."""
    return frozenset(re.sub(r"['’]s$", "", w).lower() for w in name.split())


def _blanked(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """``text`` with ``spans`` blanked out: a part of the target's name inside someone else's name ("Ji-Yeon" in
    "Ji-Yeon Soo", when the target is Ji-Yeon Park) names that someone."""
    for a, b in spans:
        text = text[:a] + " " * (b - a) + text[b:]
    return text


class AnswerClassifier:
    """Per-target logistic heads over lexical and name features, with one conformal threshold.

    Immutable after construction and free of per-call state, so one instance serves
    every thread. Decision rule as for prompts: flagged when the max score over targets
    is above the threshold (strict).
    """

    def __init__(
        self,
        target_ids: Sequence[str],
        names: Sequence[Sequence[str]],
        lexicon: Lexicon,
        weights: np.ndarray,
        bias: np.ndarray,
        threshold: float,
        canonical: Canonicalizer | None = None,
        parts: Sequence[Sequence[str]] | None = None,
        context: Sequence[Sequence[str]] | None = None,
    ) -> None:
        n = len(target_ids)
        if len(names) != n or any(x is not None and len(x) != n for x in (parts, context)) or weights.shape != (n, lexicon.size + 3 * n) or bias.shape != (n,):
            raise UserError(f"answer heads do not match {n} targets and {lexicon.size} lexical terms")
        self.target_ids = list(target_ids)
        self.names = [list(ns) for ns in names]
        self.lexicon = lexicon
        self.weights = weights
        self.bias = bias
        self.threshold = float(threshold)
        self.canonical = canonical
        self._full = [_name_matcher(ns) if ns else None for ns in self.names]
        self.parts = [list(ps) for ps in parts] if parts is not None else [list(dict.fromkeys(p for nm in ns for p in _distinctive_parts(nm))) for ns in self.names]
        self._parts = [_name_matcher(ps) if ps else None for ps in self.parts]
        self.context = [list(cs) for cs in context] if context is not None else [[] for _ in self.names]
        self._context = [_name_matcher(cs) if cs else None for cs in self.context]
        self._words = [[_words_of(n) for n in [*ns, *cs]] for ns, cs in zip(self.names, self.context)]

    def _features(self, texts: Sequence[str]) -> sparse.csr_matrix:
        lex = self.lexicon.transform(texts)
        hits = np.zeros((len(texts), 3 * len(self.target_ids)))
        for k, text in enumerate(texts):
            people = [(a, b) for a, b in name_spans(text) if _person_like(text[a:b])]
            for i, (full, part, context) in enumerate(zip(self._full, self._parts, self._context)):
                others = [(a, b) for a, b in people if not self._own_span(i, text[a:b])]
                hits[k, 3 * i] = float(_mentions(full, text) or (not others and _mentions(context, text)))
                hits[k, 3 * i + 1] = float(_mentions(part, _blanked(text, others)))
                hits[k, 3 * i + 2] = float(bool(others))
        return sparse.hstack([lex, sparse.csr_matrix(hits)], format="csr")

    def _own_span(self, i: int, span: str) -> bool:
        """Whether a person-like ``span`` names target ``i``: one of its names, or words of one name in another
        order ("Park Ji-Yeon" for Ji-Yeon Park, "Edward Sullivan" for Edward Patrick Sullivan)."""
        if _mentions(self._full[i], span) or _mentions(self._context[i], span):
            return True
        words = _words_of(span)
        return any(words <= ws for ws in self._words[i])

    def piece_scores(self, texts: Sequence[str]) -> np.ndarray:
        """Scores ``[n, n_targets]`` of single pieces (no splitting, no canonical reading).

        A target that has names scores 0 on a piece that names it nowhere (neither a full
        name nor a distinctive part): its words alone do not make an answer about it. The
        threshold is calibrated on reference answers, and live answers are longer and
        wordier than those; a lexical score alone flagged 23 of 58 generated world-facts
        answers under an author-forgetting policy (E1) at a nominal 1%. Targets without
        names (topics) are judged by their words.
        """
        if not texts:
            return np.zeros((0, len(self.target_ids)))
        feats = self._features(texts)
        z = feats @ self.weights.T + self.bias
        probs = 1.0 / (1.0 + np.exp(-np.asarray(z)))
        base = self.lexicon.size
        for i, (full, context) in enumerate(zip(self._full, self._context)):
            if full is not None or context is not None:
                named = (feats[:, base + 3 * i] + feats[:, base + 3 * i + 1]).toarray().ravel() > 0
                probs[:, i] *= named
        return probs

    def scores(self, answers: Sequence[str]) -> np.ndarray:
        """Per-target scores ``[n, n_targets]`` of whole answers: the max over each answer's pieces and readings."""
        groups = [scored_pieces(a, self.canonical) if a.strip() else [""] for a in answers]
        flat = self.piece_scores([p for g in groups for p in g])
        out = np.zeros((len(answers), len(self.target_ids)))
        offset = 0
        for k, g in enumerate(groups):
            out[k] = flat[offset : offset + len(g)].max(axis=0)
            offset += len(g)
        return out

    def check(self, answers: Sequence[str]) -> list[AnswerVerdict]:
        """One verdict per answer: the highest-scoring target, flagged when above the threshold."""
        verdicts = []
        for row in self.scores(answers):
            i = int(np.argmax(row))
            flagged = bool(row[i] > self.threshold)
            verdicts.append(AnswerVerdict(self.target_ids[i] if flagged else None, float(row[i]), self.threshold, flagged))
        return verdicts

    def with_heads(self, weights: np.ndarray, bias: np.ndarray, threshold: float) -> AnswerClassifier:
        """The same targets, names and features with other heads and threshold (the fit builds several)."""
        return AnswerClassifier(self.target_ids, self.names, self.lexicon, weights, bias, threshold, self.canonical, self.parts, self.context)

    # ---------------------------------------------------------------- persistence

    def save(self, directory: Path) -> None:
        """Write heads (safetensors) and names, terms and threshold (JSON) next to the prompt classifier's."""
        save_file({"weights": self.weights, "bias": self.bias, "idf": self.lexicon.idf}, str(directory / WEIGHTS_FILE))
        meta = {
            "format_version": FORMAT_VERSION,
            "target_ids": self.target_ids,
            "names": self.names,
            "parts": self.parts,
            "context": self.context,
            "threshold": self.threshold,
            "lexical_terms": list(self.lexicon.terms),
            "lexical_weight": self.lexicon.weight,
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    @staticmethod
    def discard(directory: Path) -> None:
        """Remove a saved output stage: a refit into the same directory that fits none must not leave the old one to load."""
        for name in (META_FILE, WEIGHTS_FILE):
            (directory / name).unlink(missing_ok=True)

    @classmethod
    def load(cls, directory: Path, canonical: Canonicalizer | None) -> AnswerClassifier | None:
        """The saved output stage, or None for a guard fitted before it existed."""
        path = directory / META_FILE
        if not path.is_file():
            return None
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            tensors = load_file(str(directory / WEIGHTS_FILE))
            if meta.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
            lexicon = Lexicon(tuple(meta["lexical_terms"]), np.asarray(tensors["idf"], np.float64), meta["lexical_weight"])
            return cls(
                meta["target_ids"],
                meta["names"],
                lexicon,
                np.asarray(tensors["weights"], np.float64),
                np.asarray(tensors["bias"], np.float64),
                float(meta["threshold"]),
                canonical,
                meta.get("parts"),  # absent in guards fitted before extracted names were told apart
                meta.get("context"),
            )
        except (OSError, KeyError, TypeError, ValueError, UserError, json.JSONDecodeError) as exc:
            raise GuardLoadError(f"{directory}: unreadable output-stage files ({exc}); re-run `eco-guard fit`") from exc


# -------------------------------------------------------------------- fitting


def _own_names(target: AnswerTarget, negatives: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """The target's names, their distinctive parts, and its context names.

    Names: its given names, and those extracted names that identify it (:func:`_identifying`),
    that no retain example and few negatives mention, and that are no context
    (:func:`_context_names`). A target nothing more specific names (a country, a topic:
    "France") keeps the single words of the language it was extracted with, since they are
    then what its examples are about. Parts: of given names, their words but everyday ones; of
    extracted names, their words outside the encoder's vocabulary.
    """
    given = list(dict.fromkeys(n.strip() for n in target.names if n.strip()))
    limit = max(1, int(MAX_NEGATIVE_MENTIONS * len(negatives)))
    retained = [*target.retain_answers, *target.retain_questions]
    extracted = [n for n in dict.fromkeys(n.strip() for n in target.extracted) if n and n not in given]
    if given or any(_identifying(n) for n in extracted):
        extracted = [n for n in extracted if _identifying(n)]
    kept = []
    for name in extracted:
        pattern = _name_matcher([name])  # as answers are read
        if not any(pattern.search(s) for s in retained) and sum(1 for s in negatives if pattern.search(s)) <= limit:
            kept.append(name)
    context = _context_names(kept, given, target.forget_examples or target.forget_answers)
    own = [n for n in kept if n not in context]
    known = known_words()
    parts = [p for n in given for p in _distinctive_parts(n)] + [p for n in own for p in _distinctive_parts(n, known)]
    return given + own, list(dict.fromkeys(parts)), context


def _context_names(extracted: Sequence[str], given: Sequence[str], examples: Sequence[str]) -> list[str]:
    """The extracted names that the forget ``examples`` only ever mention beside another, more often mentioned, name
    of the target's: where it was born, what it wrote, its genre ("Cape Town", "Tel Aviv", "Contemporary Romance"
    beside an author's name).

    Such a name is context, not the target: other people's answers mention it too
    (measured on TOFU validation splits: birthplaces shared with other authors opened the
    name gate for all twenty of an author's answers). It counts as naming the target
    only in an answer that names no one else.
    """
    names = list(dict.fromkeys([*given, *extracted]))
    seen: dict[str, frozenset[int]] = {}
    for name in names:
        pattern = _name_matcher([name])
        seen[name] = frozenset(k for k, text in enumerate(examples) if pattern.search(text))
    return [n for n in extracted if seen[n] and any(m != n and n not in m and seen[n] < seen[m] for m in names)]


def _identifying(name: str) -> bool:
    """Whether an extracted name can identify its target alone: not a single word of the language.

    Extraction finds the capitalised words the forget examples repeat, and beside the
    target's own names those are places, nationalities, genres and professions ("Taiwan",
    "Irish", "Lesbian", "Obstetrician"...) that other people's answers mention as well.
    A single word in the bundled encoder's vocabulary (:func:`~eco_guard.canonical.known_words`)
    is such a word; a surname that is one ("Park") still counts within its full name. For
    the same reason the distinctive parts of an extracted name are its words outside that
    vocabulary, while a name the policy gives keeps every part but everyday words.
    """
    words = name.split()
    return len(words) > 1 or name.lower() not in known_words()


def _heads(probe: AnswerClassifier, train: list[str], labels: list[set[int]], negatives: list[str]) -> AnswerClassifier:
    """``probe`` with one head per target fitted: its positives against everything else in ``train`` and the ``negatives``."""
    texts = train + negatives
    feats = probe._features(texts)
    weights = np.zeros_like(probe.weights)
    bias = np.zeros(len(probe.target_ids))
    for i in range(len(probe.target_ids)):
        y = np.array([int(i in lab) for lab in labels] + [0] * len(negatives))
        if y.min() == y.max():
            continue
        weights[i], bias[i] = fit_head(feats, y)
    return probe.with_heads(weights, bias, 1.0)


def _cross_fitted(
    probe: AnswerClassifier,
    train: list[str],
    labels: list[set[int]],
    sources: dict[str, list[str]],
    folds: tuple[np.ndarray, dict[str, np.ndarray]],
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """2-fold cross-fitted max scores of the positives and of each source of negatives:
    each half scored by heads fitted without it."""
    pos_fold, neg_fold = folds
    oof_pos = np.zeros(len(train))
    oof_neg = {name: np.zeros(len(v)) for name, v in sources.items()}
    for fold in (0, 1):
        fold_train = [s for s, f in zip(train, pos_fold) if f != fold]
        fold_labels = [lab for lab, f in zip(labels, pos_fold) if f != fold]
        fold_negs = [s for name, v in sources.items() for s, f in zip(v, neg_fold[name]) if f != fold]
        heads = _heads(probe, fold_train, fold_labels, fold_negs)
        held = [k for k, f in enumerate(pos_fold) if f == fold]
        if held:
            oof_pos[held] = heads.scores([train[k] for k in held]).max(axis=1)
        for name, v in sources.items():
            idx = [k for k, f in enumerate(neg_fold[name]) if f == fold]
            if idx:
                oof_neg[name][idx] = heads.scores([v[k] for k in idx]).max(axis=1)
    return oof_pos, oof_neg


def fit_answers(
    targets: Sequence[AnswerTarget],
    *,
    target_fpr: float,
    seed: int = 0,
    canonical: Canonicalizer | None = None,
    calibration: Sequence[str] | None = None,
    generic: Sequence[str] | None = None,
) -> tuple[AnswerClassifier, AnswerFitReport]:
    """Fit the output stage from the policy's answers and names, and calibrate its threshold.

    Positives of a target: its forget answers and its names (each name is a text of its
    own, so a target with no answers is still caught by name). Negatives: every retain
    answer, the project's generic answer-like text (:func:`generic_answers`) and its
    everyday and knowledge questions (generic text, minus any that name a target), and
    the other targets' positives for attribution. Calibration: with ``calibration``
    answers, the final heads score them; without, each half of the negatives is scored
    by heads fitted without it (2-fold cross-fitting), per source.
    """
    generic_text = list(generic) if generic is not None else [*generic_answers(), *background_prompts(), *knowledge_questions(), *people_questions()]
    sources = {
        "retain answers": list(dict.fromkeys(a for t in targets for a in t.retain_answers)),
        "generic answer-like text": list(dict.fromkeys(generic_text)),
    }
    own = [_own_names(t, [s for v in sources.values() for s in v]) for t in targets]
    names = [ns for ns, _, _ in own]
    context = [cs for _, _, cs in own]
    positives = [list(dict.fromkeys([*t.forget_answers, *names[i]])) for i, t in enumerate(targets)]
    if not any(positives):
        raise NothingToCheck("the output stage needs forget answers (answer_field) or names (aliases, terms) of some target")
    all_names = [n for ns in [*names, *context] for n in ns]
    mention = names_pattern(all_names) if all_names else None
    pos_set = {p for ps in positives for p in ps}
    sources = {k: [s for s in v if s not in pos_set and not (mention and mention.search(s))] for k, v in sources.items()}
    train = list(dict.fromkeys(p for ps in positives for p in ps))
    labels = [{i for i, ps in enumerate(positives) if s in ps} for s in train]
    negatives = [s for v in sources.values() for s in v]

    rng = np.random.default_rng(seed)
    folds = (rng.integers(0, 2, len(train)), {name: rng.integers(0, 2, len(v)) for name, v in sources.items()})
    lexicon = Lexicon.fit(train, train + negatives, LEXICAL_WEIGHT)
    n = len(targets)
    probe = AnswerClassifier([t.id for t in targets], names, lexicon, np.zeros((n, lexicon.size + 3 * n)), np.zeros(n), 1.0, canonical, [ps for _, ps, _ in own], context)
    oof_pos, oof_neg = _cross_fitted(probe, train, labels, sources, folds)
    final = _heads(probe, train, labels, negatives)
    cal_scores = {name: s for name, s in oof_neg.items() if s.size}
    if calibration:
        cal_scores = {"calibration answers": final.scores(list(dict.fromkeys(calibration))).max(axis=1)}
    calibrated = joint_threshold(cal_scores, target_fpr, len(targets))
    classifier = final.with_heads(final.weights, final.bias, calibrated.threshold)
    report = AnswerFitReport(
        n_positive=len(train),
        n_negative=len(negatives),
        calibration=calibrated,
        held_out_recall=float(np.mean(oof_pos > calibrated.threshold)) if len(train) else float("nan"),
    )
    return classifier, report
