"""Guard: classify a request, decide, and route it (pass / corrupt / refuse / flag).

The guard keeps no per-call state: everything a request needs lives in local variables,
so one instance is shared safely by threads, asyncio tasks, LangChain chains and the
HTTP server at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from .artifact import read_guard
from .audit import AuditSink, NullAudit, prompt_hash
from .classifier import Classifier
from .canonical import Canonicalizer, scored_pieces
from .classifier.pieces import max_over_pieces
from .decision import DecidedAnswer, Decision, GuardedResult
from .errors import EcoGuardError, InputError, UserError
from .language import LanguagePolicy
from .output.stage import AnswerCheck, ascreen_stream, screen, screen_stream
from .routing import PLAIN, Route, TargetRule
from .runner.base import GenerationOptions, Messages, Runner, normalize_messages

Prompt = str | Messages


def _user_turns(messages: Sequence[dict[str, str]]) -> list[str]:
    return [m["content"].strip() for m in messages if m["role"] == "user" and m["content"].strip()]


def scored_turn_words(messages: Sequence[dict[str, str]]) -> int:
    """Words in the turn scored by its pieces: what a conversation's classification costs.

    The cost grows with this turn's length (one encoder row per sentence and window); the
    joined earlier turns are one row, cut at the encoder's input length. The server bounds
    a check request by it, since no model context bounds a text sent only to be checked.
    """
    return len(_user_turns(messages)[-1].split())


def classification_texts(messages: Sequence[dict[str, str]], canonical: Canonicalizer | None = None) -> list[str]:
    """The texts whose scores decide a conversation.

    The last user turn is scored by its pieces (itself, its sentences and windows, see
    :func:`eco_guard.classifier.pieces.text_pieces`), so a forget question padded with
    other text is still seen. It alone misses follow-ups that only make sense through an
    earlier turn ("And where was she born?"), so the last four user turns joined together
    are scored too; a request is judged by the highest score of any of these. With a
    ``canonical`` reader, each is scored in its canonical form as well (:mod:`eco_guard.canonical`).
    """
    users = _user_turns(messages)
    texts = scored_pieces(users[-1], canonical)
    if len(users) > 1:
        joined = "\n".join(users[-4:])
        texts.extend(canonical.variants(joined) if canonical is not None else [joined])
    return texts


class GuardedStream:
    """An iterator of answer text pieces that also carries the request's decision.

    The decision is made before the first token, so ``decision`` is available at once,
    e.g. to put it in a response header before streaming the body.
    """

    def __init__(self, decision: Decision, pieces: Iterator[str]) -> None:
        self.decision = decision
        self._pieces = pieces

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()


class AsyncGuardedStream:
    """Async twin of :class:`GuardedStream`."""

    def __init__(self, decision: Decision, pieces: AsyncIterator[str]) -> None:
        self.decision = decision
        self._pieces = pieces

    def __aiter__(self) -> AsyncIterator[str]:
        return self._pieces

    async def __anext__(self) -> str:
        return await self._pieces.__anext__()

    async def aclose(self) -> None:
        aclose = getattr(self._pieces, "aclose", None)
        if aclose is not None:
            await aclose()


class Guard:
    """A fitted guard: classifier, per-target rules, a (lazily loaded) runner and an audit sink."""

    def __init__(
        self,
        *,
        classifier: Classifier,
        rules: Sequence[TargetRule],
        runner: Runner | Callable[[], Runner] | None = None,
        audit: AuditSink | None = None,
        on_error: Literal["fail_closed", "fail_open"] = "fail_closed",
        seed: int = 0,
        name: str = "eco-guard",
        canonical: Canonicalizer | None = None,
        answers: AnswerCheck | None = None,
        languages: LanguagePolicy | None = None,
    ) -> None:
        if [r.id for r in rules] != list(classifier.target_ids):
            raise ValueError("rules must match the classifier's targets, in order")
        self.classifier = classifier
        self.rules = list(rules)
        self._rules_by_id = {r.id: r for r in rules}
        self.audit: AuditSink = audit or NullAudit()
        self.on_error = on_error
        self.seed = seed
        self.name = name
        self.canonical = canonical
        """Reads disguised prompts (:mod:`eco_guard.canonical`); None for guards fitted before it existed."""
        self.answers = answers
        """The output stage's checker (:mod:`eco_guard.output`); None: answers are not checked."""
        self.languages = languages
        """The language policy (:mod:`eco_guard.language`); None: languages are not judged."""
        self._runner: Runner | None = None
        self._runner_factory: Callable[[], Runner] | None = None
        if runner is not None and not callable(getattr(runner, "generate", None)):
            self._runner_factory = runner  # type: ignore[assignment]
        else:
            self._runner = runner  # type: ignore[assignment]
        self._runner_lock = threading.Lock()

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        runner: Runner | None = None,
        audit: bool | AuditSink = True,
        progress: bool = False,
    ) -> "Guard":
        """Restore a fitted guard written by ``eco-guard fit`` (see :mod:`eco_guard.artifact`)."""
        parts = read_guard(Path(directory), runner=runner, audit=audit, progress=progress)
        return cls(**vars(parts))

    @property
    def runner(self) -> Runner:
        """The local model, loaded on first use: ``check`` alone never pays for it."""
        if self._runner is None:
            with self._runner_lock:
                if self._runner is None:
                    if self._runner_factory is None:
                        raise EcoGuardError("this guard has no runner; pass runner= to Guard")
                    self._runner = self._runner_factory()
        return self._runner

    @property
    def target_ids(self) -> list[str]:
        return list(self.classifier.target_ids)

    def rule(self, target_id: str) -> TargetRule:
        return self._rules_by_id[target_id]

    # ------------------------------------------------------------------ deciding

    def _request_seed(self, messages: Sequence[dict[str, str]]) -> int:
        """Per-request corruption seed: fixed by the guard seed and the prompt, so the
        same prompt always gets the same answer, while different prompts get
        independent noise."""
        digest = hashlib.sha256(f"{self.seed}|{prompt_hash(messages)}".encode()).digest()
        return int.from_bytes(digest[:4], "little")

    def decide_batch(self, chats: Sequence[list[dict[str, str]]]) -> list[Decision]:
        """Decide for already-normalised chats, without auditing or generating.

        The building block for callers that batch generation themselves (the server's
        micro-batcher); they must write the audit record themselves.
        """
        decisions = self._decide_groups(chats, [classification_texts(m, self.canonical) for m in chats], time.perf_counter())
        if self.languages is None:
            return decisions
        return [self._with_language(chat, d) for chat, d in zip(chats, decisions)]

    def _with_language(self, chat: Sequence[dict[str, str]], decision: Decision) -> Decision:
        """Record the prompt's language; a prompt the classifier passed in an uncalibrated language gets the policy's action.

        The target is the highest-scoring one (its refusal text or corruption applies).
        """
        assert self.languages is not None
        language, foreign = self.languages.judge(_user_turns(chat)[-1])
        if not foreign or decision.flagged or self.languages.other == "pass" or not decision.scores:
            return replace(decision, language=language)
        target = max(decision.scores, key=lambda t: decision.scores[t])
        return replace(self.escalate(chat, decision, target, "input", action=self.languages.other), language=language)

    def escalate(
        self,
        chat: Sequence[dict[str, str]],
        decision: Decision,
        target: str,
        stage: Literal["input", "output"],
        *,
        action: Literal["corrupt", "refuse", "flag"] | None = None,
    ) -> Decision:
        """``decision`` turned into a flag of ``target`` by a later check (the language
        policy, the output stage): the target's action (or ``action``) with the request's
        own seeded corruption, so it is answered exactly as an input-flagged prompt is."""
        rule = self._rules_by_id[target]
        act = action or rule.action
        corrupts = act == "corrupt"
        return replace(
            decision,
            flagged=True,
            action=act,
            target=target,
            stage=stage,
            corruption=rule.corruption.with_seed(self._request_seed(chat)) if corrupts else None,
            scope=rule.mask.scope if corrupts else None,
        )

    def _decide_groups(
        self, chats: Sequence[list[dict[str, str]]], groups: Sequence[list[str]], start: float
    ) -> list[Decision]:
        """Decide each chat by the per-target maximum over its group of texts.

        Shared by conversations (last turn's pieces + joined turns) and documents (their
        pieces), so both get one batched encoder pass and the same error handling.
        """
        flat = [t for g in groups for t in g]
        error: str | None = None
        try:
            all_scores = self.classifier.score(flat)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - any classifier failure follows on_error
            error = f"classifier failed: {type(exc).__name__}: {exc}"
            all_scores = None
        per_row_ms = (time.perf_counter() - start) * 1000.0 / max(len(chats), 1)
        if all_scores is None:
            return [self._error_decision(chat, error or "classifier failed", per_row_ms) for chat in chats]
        decisions: list[Decision] = []
        for chat, row in zip(chats, max_over_pieces(all_scores, [len(g) for g in groups])):
            verdict = self.classifier.decide(row[None, :])[0]
            scores = {t: round(float(s), 6) for t, s in zip(self.classifier.target_ids, row)}
            decisions.append(self._make_decision(chat, verdict.target_id, verdict.score, verdict.threshold, scores, per_row_ms))
        return decisions

    def _make_decision(
        self,
        chat: Sequence[dict[str, str]],
        target: str | None,
        score: float,
        threshold: float,
        scores: dict[str, float],
        latency_ms: float,
        error: str | None = None,
    ) -> Decision:
        rule = self._rules_by_id[target] if target is not None else None
        corrupts = rule is not None and rule.action == "corrupt"
        return Decision(
            request_id=uuid.uuid4().hex,
            flagged=rule is not None,
            action=rule.action if rule is not None else "pass",
            target=target,
            score=float(score),
            threshold=float(threshold),
            latency_ms=round(latency_ms, 3),
            scores=scores,
            corruption=rule.corruption.with_seed(self._request_seed(chat)) if corrupts else None,
            scope=rule.mask.scope if corrupts else None,
            error=error,
            stage="input" if rule is not None else None,
        )

    def _error_decision(self, chat: Sequence[dict[str, str]], error: str, latency_ms: float) -> Decision:
        """``fail_closed`` treats the request as flagged by the policy's first target;
        ``fail_open`` lets it pass. Either way the error is recorded."""
        if self.on_error == "fail_open":
            return self._make_decision(chat, None, float("nan"), float("nan"), {}, latency_ms, error)
        first = self.rules[0].id
        return self._make_decision(chat, first, float("nan"), float("nan"), {}, latency_ms, error)

    def check(self, prompt: Prompt) -> Decision:
        """Classify one prompt (a string or a chat) without generating; audited."""
        chat = normalize_messages(prompt)
        decision = self.decide_batch([chat])[0]
        self.audit.record(decision, chat, kind="check")
        return decision

    def check_batch(self, prompts: Sequence[Prompt], *, audit: bool = True) -> list[Decision]:
        """Classify many prompts with one batched encoder pass."""
        chats = [normalize_messages(p, where=f"prompts[{i}]") for i, p in enumerate(prompts)]
        if not chats:
            return []
        decisions = self.decide_batch(chats)
        if audit:
            for d, c in zip(decisions, chats):
                self.audit.record(d, c, kind="check")
        return decisions

    async def acheck(self, prompt: Prompt) -> Decision:
        """Async twin of :meth:`check`."""
        return await asyncio.to_thread(self.check, prompt)

    async def acheck_batch(self, prompts: Sequence[Prompt], *, audit: bool = True) -> list[Decision]:
        """Async twin of :meth:`check_batch`."""
        return await asyncio.to_thread(self.check_batch, prompts, audit=audit)

    def check_documents(self, docs: Sequence[str]) -> list[Decision]:
        """Score retrieved passages so that RAG context about a forget target can be dropped.

        A passage is judged by its highest-scoring piece, as a prompt is (itself, each
        sentence and each window of three, see :func:`eco_guard.classifier.pieces.text_pieces`):
        one sentence about a forget target inside a long, otherwise harmless passage is
        enough to flag it.
        Every passage gets a decision (blank ones pass) and an audit record of kind
        ``document``; the thresholds are the same as for prompts.
        """
        if isinstance(docs, str) or not isinstance(docs, Sequence):
            raise InputError("check_documents() takes a sequence of strings, not a single string")
        for i, doc in enumerate(docs):
            if not isinstance(doc, str):
                raise InputError(f"docs[{i}]: expected a string; got {type(doc).__name__}")
        if not docs:
            return []
        start = time.perf_counter()
        chats = [[{"role": "user", "content": doc}] for doc in docs]
        decisions = self._decide_groups(chats, [scored_pieces(doc, self.canonical) for doc in docs], start)
        for d, c in zip(decisions, chats):
            self.audit.record(d, c, kind="document")
        return decisions

    async def acheck_documents(self, docs: Sequence[str]) -> list[Decision]:
        """Async twin of :meth:`check_documents`."""
        return await asyncio.to_thread(self.check_documents, docs)

    # ------------------------------------------------------------------ answering

    def route(self, decision: Decision) -> Route:
        """How a decided request is answered: plainly, corrupted as the decision records,
        or refused (then nothing is generated)."""
        if decision.target is None or decision.action in ("pass", "flag"):
            return PLAIN
        rule = self._rules_by_id[decision.target]
        if decision.action == "refuse":
            return Route(refusal=rule.refusal)
        return Route(corruption=decision.corruption, mask=rule.mask)

    def invoke(self, prompt: Prompt, options: GenerationOptions = GenerationOptions()) -> GuardedResult:
        """Answer one prompt through the guard."""
        return self.batch([prompt], options)[0]

    def batch(self, prompts: Sequence[Prompt], options: GenerationOptions = GenerationOptions()) -> list[GuardedResult]:
        """Answer many prompts: one classifier pass, then one batched generate in which
        each row carries its own corruption (or none)."""
        chats = [normalize_messages(p, where=f"prompts[{i}]") for i, p in enumerate(prompts)]
        if not chats:
            return []
        decisions = self.decide_batch(chats)
        answers = self.answer_routed(chats, [self.route(d) for d in decisions], options)
        decisions, final = screen(self, chats, decisions, [a.text for a in answers], options)
        results = [GuardedResult(t, d) for t, d in zip(final, decisions)]
        for r, c in zip(results, chats):
            self.audit.record(r.decision, c, kind="generate")
        return results

    async def ainvoke(self, prompt: Prompt, options: GenerationOptions = GenerationOptions()) -> GuardedResult:
        """Async twin of :meth:`invoke`."""
        return await asyncio.to_thread(self.invoke, prompt, options)

    async def abatch(
        self, prompts: Sequence[Prompt], options: GenerationOptions = GenerationOptions()
    ) -> list[GuardedResult]:
        """Async twin of :meth:`batch`."""
        return await asyncio.to_thread(self.batch, prompts, options)

    def answer_routed(
        self, chats: Sequence[Messages], routes: Sequence[Route], options: GenerationOptions | Sequence[GenerationOptions]
    ) -> list[DecidedAnswer]:
        """Each chat's answer by its route, the one place the local model is asked to answer.

        Refusals come back as they are (uncounted); the rest run as batched generates, one
        per distinct options, each row carrying its own corruption (or none). Options are
        one for all rows, or one per row (the server batches requests with their own).
        """
        n = len(chats)
        per_row = [options] * n if isinstance(options, GenerationOptions) else list(options)
        if len(routes) != n or len(per_row) != n:
            raise ValueError(f"{n} chats, {len(routes)} routes and {len(per_row)} options")
        out: dict[int, DecidedAnswer] = {i: DecidedAnswer(r.refusal, None) for i, r in enumerate(routes) if r.refusal is not None}
        groups: dict[GenerationOptions, list[int]] = {}
        for i, route in enumerate(routes):
            if route.generates:
                groups.setdefault(per_row[i], []).append(i)
        for group_options, rows in groups.items():
            answers = self.runner.generate_counted([routes[i].row(chats[i]) for i in rows], group_options)
            out.update(zip(rows, (DecidedAnswer(text, k) for text, k in answers)))
        return [out[i] for i in range(n)]

    def answer_unguarded(self, prompts: Sequence[Prompt], options: GenerationOptions = GenerationOptions()) -> list[str]:
        """The local model's own answers, nothing classified, corrupted or audited: the
        reference a guarded answer is compared with (``eval``, the demo, ``--no-guard``)."""
        chats = [normalize_messages(p, where=f"prompts[{i}]") for i, p in enumerate(prompts)]
        return [a.text for a in self.answer_routed(chats, [PLAIN] * len(chats), options)]

    def answer_decided(self, chat: Messages, decision: Decision, options: GenerationOptions = GenerationOptions()) -> str:
        """Answer a request that is already decided (and audited by the caller): the
        refusal text, or the local model's answer with the decision's corruption (none
        for a pass). For callers that classify separately, like the LangChain router."""
        return self.answer_decided_result(chat, decision, options).text

    def answer_decided_result(
        self, chat: Messages, decision: Decision, options: GenerationOptions = GenerationOptions()
    ) -> GuardedResult:
        """:meth:`answer_decided` with the final decision (the output stage may have caught the answer)."""
        route = self.route(decision)
        if route.refusal is not None:
            return GuardedResult(route.refusal, decision)
        chat = normalize_messages(chat)
        answer = self.answer_routed([chat], [route], options)[0].text
        return self._screen(chat, decision, answer, options)

    def screen_answer(
        self, chat: Messages, decision: Decision, answer: str, options: GenerationOptions = GenerationOptions()
    ) -> GuardedResult:
        """Check an answer given to a decided request (by any model); replace it if it reveals a target.

        For callers whose answers come from elsewhere (a chain's downstream model): the
        result's decision says whether the output stage caught it; auditing a caught answer
        (kind ``output``) is done here.
        """
        return self._screen(normalize_messages(chat), decision, answer, options)

    def _screen(self, chat: list[dict[str, str]], decision: Decision, answer: str, options: GenerationOptions) -> GuardedResult:
        """:meth:`screen_answer` for a chat already normalised, so each request is normalised once."""
        decisions, texts = screen(self, [chat], [decision], [answer], options)
        if decisions[0].stage == "output":
            self.audit.record(decisions[0], chat, kind="output")
        return GuardedResult(texts[0], decisions[0])

    async def ascreen_answer(
        self, chat: Messages, decision: Decision, answer: str, options: GenerationOptions = GenerationOptions()
    ) -> GuardedResult:
        """Async twin of :meth:`screen_answer`."""
        return await asyncio.to_thread(self.screen_answer, chat, decision, answer, options)

    def screen_stream(
        self, chat: Messages, decision: Decision, pieces: Iterator[str], options: GenerationOptions = GenerationOptions()
    ) -> Iterator[str]:
        """Stream ``pieces`` (from any model) sentence by sentence, each only once it has passed the output stage."""
        return screen_stream(self, chat, decision, pieces, options)

    def ascreen_stream(
        self, chat: Messages, decision: Decision, pieces: AsyncIterator[str], options: GenerationOptions = GenerationOptions()
    ) -> AsyncIterator[str]:
        """Async twin of :meth:`screen_stream`."""
        return ascreen_stream(self, chat, decision, pieces, options)

    def choice_scores(
        self, prompt: Prompt, choices: Sequence[str], decision: Decision | None = None, *, reduction: Literal["sum", "mean"] = "sum"
    ) -> list[float] | None:
        """Log-likelihood of each candidate answer to ``prompt``, the prompt routed as
        ``decision`` says (corrupted for ``corrupt``; no decision: the bare model).

        ``None`` when the decision refuses: the guard would give no answer to choose.
        Multiple-choice evaluation measures the guard's effect with it.
        """
        route = PLAIN if decision is None else self.route(decision)
        if not route.generates:
            return None
        return self.runner.score_choices(route.row(normalize_messages(prompt)), list(choices), reduction=reduction)

    def answer_decided_batch(
        self,
        chats: Sequence[Messages],
        decisions: Sequence[Decision],
        options: GenerationOptions | Sequence[GenerationOptions] = GenerationOptions(),
    ) -> list[DecidedAnswer]:
        """Batched twin of :meth:`answer_decided_result`, each row with its own decision and options.

        For callers that batch requests themselves (the HTTP server's micro-batcher, a Ray
        Serve replica), which audit the decisions themselves: rows sharing options run as
        one batched generate, refusals never reach the model, and every answer passes the
        output stage (a caught one is audited here, kind ``output``, and its final decision
        comes back on the answer). Token counts are the runner's own, not re-tokenised.
        """
        if len(decisions) != len(chats):
            raise ValueError(f"{len(chats)} chats but {len(decisions)} decisions")
        chats = [normalize_messages(c) for c in chats]
        per_row = [options] * len(chats) if isinstance(options, GenerationOptions) else list(options)
        answers = self.answer_routed(chats, [self.route(d) for d in decisions], per_row)
        final, texts = screen(self, chats, decisions, [a.text for a in answers], per_row)
        out: list[DecidedAnswer] = []
        for chat, before, after, answer, text in zip(chats, decisions, final, answers, texts):
            if after.stage == "output" and before.stage != "output":
                self.audit.record(after, chat, kind="output")
            same = text == answer.text and answer.completion_tokens is not None
            out.append(DecidedAnswer(text, answer.completion_tokens if same else self.count_tokens(text), after))
        return out

    async def aanswer_decided_batch(
        self,
        chats: Sequence[Messages],
        decisions: Sequence[Decision],
        options: GenerationOptions | Sequence[GenerationOptions] = GenerationOptions(),
    ) -> list[DecidedAnswer]:
        """Async twin of :meth:`answer_decided_batch` (the model runs in a worker thread)."""
        return await asyncio.to_thread(self.answer_decided_batch, chats, decisions, options)

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` by the runner's tokenizer (usage figures for refusals and replaced answers)."""
        return self.runner.count_tokens(text)

    def prompt_tokens(self, chat: Messages, options: GenerationOptions = GenerationOptions()) -> int:
        """Templated prompt tokens of ``chat``; raises :class:`InputError` when the prompt and
        ``options.max_new_tokens`` together exceed the model's context. Lets a server refuse
        a request before it is decided, audited or batched."""
        n = self.runner.prompt_tokens(normalize_messages(chat))
        limit = self.runner.max_context
        if n + options.max_new_tokens > limit:
            raise InputError(
                f"messages: the prompt is {n} tokens and {options.max_new_tokens} new tokens were asked for, "
                f"but the model's context is {limit} tokens; shorten the prompt or lower max_tokens"
            )
        return n

    def stream_decided(
        self, chat: Messages, decision: Decision, options: GenerationOptions = GenerationOptions()
    ) -> Iterator[str]:
        """Streaming twin of :meth:`answer_decided`."""
        route = self.route(decision)
        if route.refusal is not None:
            return iter([route.refusal])
        return screen_stream(self, chat, decision, iter(self.runner.stream(route.row(chat), options)), options)

    async def astream_decided(
        self, chat: Messages, decision: Decision, options: GenerationOptions = GenerationOptions()
    ) -> AsyncIterator[str]:
        """Async twin of :meth:`stream_decided`; loading the model (first use) happens off the loop."""
        route = self.route(decision)
        if route.refusal is not None:
            yield route.refusal
            return
        runner = await asyncio.to_thread(lambda: self.runner)
        async for piece in ascreen_stream(self, chat, decision, runner.astream(route.row(chat), options), options):
            yield piece

    def stream(self, prompt: Prompt, options: GenerationOptions = GenerationOptions()) -> GuardedStream:
        """Stream one guarded answer; the audit line is written once the decision is made."""
        chat = normalize_messages(prompt)
        decision = self.decide_batch([chat])[0]
        self.audit.record(decision, chat, kind="stream")
        return GuardedStream(decision, self.stream_decided(chat, decision, options))

    async def astream(self, prompt: Prompt, options: GenerationOptions = GenerationOptions()) -> AsyncGuardedStream:
        """Async twin of :meth:`stream`."""
        chat = normalize_messages(prompt)
        decision = (await asyncio.to_thread(self.decide_batch, [chat]))[0]
        self.audit.record(decision, chat, kind="stream")
        return AsyncGuardedStream(decision, self.astream_decided(chat, decision, options))

    def close(self) -> None:
        """Close the audit sink."""
        self.audit.close()
