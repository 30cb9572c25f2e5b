"""Zeroth-order search of a target's corruption strength (``strength: auto`` in ``fit``).

The unlearning objectives are measured by *generating* answers, so they have no gradient
with respect to the noise strength: the paper (Liu et al., 2024, §3.3) therefore tunes
the strength with zeroth-order optimisation, and so do we. The search variable is
``x = log(strength)`` (strengths that matter span orders of magnitude), bounded to a
factor of :data:`SPAN` either side of the documented default, which is also the start.

Each step probes ``x ± h`` (central finite differences) and moves ``x`` by a decaying
step against the sign of the difference. The objectives are step functions of the
strength (recall over a few questions moves in jumps of 1/n), so a zero difference is
common: then the probe widens (``h`` doubles) until it sees a slope, and a zero
difference at a point that already meets every constraint ends the search.

The loss of a strength is the sum of hinge penalties, each 0 when its goal is met:

* the objective: ``answer_recall`` above its target, or ``|mc_accuracy - target|``;
* fluency: mean token log-prob of the corrupted answers under the *clean* model
  (scored in a neutral context, :data:`~eco_guard.answer_metrics.FLUENCY_CONTEXT`)
  more than :data:`FLUENCY_TOLERANCE` (25%) worse than the clean answers' own, relative;
* loops: the fraction of corrupted answers whose distinct-token ratio is below
  :data:`MIN_DISTINCT`. Per answer, not on average: a mean hides a third of the
  answers looping ("The original sentence is: The original sentence is: ...") behind
  the fluent rest, and every looping answer is one a user sees.

Every evaluated strength is kept (the strength-vs-objective curve of the fit report).
The chosen strength is the lowest-loss point; among tied points (usually: all those
meeting every goal) the middle one, which keeps a margin on both the forgetting side
and the fluency side, since serving draws fresh noise per request.

Fallbacks, all recorded in the result's ``note``:

* forget examples without answers: the objective becomes divergence from the clean
  model's own answer, a row counting as "recalled" while at least half of the clean
  answer's content words (4+ letters) survive in the corrupted answer;
* ``mc_accuracy`` needs choices; the forget examples carry one answer each, so each
  question gets its gold answer plus up to three other forget examples' answers as
  distractors (seeded). Without answers it falls back to divergence as above;
* methods without a strength (zero_out/flip_sign) or an empty forget set: nothing is
  searched and the default is kept.

Several targets are searched together (:func:`search_strengths`): each search is a
generator that yields the answers it needs next and is resumed with them, and the
driver generates what all of them asked for in shared batches. A search's steps depend
on its own answers only, so the result is each target's own search; the batches are
what change. On 2 CPU cores the bundled model answered 32 questions in 37 s two at a
time, 10 s eight at a time and 7.5 s sixteen at a time; a target of two examples asks
two at a time. One target alone is batched exactly as before (eight rows a call), so
single-target fits keep their searched strengths.
"""

from __future__ import annotations

import hashlib
import math
import random
import sys
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field, replace

from .corruption import Corruption
from .answer_metrics import (
    MIN_DISTINCT,
    MCItem,
    answer_distinct_ratio,
    answer_logprobs,
    contains_answer,
    mc_prediction,
    mean_or_none,
    normalize_answer,
)
from .runner.base import GenerationOptions, GenerationRow, MaskSpec, Runner

#: corrupted answers may be at most this much less likely (relative, in mean token
#: log-prob under the clean model) than the clean answers
FLUENCY_TOLERANCE = 0.25
#: the search stays within [default / SPAN, default * SPAN]
SPAN = 10.0


@dataclass(frozen=True)
class SearchConfig:
    """Budget of the search; the defaults keep ``fit`` of a 50-question target near a minute on 2 CPU cores."""

    steps: int = 4
    max_items: int = 12
    max_new_tokens: int = 24
    batch_size: int = 8  # rows per generate call, across all targets searched together
    probe: float = 0.35  # initial finite-difference half-width h, in log-strength
    step: float = 0.7  # initial move, in log-strength; decays as 1 / (1 + k / 2)
    progress: bool = True

    def quiet(self) -> SearchConfig:
        """The same budget without a progress bar."""
        return replace(self, progress=False)


@dataclass(frozen=True)
class Point:
    """One evaluated strength: what the curve plots and the search compares."""

    strength: float
    metric: float
    fluency: float | None
    distinct: float  # mean distinct-token ratio
    loss: float
    looping: float = 0.0  # fraction of answers below MIN_DISTINCT


@dataclass
class SearchResult:
    """The chosen strength and everything needed to explain it in the fit report."""

    strength: float
    start: float
    metric: str
    target: float
    objective: str  # what was actually measured (may be a fallback; see note)
    clean_metric: float
    clean_fluency: float | None
    fluency_bound: float | None
    n_items: int
    curve: list[Point] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict[str, object]:
        """JSON-ready, for report.json and guard.yaml."""
        d = asdict(self)
        d["curve"] = [asdict(p) for p in sorted(self.curve, key=lambda p: p.strength)]
        return d


@dataclass(frozen=True)
class SearchJob:
    """One target's search: its forget examples, the corruption to tune and what to tune it toward."""

    questions: Sequence[str]
    answers: Sequence[str | None]
    base: Corruption  # method, dims, start strength (the documented default) and seed
    mask: MaskSpec
    metric: str = "answer_recall"
    target: float = 0.0


@dataclass(frozen=True)
class _Answers:
    """The answers a search needs before it can go on; the driver generates them."""

    chats: list[list[dict[str, str]]]
    corruptions: list[Corruption | None]
    mask: MaskSpec
    options: GenerationOptions


_Search = Generator[_Answers, list[str], SearchResult]


@dataclass(frozen=True)
class _Row:
    question: str
    gold: str  # the gold answer, or the clean answer for the divergence fallback
    mc: MCItem | None = None


def _row_seed(seed: int, index: int) -> int:
    """Independent noise per question, as serving gives each request its own seed."""
    return int.from_bytes(hashlib.sha256(f"opt|{seed}|{index}".encode()).digest()[:4], "little")


def _content_words(text: str) -> set[str]:
    return {w for w in normalize_answer(text).split() if len(w) >= 4}


def _diverged(output: str, clean: str) -> bool:
    """False while at least half the clean answer's content words survive in ``output``."""
    words = _content_words(clean)
    if not words:
        return normalize_answer(output) != normalize_answer(clean)
    return len(words & _content_words(output)) / len(words) < 0.5


def _mc_items(questions: Sequence[str], answers: Sequence[str], seed: int) -> list[MCItem]:
    """Gold answer plus up to three distinct other answers as distractors, shuffled with ``seed``."""
    rng = random.Random(seed)
    items = []
    for i, (q, a) in enumerate(zip(questions, answers)):
        pool = sorted({b for j, b in enumerate(answers) if j != i and normalize_answer(b) != normalize_answer(a)})
        choices = [a, *rng.sample(pool, min(3, len(pool)))]
        rng.shuffle(choices)
        items.append(MCItem(q, tuple(choices), choices.index(a)))
    return items


class _Probe:
    """Measures one strength on the search rows: corrupted answers, metric, fluency."""

    def __init__(
        self,
        runner: Runner,
        rows: list[_Row],
        base: Corruption,
        mask: MaskSpec,
        kind: str,
        config: SearchConfig,
    ) -> None:
        self.runner, self.rows, self.base, self.mask, self.kind, self.config = runner, rows, base, mask, kind, config
        self.options = GenerationOptions(max_new_tokens=config.max_new_tokens)

    def corruptions(self, strength: float | None) -> list[Corruption | None]:
        if strength is None:
            return [None] * len(self.rows)
        c = Corruption(self.base.method, self.base.dims, strength, 0)
        return [c.with_seed(_row_seed(self.base.seed, i)) for i in range(len(self.rows))]

    def request(self, strength: float | None) -> _Answers:
        """The answers to the search rows at ``strength`` (None: clean), as a request to the driver."""
        chats = [[{"role": "user", "content": r.question}] for r in self.rows]
        return _Answers(chats, self.corruptions(strength), self.mask, self.options)

    def metric(self, strength: float | None, texts: Sequence[str]) -> float:
        """The objective's value on these answers (multiple choice re-scores the letters)."""
        if self.kind == "mc_accuracy":
            pairs = zip(self.rows, self.corruptions(strength))
            return sum(mc_prediction(self.runner, r.mc, c, self.mask) == r.mc.answer for r, c in pairs if r.mc) / len(self.rows)
        if self.kind == "divergence":
            return sum(not _diverged(t, r.gold) for t, r in zip(texts, self.rows)) / len(self.rows)
        return sum(contains_answer(t, r.gold) for t, r in zip(texts, self.rows)) / len(self.rows)

    def quality(self, texts: Sequence[str]) -> tuple[float | None, float, float]:
        """(mean token log-prob under the clean model, mean distinct-token ratio, looping fraction)."""
        fluency = mean_or_none(answer_logprobs(self.runner, texts))
        ratios = [answer_distinct_ratio(self.runner, t) for t in texts]
        n = max(len(ratios), 1)
        return fluency, sum(ratios) / n, sum(r < MIN_DISTINCT for r in ratios) / n

    def measure(self, strength: float) -> Generator[_Answers, list[str], tuple[float, float | None, float, float]]:
        """(metric, fluency, mean distinct ratio, looping fraction) of the corrupted answers at ``strength``."""
        texts = yield self.request(strength)
        return (self.metric(strength, texts), *self.quality(texts))


def _loss(kind: str, metric: float, target: float, fluency: float | None, bound: float | None, looping: float) -> float:
    goal = abs(metric - target) if kind == "mc_accuracy" else max(0.0, metric - target)
    flu = 0.0
    if bound is not None:
        flu = max(0.0, bound - fluency) / abs(bound) if fluency is not None else 1.0
    return goal + flu + looping


def search_strength(
    runner: Runner,
    questions: Sequence[str],
    answers: Sequence[str | None],
    base: Corruption,
    mask: MaskSpec,
    *,
    metric: str = "answer_recall",
    target: float = 0.0,
    config: SearchConfig = SearchConfig(),
    desc: str = "strength",
) -> SearchResult:
    """Search ``base.strength``'s neighbourhood for the strength that best meets the objective.

    ``base`` carries the method, dims, the start strength (the documented default) and
    the seed; ``questions``/``answers`` are the target's forget examples (answers may be
    None). Deterministic for a given seed: rows, noise and distractors all derive from it.
    """
    job = SearchJob(questions, answers, base, mask, metric, target)
    return search_strengths(runner, [job], config=config, desc=desc)[0]


def search_strengths(
    runner: Runner, jobs: Sequence[SearchJob], *, config: SearchConfig = SearchConfig(), desc: str = "strength"
) -> list[SearchResult]:
    """Every job's search (see :func:`search_strength`), their answers generated in shared batches.

    Each search runs until it needs answers; the driver then generates every waiting
    search's rows together (grouped by mask and decoding options, ``config.batch_size``
    rows a call) and resumes each with its own. One progress bar counts evaluated
    strengths over all jobs.
    """
    from tqdm import tqdm

    bar = tqdm(total=len(jobs) * (1 + 2 * config.steps), desc=desc, unit="eval", file=sys.stderr, disable=not config.progress)
    searches = [_search(runner, job, config, bar.update) for job in jobs]
    results: list[SearchResult | None] = [None] * len(jobs)
    waiting: dict[int, _Answers] = {}

    def resume(i: int, texts: list[str] | None) -> None:
        try:
            waiting[i] = searches[i].send(texts)  # type: ignore[arg-type]  # None starts a generator
        except StopIteration as done:
            results[i] = done.value

    with bar:
        for i in range(len(searches)):
            resume(i, None)
        while waiting:
            asked, groups = dict(waiting), {}
            waiting.clear()
            for i, req in asked.items():
                groups.setdefault((req.mask, req.options), []).append(i)
            for (mask, options), ids in groups.items():
                rows = [(i, k) for i in ids for k in range(len(asked[i].chats))]
                texts: list[str] = []
                for b in range(0, len(rows), config.batch_size):
                    part = rows[b : b + config.batch_size]
                    texts += runner.generate([GenerationRow(asked[i].chats[k], asked[i].corruptions[k], mask) for i, k in part], options)
                at = 0
                for i in ids:
                    n = len(asked[i].chats)
                    resume(i, texts[at : at + n])
                    at += n
        bar.total = bar.n  # searches that settled early evaluated fewer points
        bar.refresh()
    done = [r for r in results if r is not None]
    assert len(done) == len(jobs), "every search runs to its end"  # so results stay aligned with jobs
    return done


def _search(runner: Runner, job: SearchJob, config: SearchConfig, evaluated: Callable[[int], object]) -> _Search:
    """One target's search as a generator: yields the answers it needs, returns its result."""
    questions, answers, base, mask, metric, target = job.questions, job.answers, job.base, job.mask, job.metric, job.target
    start = base.strength
    rng = random.Random(base.seed)
    have_answers = bool(answers) and all(a and a.strip() for a in answers)
    note = ""
    kind = metric
    if not have_answers:
        kind = "divergence"
        note = "forget examples have no answers: objective is divergence from the clean model's own answers"
    result = SearchResult(start, start, metric, target, kind, 0.0, None, None, 0, note=note)
    if not base.method.startswith("rand_noise") or not questions or start <= 0:
        result.note = "nothing to search (method has no strength or no examples); default kept"
        return result

    order = list(range(len(questions)))
    rng.shuffle(order)
    if kind == "mc_accuracy":
        items = _mc_items(questions, [a or "" for a in answers], base.seed)
        rows = [_Row(questions[i], answers[i] or "", items[i]) for i in order[: config.max_items]]
    else:
        # recall needs every question's clean answer to find the known ones; divergence does not
        rows = [_Row(questions[i], answers[i] or "") for i in (order if kind == "answer_recall" else order[: config.max_items])]
    clean_answers = yield _Probe(runner, rows, base, mask, kind, config).request(None)
    clean = dict(zip((r.question for r in rows), clean_answers))
    if kind == "answer_recall":
        # Questions the model cannot answer stay unanswered under corruption; the search
        # looks at the ones it knows, which is where forgetting has to happen.
        known = [r for r in rows if contains_answer(clean[r.question], r.gold)]
        result.clean_metric = len(known) / len(rows)
        rows = known[: config.max_items] or rows[: config.max_items]
    elif kind == "divergence":
        rows = [_Row(r.question, clean[r.question]) for r in rows if clean[r.question].strip()][: config.max_items]
        result.clean_metric = 1.0
        if not rows:
            result.note = "the clean model gave no answer to diverge from; default kept"
            return result
    probe = _Probe(runner, rows, base, mask, kind, config)
    clean_texts = [clean[r.question] for r in rows]
    clean_fluency, _, _ = probe.quality(clean_texts)
    if kind == "mc_accuracy":
        result.clean_metric = probe.metric(None, clean_texts)
    result.n_items = len(rows)
    result.clean_fluency = clean_fluency
    bound = clean_fluency * (1 + FLUENCY_TOLERANCE) if clean_fluency is not None else None
    result.fluency_bound = bound

    scale = result.clean_metric if kind == "answer_recall" else 1.0
    lo, hi = math.log(start / SPAN), math.log(start * SPAN)
    cache: dict[float, Point] = {}

    def evaluate(x: float) -> Generator[_Answers, list[str], Point]:
        x = min(max(x, lo), hi)
        key = round(x, 6)
        if key not in cache:
            s = math.exp(x)
            m, f, d, loops = yield from probe.measure(s)
            m *= scale  # recall over all forget examples: unknown ones stay unrecalled
            cache[key] = Point(s, m, f, d, _loss(kind, m, target, f, bound, loops), loops)
            evaluated(1)
        return cache[key]

    x, h = math.log(start), config.probe
    centre = yield from evaluate(x)
    for k in range(config.steps):
        plus = yield from evaluate(x + h)
        minus = yield from evaluate(x - h)
        slope = (plus.loss - minus.loss) / (2 * h)
        if slope == 0.0:
            if centre.loss == 0.0 and plus.loss == 0.0 and minus.loss == 0.0:
                break  # flat and feasible all around: done
            h = min(2 * h, hi - lo)
            continue
        x = min(max(x - math.copysign(config.step / (1 + k / 2), slope), lo), hi)
        centre = yield from evaluate(x)
    result.curve = list(cache.values())
    result.strength = _choose(result.curve).strength
    return result


def _choose(points: Sequence[Point]) -> Point:
    """Lowest loss; among ties, the median strength (a margin on both sides)."""
    best = min(p.loss for p in points)
    tied = sorted((p for p in points if p.loss <= best + 1e-12), key=lambda p: p.strength)
    return tied[(len(tied) - 1) // 2]

