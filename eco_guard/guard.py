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

import numpy as np

from .audit import AuditSink, NullAudit, prompt_hash
from .classifier import Classifier
from .canonical import Canonicalizer, scored_pieces
from .output.stage import AnswerCheck, ascreen_stream, screen, screen_stream
from .corruption import Corruption
from .decision import Decision, GuardedResult
from .errors import EcoGuardError, InputError, UserError
from .language import LanguagePolicy
from .runner.base import GenerationOptions, MaskSpec, Messages, Runner, normalize_messages

Prompt = str | Messages


@dataclass(frozen=True)
class TargetRule:
    """What to do when a target is flagged, with its fitted corruption."""

    id: str
    action: Literal["corrupt", "refuse", "flag"]
    corruption: Corruption
    mask: MaskSpec
    refusal: str


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
    :func:`eco_guard.classifier.chunking.text_pieces`), so a forget question padded with
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
        from .artifact import load_guard

        return load_guard(Path(directory), runner=runner, audit=audit, progress=progress)

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
        rule = self._rules_by_id[target]
        action = self.languages.other
        corruption = None
        if action == "corrupt":
            corruption = {**rule.corruption.with_seed(self._request_seed(chat)).to_dict(), "scope": rule.mask.scope}
        return replace(decision, flagged=True, action=action, target=target, stage="input", corruption=corruption, language=language)

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
        decisions: list[Decision] = []
        offset = 0
        for chat, group in zip(chats, groups):
            if all_scores is None:
                decisions.append(self._error_decision(chat, error or "classifier failed", per_row_ms))
                continue
            row = np.max(all_scores[offset : offset + len(group)], axis=0)
            offset += len(group)
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
        corruption = None
        if rule is not None and rule.action == "corrupt":
            corruption = {**rule.corruption.with_seed(self._request_seed(chat)).to_dict(), "scope": rule.mask.scope}
        return Decision(
            request_id=uuid.uuid4().hex,
            flagged=rule is not None,
            action=rule.action if rule is not None else "pass",
            target=target,
            score=float(score),
            threshold=float(threshold),
            latency_ms=round(latency_ms, 3),
            scores=scores,
            corruption=corruption,
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
        sentence and each window of three, see :func:`eco_guard.classifier.chunking.text_pieces`):
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

    def route(self, decision: Decision) -> tuple[Corruption | None, MaskSpec, str | None]:
        """(corruption, mask, refusal text) for a decision; a refusal text means: don't generate."""
        if decision.target is None or decision.action in ("pass", "flag"):
            return None, MaskSpec(), None
        rule = self._rules_by_id[decision.target]
        if decision.action == "refuse":
            return None, MaskSpec(), rule.refusal
        assert decision.corruption is not None
        return rule.corruption.with_seed(int(decision.corruption["seed"])), rule.mask, None

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
        routes = [self.route(d) for d in decisions]
        todo = [i for i, r in enumerate(routes) if r[2] is None]
        texts: dict[int, str] = {i: r[2] for i, r in enumerate(routes) if r[2] is not None}
        if todo:
            answers = self.runner.generate(
                [chats[i] for i in todo],
                [routes[i][0] for i in todo],
                [routes[i][1] for i in todo],
                options,
            )
            texts.update(zip(todo, answers))
        decisions, final = screen(self, chats, decisions, [texts[i] for i in range(len(chats))], options)
        results = [GuardedResult(final[i], d) for i, d in enumerate(decisions)]
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

    def answer_decided(self, chat: Messages, decision: Decision, options: GenerationOptions = GenerationOptions()) -> str:
        """Answer a request that is already decided (and audited by the caller): the
        refusal text, or the local model's answer with the decision's corruption (none
        for a pass). For callers that classify separately, like the LangChain router."""
        return self.answer_decided_result(chat, decision, options).text

    def answer_decided_result(
        self, chat: Messages, decision: Decision, options: GenerationOptions = GenerationOptions()
    ) -> GuardedResult:
        """:meth:`answer_decided` with the final decision (the output stage may have caught the answer)."""
        corruption, mask, refusal = self.route(decision)
        if refusal is not None:
            return GuardedResult(refusal, decision)
        answer = self.runner.generate([chat], [corruption], [mask], options)[0]
        return self.screen_answer(chat, decision, answer, options)

    def screen_answer(
        self, chat: Messages, decision: Decision, answer: str, options: GenerationOptions = GenerationOptions()
    ) -> GuardedResult:
        """Check an answer given to a decided request (by any model); replace it if it reveals a target.

        For callers whose answers come from elsewhere (a chain's downstream model): the
        result's decision says whether the output stage caught it; auditing a caught answer
        (kind ``output``) is done here.
        """
        decisions, texts = screen(self, [normalize_messages(chat)], [decision], [answer], options)
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

    def stream_decided(
        self, chat: Messages, decision: Decision, options: GenerationOptions = GenerationOptions()
    ) -> Iterator[str]:
        """Streaming twin of :meth:`answer_decided`."""
        corruption, mask, refusal = self.route(decision)
        if refusal is not None:
            return iter([refusal])
        return screen_stream(self, chat, decision, iter(self.runner.stream(chat, corruption, mask, options)), options)

    async def astream_decided(
        self, chat: Messages, decision: Decision, options: GenerationOptions = GenerationOptions()
    ) -> AsyncIterator[str]:
        """Async twin of :meth:`stream_decided`; loading the model (first use) happens off the loop."""
        corruption, mask, refusal = self.route(decision)
        if refusal is not None:
            yield refusal
            return
        runner = await asyncio.to_thread(lambda: self.runner)
        async for piece in ascreen_stream(self, chat, decision, runner.astream(chat, corruption, mask, options), options):
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
