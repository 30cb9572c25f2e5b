"""Search of a target's corruption strength (``strength: auto`` in ``fit``), in seconds.

The unlearning objective is measured on *generated* answers, and generating is what made
the first search (zeroth-order, one generation pass per probed strength) cost most of a
fit: 432 of the demo's 498 s on a busy machine (issue 23). This search generates only
to confirm, and predicts everything else from teacher-forced scores.

1. **Clean answers.** The clean model answers the target's forget questions once (these
   answers are cached by content across fits, :mod:`eco_guard.fit_cache`). For
   ``answer_recall``, the questions it answers right are the ones where forgetting has to
   happen (the unknown ones stay unanswered under corruption).
2. **Predict on a grid, without generating.** The strengths are :attr:`SearchConfig.grid`
   points spaced evenly in log-strength over ``[default / SPAN, default * SPAN]``, the
   documented default in the middle. At each point scored, one batched forward pass per chunk of rows
   scores each row's clean answer, up to the end of the gold answer in it (its *cut*), as
   the reply to the corrupted prompt (:meth:`~eco_guard.runner.embedding_runner.EmbeddingRunner.score_continuations`).
   A row is predicted to still recall when greedy decoding would reproduce that prefix
   token for token (every token is the argmax: then the corrupted greedy answer contains
   the gold answer exactly as the clean one did), or when the prefix stays nearly as
   likely as without corruption (mean token log-prob within :data:`RECALL_DROP` nats):
   the model may then say the same fact in other words. The prediction falls as the
   strength grows, so a bisection of the grid, starting at the default, finds the weakest
   point predicted to meet the objective in about log2(grid) scored points (4 of 9).
3. **Confirm by generating.** The answers are generated at the predicted point plus
   :attr:`SearchConfig.margin` grid steps (serving draws fresh noise per request, so the
   chosen point keeps a margin). Measured there: the objective, fluency and loops (below).
   If the objective is missed the search steps up the grid; if fluency or loops are out of
   bounds it steps down; at most :attr:`SearchConfig.confirm` generations. The chosen
   strength is always a generated (measured) point.

Multiple choice (``mc_accuracy``) needs no prediction: the letters are scored in one
forward pass per question, which is the objective itself; the grid point nearest the
target accuracy is then confirmed for fluency and loops.

The loss of a measured strength is the sum of hinge penalties, each 0 when its goal is met:

* the objective: ``answer_recall`` above its target, or ``|mc_accuracy - target|``;
* fluency: mean token log-prob of the corrupted answers under the *clean* model
  (scored in a neutral context, :data:`~eco_guard.answer_metrics.FLUENCY_CONTEXT`)
  more than :data:`FLUENCY_TOLERANCE` (25%) worse than the clean answers' own, relative;
* loops: the fraction of corrupted answers whose distinct-token ratio is below
  :data:`MIN_DISTINCT`. Per answer, not on average: a mean hides a third of the
  answers looping behind the fluent rest, and every looping answer is one a user sees.

When no measured strength meets the objective within the fluency and loop bounds (for
multiple choice: accuracy within half a row of its target) the search has not converged:
the lowest-loss one is kept and the result carries :class:`~eco_guard.fit_warnings.FitWarning` s saying what
failed and what to try; ``fit`` prints them and the report lists them.

Fallbacks, all recorded in the result's ``note``:

* forget examples without answers: the objective becomes divergence from the clean
  model's own answer, a row counting as "recalled" while at least half of the clean
  answer's content words (4+ letters) survive in the corrupted answer (its cut is then
  the whole clean answer);
* ``mc_accuracy`` needs choices; the forget examples carry one answer each, so each
  question gets its gold answer plus up to three other forget examples' answers as
  distractors (seeded). Without answers it falls back to divergence as above;
* methods without a strength (zero_out/flip_sign) or an empty forget set: nothing is
  searched and the default is kept.

Several targets are searched together (:func:`search_strengths`): each search is a
generator that yields the answers or scores it needs next and is resumed with them, and
the driver computes what all of them asked for in shared batches. A search's steps
depend on its own rows only, so the result is each target's own search. Everything is
seeded: the rows, the per-row noise and the distractors derive from the target's seed,
so the same seed gives the same strengths.
"""

from __future__ import annotations

import hashlib
import math
import random
import sys
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

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
from .fit_warnings import FitWarning
from .runner.base import GenerationOptions, GenerationRow, MaskSpec

if TYPE_CHECKING:
    from .fit_cache import FitCache
    from .runner.embedding_runner import ContinuationScores, EmbeddingRunner

    #: the search needs a runner that also scores replies teacher-forced (``score_continuations``)
    #: and has a tokenizer; every runner built on the shared embedding core does
    Scorer = EmbeddingRunner

#: corrupted answers may be at most this much less likely (relative, in mean token
#: log-prob under the clean model) than the clean answers
FLUENCY_TOLERANCE = 0.25
#: the search stays within [default / SPAN, default * SPAN]
SPAN = 10.0
#: a row is predicted to recall while its clean answer's prefix loses at most this many
#: nats of mean token log-prob under corruption (e^-0.7: about half as likely per token)
RECALL_DROP = 0.7
#: bump when the search returns something else for the same inputs (it keys cached results)
SEARCH_VERSION = 4

WHAT_TO_TRY_OBJECTIVE = (
    "scope: prompt (corrupt the whole question, not only its names), more corrupted dims "
    "(dims: the embedding width), more forget examples with answers the model knows, or a fixed "
    "strength checked with `eco-guard eval`"
)
WHAT_TO_TRY_FLUENCY = (
    "a fixed lower strength, scope: entities (corrupt only the names), fewer dims, or an objective target above 0"
)


@dataclass(frozen=True)
class SearchConfig:
    """Budget of the search; every field is part of the cache key of a target's result."""

    grid: int = 9  # log-spaced strengths over [default / SPAN, default * SPAN]; odd puts the default in the middle
    max_items: int = 12  # rows (known questions) the search measures
    max_new_tokens: int = 24  # of the clean and the confirming answers
    batch_size: int = 16  # rows per scoring call, across all targets searched together
    generate_batch: int = 32  # rows per generate call: on a CPU a decode step costs nearly the same for 8 rows or 32
    margin: int = 1  # grid steps above the first point predicted to meet the objective
    confirm: int = 4  # most strengths generated to confirm
    progress: bool = True

    def quiet(self) -> SearchConfig:
        """The same budget without a progress bar."""
        return replace(self, progress=False)

    def key(self) -> dict[str, int]:
        """What of the config changes results (not the progress bar)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "progress"}


@dataclass(frozen=True)
class Point:
    """One strength on the grid: the predicted objective, and what generation measured if it was confirmed."""

    strength: float
    predicted: float | None  # objective predicted from teacher-forced scores (None: not scored)
    metric: float | None = None  # measured on generated answers (confirmed points only)
    fluency: float | None = None
    distinct: float | None = None  # mean distinct-token ratio
    loss: float | None = None
    looping: float | None = None  # fraction of answers below MIN_DISTINCT

    @property
    def generated(self) -> bool:
        return self.loss is not None


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
    converged: bool = True
    warnings: list[FitWarning] = field(default_factory=list)
    n_scored: int = 0  # grid points predicted from teacher-forced scores
    n_generated: int = 0  # strengths answered by generation to confirm

    def to_dict(self) -> dict[str, object]:
        """JSON-ready, for report.json, guard.yaml and the fit cache."""
        d = asdict(self)
        d["curve"] = [asdict(p) for p in sorted(self.curve, key=lambda p: p.strength)]
        d["warnings"] = [w.to_dict() for w in self.warnings]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchResult:
        """Inverse of :meth:`to_dict` (a cached result)."""
        d = dict(d)
        d["curve"] = [Point(**p) for p in d["curve"]]
        d["warnings"] = [FitWarning.from_dict(w) for w in d["warnings"]]
        return cls(**d)


@dataclass(frozen=True)
class SearchJob:
    """One target's search: its forget examples, the corruption to tune and what to tune it toward."""

    questions: Sequence[str]
    answers: Sequence[str | None]
    base: Corruption  # method, dims, start strength (the documented default) and seed
    mask: MaskSpec
    metric: str = "answer_recall"
    target: float = 0.0
    id: str = ""  # the target's id, for warnings

    def key(self, config: SearchConfig) -> dict[str, object]:
        """Everything the result depends on but the model (the cache adds that)."""
        return {
            "version": SEARCH_VERSION,
            "questions": list(self.questions),
            "answers": list(self.answers),
            "base": self.base.to_dict(),
            "mask": {"scope": self.mask.scope, "terms": list(self.mask.terms)},
            "metric": self.metric,
            "target": self.target,
            "config": config.key(),
        }


@dataclass(frozen=True)
class _Answers:
    """Answers a search needs before it can go on; the driver generates them."""

    chats: list[list[dict[str, str]]]
    corruptions: list[Corruption | None]
    mask: MaskSpec
    options: GenerationOptions


@dataclass(frozen=True)
class _Scores:
    """Teacher-forced scores of given replies a search needs; the driver computes them."""

    chats: list[list[dict[str, str]]]
    replies: list[list[int]]
    corruptions: list[Corruption | None]
    mask: MaskSpec


_Search = Generator["_Answers | _Scores", list[Any], SearchResult]


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


def grid(start: float, n: int) -> list[float]:
    """``n`` strengths evenly spaced in log-strength over ``[start / SPAN, start * SPAN]``, ascending."""
    if n < 2:
        return [start]
    lo, hi = math.log(start / SPAN), math.log(start * SPAN)
    return [math.exp(lo + (hi - lo) * j / (n - 1)) for j in range(n)]


def _reply_cut(tokenizer: Any, clean: str, gold: str | None) -> list[int]:
    """The clean answer's tokens up to the end of the gold answer's first occurrence (all of them without one).

    Greedy decoding that reproduces these tokens has said the gold answer; the rest of
    the answer says nothing about recall, so it is not scored.
    """
    enc = tokenizer(clean, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    if gold:
        at = clean.lower().find(gold.strip().lower())
        if at >= 0:
            end = at + len(gold.strip())
            kept = [t for t, (s, _) in zip(ids, offsets) if s < end]
            return kept or ids
    return ids


def _loss(kind: str, metric: float, target: float, fluency: float | None, bound: float | None, looping: float) -> float:
    goal = abs(metric - target) if kind == "mc_accuracy" else max(0.0, metric - target)
    flu = 0.0
    if bound is not None:
        flu = max(0.0, bound - fluency) / abs(bound) if fluency is not None else 1.0
    return goal + flu + looping


class _Probe:
    """One target's rows at one strength: the requests for the driver and what their results mean."""

    def __init__(self, runner: Scorer, rows: list[_Row], base: Corruption, mask: MaskSpec, kind: str, config: SearchConfig) -> None:
        self.runner, self.rows, self.base, self.mask, self.kind = runner, rows, base, mask, kind
        self.options = GenerationOptions(max_new_tokens=config.max_new_tokens)

    def corruptions(self, strength: float | None) -> list[Corruption | None]:
        if strength is None:
            return [None] * len(self.rows)
        c = Corruption(self.base.method, self.base.dims, strength, 0)
        return [c.with_seed(_row_seed(self.base.seed, i)) for i in range(len(self.rows))]

    def chats(self) -> list[list[dict[str, str]]]:
        return [[{"role": "user", "content": r.question}] for r in self.rows]

    def answers(self, strength: float | None) -> _Answers:
        """The answers to the rows at ``strength`` (None: clean), as a request to the driver."""
        return _Answers(self.chats(), self.corruptions(strength), self.mask, self.options)

    def scores(self, strength: float | None, replies: list[list[int]]) -> _Scores:
        """Teacher-forced scores of ``replies`` at ``strength``, as a request to the driver."""
        return _Scores(self.chats(), replies, self.corruptions(strength), self.mask)

    def metric(self, strength: float | None, texts: Sequence[str]) -> float:
        """The objective's value on these answers (multiple choice scores the letters instead)."""
        if self.kind == "mc_accuracy":
            return self.mc_accuracy(strength)
        if self.kind == "divergence":
            return sum(not _diverged(t, r.gold) for t, r in zip(texts, self.rows)) / len(self.rows)
        return sum(contains_answer(t, r.gold) for t, r in zip(texts, self.rows)) / len(self.rows)

    def mc_accuracy(self, strength: float | None) -> float:
        pairs = zip(self.rows, self.corruptions(strength))
        return sum(mc_prediction(self.runner, r.mc, c, self.mask) == r.mc.answer for r, c in pairs if r.mc) / len(self.rows)

    def quality(self, texts: Sequence[str]) -> tuple[float | None, float, float]:
        """(mean token log-prob under the clean model, mean distinct-token ratio, looping fraction)."""
        fluency = mean_or_none(answer_logprobs(self.runner, texts))
        ratios = [answer_distinct_ratio(self.runner, t) for t in texts]
        n = max(len(ratios), 1)
        return fluency, sum(ratios) / n, sum(r < MIN_DISTINCT for r in ratios) / n


def search_strength(
    runner: Scorer,
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
    runner: Scorer,
    jobs: Sequence[SearchJob],
    *,
    config: SearchConfig = SearchConfig(),
    desc: str = "strength",
    cache: FitCache | None = None,
) -> list[SearchResult]:
    """Every job's search (see :func:`search_strength`), their requests computed in shared batches.

    Each search runs until it needs answers or scores; the driver then computes every
    waiting search's rows together (grouped by kind, mask and decoding options,
    ``config.batch_size`` rows a scoring call, ``config.generate_batch`` a generate call) and resumes each with its own. Clean answers come
    from ``cache`` when it has them. One progress bar counts evaluated strengths.
    """
    from tqdm import tqdm

    bar = tqdm(total=len(jobs) * (config.grid + 1), desc=desc, unit="eval", file=sys.stderr, disable=not config.progress)
    searches = [_search(runner, job, config, bar.update) for job in jobs]
    results: list[SearchResult | None] = [None] * len(jobs)
    waiting: dict[int, _Answers | _Scores] = {}

    def resume(i: int, values: list[Any] | None) -> None:
        try:
            waiting[i] = searches[i].send(values)  # type: ignore[arg-type]  # None starts a generator
        except StopIteration as done:
            results[i] = done.value

    with bar:
        for i in range(len(searches)):
            resume(i, None)
        while waiting:
            asked = dict(waiting)
            waiting.clear()
            groups: dict[tuple[Any, ...], list[int]] = {}
            for i, req in asked.items():  # each row keeps its own target's mask: targets share batches
                kind = (type(req).__name__, getattr(req, "options", None))
                groups.setdefault(kind, []).append(i)
            for ids in groups.values():
                rows = [(i, k) for i in ids for k in range(len(asked[i].chats))]
                size = config.generate_batch if isinstance(asked[ids[0]], _Answers) else config.batch_size
                values = _compute(runner, [asked[i] for i in ids], rows, ids, size, cache)
                at = 0
                for i in ids:
                    n = len(asked[i].chats)
                    resume(i, values[at : at + n])
                    at += n
        bar.total = bar.n  # searches that stopped early evaluated fewer points
        bar.refresh()
    done = [r for r in results if r is not None]
    assert len(done) == len(jobs), "every search runs to its end"  # so results stay aligned with jobs
    return done


def _answer_key(chat: list[dict[str, str]], options: GenerationOptions) -> dict[str, object]:
    """What a clean answer depends on besides the model (the cache's directory names that)."""
    return {"chat": chat, "options": asdict(options)}


def _compute(
    runner: Scorer,
    requests: list[_Answers | _Scores],
    rows: list[tuple[int, int]],
    ids: list[int],
    batch_size: int,
    cache: FitCache | None,
) -> list[Any]:
    """One group's rows (same kind and options), ``batch_size`` a call; clean answers from ``cache``.

    Rows are batched in order of length, so a batch pads little, whichever targets its
    rows come from; each row is corrupted under its own target's mask.
    """
    by_id = dict(zip(ids, requests))
    first = requests[0]
    out: list[Any] = [None] * len(rows)
    todo = list(range(len(rows)))
    clean = isinstance(first, _Answers)
    if clean and cache is not None:
        todo = []
        for n, (i, k) in enumerate(rows):
            req = by_id[i]
            hit = cache.get("clean_answers", _answer_key(req.chats[k], req.options)) if req.corruptions[k] is None else None
            if hit is None:
                todo.append(n)
            else:
                out[n] = hit

    def length(n: int) -> int:
        req, k = by_id[rows[n][0]], rows[n][1]
        return len(req.chats[k][-1]["content"]) + (4 * len(req.replies[k]) if isinstance(req, _Scores) else 0)

    todo.sort(key=length)  # stable: equal lengths keep their order, so batches are deterministic
    for b in range(0, len(todo), batch_size):
        part = todo[b : b + batch_size]
        batch = [GenerationRow(by_id[i].chats[k], by_id[i].corruptions[k], by_id[i].mask) for i, k in (rows[n] for n in part)]
        if isinstance(first, _Answers):
            got: list[Any] = runner.generate(batch, first.options)
        else:
            replies = [by_id[rows[n][0]].replies[rows[n][1]] for n in part]  # type: ignore[union-attr]
            got = runner.score_continuations(batch, replies)
        for n, value in zip(part, got):
            out[n] = value
            i, k = rows[n]
            req = by_id[i]
            if clean and cache is not None and req.corruptions[k] is None:
                cache.put("clean_answers", _answer_key(req.chats[k], req.options), value)  # type: ignore[union-attr]
    return out


def _predicted_recall(scores: Sequence[ContinuationScores], clean: Sequence[ContinuationScores]) -> float:
    """Fraction of rows predicted to still recall (see the module docstring, step 2)."""
    recalled = 0
    for s, c in zip(scores, clean):
        drop = (sum(c.logprobs) - sum(s.logprobs)) / len(s.logprobs)
        recalled += all(s.greedy) or drop <= RECALL_DROP
    return recalled / max(len(scores), 1)


def _search(runner: Scorer, job: SearchJob, config: SearchConfig, evaluated: Callable[[int], object]) -> _Search:
    """One target's search as a generator: yields the requests it needs, returns its result."""
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
    clean_answers = yield _Probe(runner, rows, base, mask, kind, config).answers(None)
    clean = dict(zip((r.question for r in rows), clean_answers))
    if kind == "answer_recall":
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
        result.clean_metric = probe.mc_accuracy(None)
    result.n_items = len(rows)
    result.clean_fluency = clean_fluency
    bound = clean_fluency * (1 + FLUENCY_TOLERANCE) if clean_fluency is not None else None
    result.fluency_bound = bound
    scale = result.clean_metric if kind == "answer_recall" else 1.0

    strengths = grid(start, config.grid)
    predicted: dict[int, float] = {}

    def meets(value: float) -> bool:
        """The objective is met: recall at most its target; accuracy as near it as the rows allow (half a row)."""
        if kind == "mc_accuracy":
            return abs(value - target) <= 0.5 / max(len(rows), 1) + 1e-12
        return value <= target + 1e-12

    # --- step 2: predict from teacher-forced scores where on the grid the objective is first met
    if kind == "mc_accuracy":
        for j, s in enumerate(strengths):
            predicted[j] = probe.mc_accuracy(s)
            result.n_scored += 1
            evaluated(1)
            if predicted[j] <= target:
                break  # accuracy only falls further up the grid
        first = min(predicted, key=lambda j: (abs(predicted[j] - target), -j))
        pick = first
    else:
        replies = [_reply_cut(runner.tokenizer, t, r.gold if kind == "answer_recall" else None) for t, r in zip(clean_texts, rows)]
        scorable = [k for k, rep in enumerate(replies) if rep]
        replies = [rep or [runner.tokenizer.eos_token_id or 0] for rep in replies]
        base_scores = yield probe.scores(None, replies)
        # bisection for the weakest grid point predicted to meet the objective, starting at
        # the documented default in the middle: the prediction falls as the strength grows,
        # so about log2(grid) scored points find it where a scan up the grid took up to all
        lo, hi = -1, len(strengths)  # lo: known (or taken) to miss; hi: first known to meet
        while hi - lo > 1:
            j = (lo + hi) // 2
            got = yield probe.scores(strengths[j], replies)
            predicted[j] = scale * _predicted_recall([got[k] for k in scorable], [base_scores[k] for k in scorable])
            result.n_scored += 1
            evaluated(1)
            if meets(predicted[j]):
                hi = j
            else:
                lo = j
        first = hi if hi < len(strengths) else None
        pick = min((first if first is not None else len(strengths) - 1) + config.margin, len(strengths) - 1)

    # --- step 3: confirm by generating; step up on a missed objective, down on broken fluency
    measured: dict[int, Point] = {}
    fine: dict[int, bool] = {}  # objective met within the fluency and loop bounds
    j = pick
    while len(measured) < config.confirm and j not in measured:
        texts = yield probe.answers(strengths[j])
        m = probe.metric(strengths[j], texts) * (scale if kind == "answer_recall" else 1.0)
        f, d, loops = probe.quality(texts)
        loss = _loss(kind, m, target, f, bound, loops)
        measured[j] = Point(strengths[j], predicted.get(j), m, f, d, loss, loops)
        result.n_generated += 1
        evaluated(1)
        goal_ok = meets(m)
        fluent = loss - (abs(m - target) if kind == "mc_accuracy" else max(0.0, m - target)) <= 1e-12
        fine[j] = goal_ok and fluent
        if goal_ok and fluent:
            break
        if kind == "mc_accuracy":
            step = (1 if m > target else -1) if not goal_ok else -1
        else:
            step = 1 if (fluent and not goal_ok) else -1
        if not fluent and not goal_ok:
            break  # neither direction helps both
        nxt = j + step
        if not 0 <= nxt < len(strengths) or nxt in measured:
            break
        j = nxt

    result.curve = [measured.get(j, Point(s, predicted.get(j))) for j, s in enumerate(strengths) if j in measured or j in predicted]
    good = [measured[i] for i in measured if fine[i]]
    chosen = _choose(good or list(measured.values()))
    result.strength = chosen.strength
    result.converged = bool(good)
    result.warnings = [] if good else _warnings(job, kind, chosen, bound, strengths, meets)
    return result


def _warnings(
    job: SearchJob, kind: str, chosen: Point, bound: float | None, strengths: list[float], meets: Callable[[float], bool]
) -> list[FitWarning]:
    """What the chosen point misses, each with what to try."""
    out = []
    assert chosen.metric is not None and chosen.loss is not None
    missed = not meets(chosen.metric)
    span = f"{strengths[0]:.3g}-{strengths[-1]:.3g}"
    if missed:
        out.append(
            FitWarning(
                "objective_not_met",
                f"the strength search did not reach {kind} {'~' if kind == 'mc_accuracy' else '<='} {job.target:g} "
                f"within strengths {span}: {chosen.metric:.3f} at the chosen {chosen.strength:.4g}",
                WHAT_TO_TRY_OBJECTIVE,
                job.id or None,
            )
        )
    if bound is not None and (chosen.fluency is None or chosen.fluency < bound):
        flu = "n/a" if chosen.fluency is None else f"{chosen.fluency:.3f}"
        out.append(
            FitWarning(
                "fluency_bound",
                f"at strength {chosen.strength:.4g} the corrupted answers' fluency ({flu}, mean token log-prob) is "
                f"below its bound {bound:.3f} (the clean answers' own, {FLUENCY_TOLERANCE:.0%} worse)",
                WHAT_TO_TRY_FLUENCY,
                job.id or None,
            )
        )
    if chosen.looping:
        out.append(
            FitWarning(
                "looping",
                f"at strength {chosen.strength:.4g}, {chosen.looping:.0%} of the corrupted answers loop "
                f"(distinct-token ratio below {MIN_DISTINCT})",
                WHAT_TO_TRY_FLUENCY,
                job.id or None,
            )
        )
    return out


def _choose(points: Sequence[Point]) -> Point:
    """Lowest loss among the generated points; among ties, the weakest (least disturbance)."""
    best = min(p.loss for p in points if p.loss is not None)
    return min((p for p in points if p.loss is not None and p.loss <= best + 1e-12), key=lambda p: p.strength)
