"""Everything a runner does that does not depend on what serves the model.

:class:`EmbeddingRunner` implements the :class:`~eco_guard.runner.base.Runner` protocol
on top of four backend methods: :meth:`~EmbeddingRunner.embed` (token ids to the
embeddings the model consumes), :meth:`~EmbeddingRunner.generate_embeds` and
:meth:`~EmbeddingRunner.stream_embeds` (decoding from ``inputs_embeds``), and
:meth:`~EmbeddingRunner.logits` (one forward pass, for scoring choices), and optionally
:meth:`~EmbeddingRunner.prefill` (a KV state of positions a scoring batch shares). Templating,
masking, building and corrupting the rows, the loop guard's row list, length checks,
stop strings, text streaming and the async twins are all here, so a GPU backend fed
with ``prompt_embeds`` adds only those four.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..errors import InputError
from .base import GenerationOptions, GenerationRow, MaskSpec, Messages
from .embedding_rows import batch_rows, corrupted_row, table_stats
from .masking import PreparedPrompt, prepare_prompt
from .streaming import TextDeltas
from .templating import ChatFormat

#: a stream's events: ("tokens", ids), ("end", None) or ("error", exception)
Emit = Callable[[tuple[str, Any]], None]


#: shared leading positions below this are run with every row (a prefill costs a pass of its own)
MIN_SHARED_PREFIX = 8


def _shared_prefix(prompts: Sequence[PreparedPrompt], rows: Sequence[GenerationRow]) -> int:
    """Leading positions every row has alike: same token, never corrupted (a system header).

    At most the shortest prompt's length less one, so every row keeps the position that
    predicts its reply's first token.
    """
    limit = min(len(p.input_ids) for p in prompts) - 1
    ids0 = prompts[0].input_ids
    n = 0
    while n < limit and all(
        p.input_ids[n] == ids0[n] and not (r.corruption is not None and p.mask[n]) for p, r in zip(prompts, rows)
    ):
        n += 1
    return n


@dataclass(frozen=True)
class ContinuationScores:
    """Teacher-forced scores of a reply's tokens (:meth:`EmbeddingRunner.score_continuations`)."""

    logprobs: tuple[float, ...]  # log-prob of each token given the prompt and the tokens before it
    greedy: tuple[bool, ...]  # whether each token is the argmax there: greedy decoding would emit it


@dataclass(frozen=True)
class EmbeddedBatch:
    """What a backend decodes from: left-padded rows, their attention mask, and which rows
    carry a corruption (those decode under the loop guard, ``loop_guard.py``)."""

    embeds: torch.Tensor
    attention: torch.Tensor
    corrupted_rows: tuple[int, ...]


class EmbeddingRunner(ABC):
    """The shared part of every runner; subclasses add the four backend methods."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        name: str,
        max_context: int,
        device: torch.device,
        pad_id: int,
        eos_ids: Sequence[int],
        vocab_size: int,
    ) -> None:
        self.tokenizer = tokenizer
        self.chat_format = ChatFormat.for_tokenizer(tokenizer)
        self.name = name
        self.max_context = max_context
        self.device = device
        self.pad_id = pad_id
        self.eos_ids = list(eos_ids)
        self.vocab_size = vocab_size
        self._embedding_stats: tuple[float, int] | None = None  # a property of the model, computed once

    # ------------------------------------------------------------------ backend

    @abstractmethod
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``[1, n]`` to the embeddings the model consumes ``[1, n, hidden]`` (any scale applied)."""

    @abstractmethod
    def generate_embeds(self, batch: EmbeddedBatch, options: GenerationOptions) -> list[list[int]]:
        """Decode every row of ``batch``; the new token ids of each row (EOS may be included)."""

    @abstractmethod
    def stream_embeds(
        self, batch: EmbeddedBatch, options: GenerationOptions, emit_ids: Callable[[list[int]], None], stop: threading.Event
    ) -> None:
        """Decode the one row of ``batch``, passing new token ids to ``emit_ids`` as they come;
        return early once ``stop`` is set. Runs in a worker thread."""

    @abstractmethod
    def logits(
        self, embeds: torch.Tensor, attention: torch.Tensor | None, keep: int = 0, past: object | None = None
    ) -> torch.Tensor:
        """One forward pass: next-token logits ``[batch, n, vocab]`` for each position.

        ``keep > 0``: only the last ``keep`` positions' logits (``[batch, keep, vocab]``).
        Scoring a reply needs only the reply's positions, and the vocabulary projection of
        the prompt's is a fifth of a small model's forward pass (plus a logits tensor of
        batch x width x vocab floats), all of it thrown away.

        ``past``: a :meth:`prefill` state of positions every row shares; ``embeds`` are then
        the positions after them and ``attention`` covers both.
        """

    def prefill(self, embeds: torch.Tensor) -> object | None:
        """The model's state after ``embeds`` ``[1, n, hidden]``, for :meth:`logits` to go on from.

        Scoring many replies to one prompt (fluency, multiple choice), or many prompts
        behind one system header, then computes the shared positions once instead of once
        per row. None (this default) means the backend cannot, and callers run every position.
        """
        return None

    # ------------------------------------------------------------------ preparation

    def prepare(self, messages: Messages, mask_spec: MaskSpec = MaskSpec()) -> PreparedPrompt:
        """Template ``messages`` and mark the tokens a corruption may touch (``masking.py``)."""
        return prepare_prompt(self.chat_format, messages, mask_spec)

    def embedding_stats(self) -> tuple[float, int]:
        """Std and width of the embeddings the model consumes: where ``strength: auto`` starts.

        It reads the whole consumed table (Gemma's is 262k x 640), so it is computed once;
        two threads asking at once both compute the same value, which is harmless.
        """
        if self._embedding_stats is None:
            self._embedding_stats = table_stats(self.embed, self.vocab_size, self.device)
        return self._embedding_stats

    def _check_length(self, n_prompt: int, max_new_tokens: int, where: str) -> None:
        if n_prompt + max_new_tokens > self.max_context:
            raise InputError(
                f"{where}: the prompt is {n_prompt} tokens and {max_new_tokens} new tokens were asked for, "
                f"but the model's context is {self.max_context} tokens; shorten the prompt or lower max_new_tokens"
            )

    def _batch(self, rows: Sequence[GenerationRow], options: GenerationOptions, where: str) -> EmbeddedBatch:
        prompts = [self.prepare(r.messages, r.mask) for r in rows]
        for i, p in enumerate(prompts):
            self._check_length(len(p.input_ids), options.max_new_tokens, where.format(i=i))
        embeds, attention = batch_rows(self.embed, prompts, [r.corruption for r in rows], self.pad_id, self.device)
        corrupted = tuple(i for i, r in enumerate(rows) if r.corruption is not None)
        return EmbeddedBatch(embeds, attention, corrupted)

    def _answer_ids(self, ids: Sequence[int]) -> list[int]:
        """New ids up to EOS, and (plain-format models) up to the token that completes a stop string."""
        out: list[int] = []
        for t in ids:
            if t in self.eos_ids:
                break
            out.append(int(t))
        if self.chat_format.stops:
            for k in range(1, len(out) + 1):
                if self.chat_format.cut(self.tokenizer.decode(out[:k], skip_special_tokens=True))[1]:
                    return out[: k - 1]
        return out

    def _text(self, ids: Sequence[int]) -> str:
        return self.chat_format.cut(self.tokenizer.decode(list(ids), skip_special_tokens=True))[0]

    # ------------------------------------------------------------------ public API

    def generate(self, rows: Sequence[GenerationRow], options: GenerationOptions = GenerationOptions()) -> list[str]:
        """Answer a batch; each row is corrupted with its own corruption (or not)."""
        return [self._text(ids) for ids in self._raw_ids(rows, options)]

    def generate_ids(self, rows: Sequence[GenerationRow], options: GenerationOptions = GenerationOptions()) -> list[list[int]]:
        """Like :meth:`generate` but the new token ids of each row, cut at EOS (and stop strings)."""
        return [self._answer_ids(ids) for ids in self._raw_ids(rows, options)]

    def generate_counted(
        self, rows: Sequence[GenerationRow], options: GenerationOptions = GenerationOptions()
    ) -> list[tuple[str, int]]:
        """:meth:`generate` with each answer's count of new tokens, from one decode."""
        return [(self._text(ids), len(self._answer_ids(ids))) for ids in self._raw_ids(rows, options)]

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` alone (no special tokens), by the model's tokenizer."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_tokens(self, messages: Messages) -> int:
        """Tokens of ``messages`` once templated."""
        return len(self.prepare(messages).input_ids)

    def _raw_ids(self, rows: Sequence[GenerationRow], options: GenerationOptions) -> list[list[int]]:
        if len(rows) == 0:
            return []
        return self.generate_embeds(self._batch(rows, options, "rows[{i}].messages"), options)

    def stream(self, row: GenerationRow, options: GenerationOptions = GenerationOptions()) -> Iterator[str]:
        """Yield the answer in text pieces as tokens are produced.

        Generation runs in a worker thread; closing the iterator early stops it at the
        next token instead of letting it run to ``max_new_tokens`` in the background.
        """
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        stop, worker = self._start_stream(row, options, events.put)
        deltas = TextDeltas(self.chat_format, self.eos_ids)
        try:
            while not deltas.done:
                yield from deltas.feed(*events.get())
        finally:
            # Stop at the next token and wait, so no generation outlives its consumer
            # (an interpreter exiting under a running torch thread aborts).
            stop.set()
            worker.join()

    def _start_stream(self, row: GenerationRow, options: GenerationOptions, emit: Emit) -> tuple[threading.Event, threading.Thread]:
        batch = self._batch([row], options, "messages")
        stop = threading.Event()

        def work() -> None:
            try:
                self.stream_embeds(batch, options, lambda ids: emit(("tokens", ids)), stop)
                emit(("end", None))
            except BaseException as exc:  # surfaced to the consumer, never lost in a thread
                emit(("error", exc))

        worker = threading.Thread(target=work, name="eco-guard-stream", daemon=True)
        worker.start()
        return stop, worker

    def score_choices(
        self, row: GenerationRow, choices: Sequence[str], reduction: Literal["sum", "mean"] = "sum"
    ) -> list[float]:
        """Log-likelihood of each choice as the assistant's reply to ``row.messages``.

        The prompt part is corrupted exactly as in generation; the choice tokens never are,
        since they stand for the model's own answer.
        """
        if not choices:
            raise InputError("choices: at least one choice is required")
        prompt = self.prepare(row.messages, row.mask)
        choice_ids = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
        for i, ids in enumerate(choice_ids):
            if not ids:
                raise InputError(f"choices[{i}]: empty choice")
            self._check_length(len(prompt.input_ids), len(ids), f"choices[{i}]")
        n_prompt = len(prompt.input_ids)
        with torch.inference_mode():
            p_emb = corrupted_row(self.embed, prompt, row.corruption, self.device)
            if all(len(ids) == 1 for ids in choice_ids):
                # One-token choices (multiple-choice letters): the prompt's last position
                # predicts them all, so one forward pass replaces one per choice.
                last = torch.log_softmax(self.logits(p_emb, None, keep=1)[0, -1].float(), dim=-1)
                return [float(last[ids[0]]) for ids in choice_ids]
            width = max(len(ids) for ids in choice_ids)
            # every choice follows the same (corrupted) prompt: its positions but the last run once
            past = self.prefill(p_emb[:, :-1]) if n_prompt > 1 else None
            head = p_emb[0] if past is None else p_emb[0, -1:]
            rows, masks = [], []
            for ids in choice_ids:
                padded = ids + [self.pad_id] * (width - len(ids))
                c_emb = self.embed(torch.tensor([padded], device=self.device))
                rows.append(torch.cat([head, c_emb[0]], dim=0))
                am = torch.zeros(n_prompt + width, dtype=torch.long, device=self.device)
                am[: n_prompt + len(ids)] = 1
                masks.append(am)
            keep = width + 1  # the prompt's last position predicts each choice's first token
            logp = torch.log_softmax(self.logits(torch.stack(rows), torch.stack(masks), keep=keep, past=past).float(), dim=-1)
            scores: list[float] = []
            for b, ids in enumerate(choice_ids):
                positions = torch.arange(0, len(ids), device=self.device)
                token_lp = logp[b, positions, torch.tensor(ids, device=self.device)]
                total = float(token_lp.sum())
                scores.append(total / len(ids) if reduction == "mean" else total)
        return scores

    def score_continuations(
        self, rows: Sequence[GenerationRow], continuations: Sequence[Sequence[int]]
    ) -> list[ContinuationScores]:
        """Teacher-forced scores of each row's ``continuations[i]`` (token ids) as the reply to its chat.

        One forward pass for the whole batch, where generating the same tokens takes one
        pass per token: the strength search (``optimize.py``) scores many strengths this
        way and generates only to confirm the one it picks. The prompt is corrupted
        exactly as in :meth:`generate` (same per-row noise); the continuation never is,
        since it stands for the model's own answer. Rows are right-padded, so every real
        token keeps the position it has in an unpadded forward pass.
        """
        n = len(rows)
        if n == 0:
            return []
        if len(continuations) != n:
            raise ValueError(f"continuations: got {len(continuations)} entries for a batch of {n}")
        prompts = [self.prepare(r.messages, r.mask) for r in rows]
        conts = [list(c) for c in continuations]
        for i, (p, c) in enumerate(zip(prompts, conts)):
            if not c:
                raise InputError(f"continuations[{i}]: empty continuation")
            self._check_length(len(p.input_ids), len(c), f"rows[{i}]")
        width = max(len(p.input_ids) + len(c) for p, c in zip(prompts, conts))
        out: list[ContinuationScores] = []
        with torch.inference_mode():
            pad_vec = self.embed(torch.tensor([[self.pad_id]], device=self.device))[0]
            full = [corrupted_row(self.embed, p, r.corruption, self.device) for p, r in zip(prompts, rows)]
            shared = _shared_prefix(prompts, rows)
            past = self.prefill(full[0][:, :shared]) if shared >= MIN_SHARED_PREFIX else None
            skip = shared if past is not None else 0
            embeds, masks = [], []
            for p, c, p_emb in zip(prompts, conts, full):
                c_emb = self.embed(torch.tensor([c], device=self.device))
                used = len(p.input_ids) + len(c)
                embeds.append(torch.cat([p_emb[0, skip:], c_emb[0], pad_vec.expand(width - used, -1)], dim=0))
                am = torch.zeros(width, dtype=torch.long, device=self.device)
                am[:used] = 1
                masks.append(am)
            # right-padded: the positions from the shortest prompt's last token on hold every reply
            first = min(len(p.input_ids) for p in prompts) - 1
            logits = self.logits(torch.stack(embeds), torch.stack(masks), keep=width - first, past=past)
            for b, (p, c) in enumerate(zip(prompts, conts)):
                start = len(p.input_ids) - 1 - first
                step = logits[b, start : start + len(c)].float()
                target = torch.tensor(c, device=self.device)
                logp = torch.log_softmax(step, dim=-1).gather(-1, target[:, None])[:, 0]
                greedy = step.argmax(dim=-1) == target
                out.append(ContinuationScores(tuple(logp.tolist()), tuple(bool(g) for g in greedy.tolist())))
        return out

    # ------------------------------------------------------------------ async twins

    async def agenerate(self, rows: Sequence[GenerationRow], options: GenerationOptions = GenerationOptions()) -> list[str]:
        """Async twin of :meth:`generate`; runs in a worker thread so the loop stays free."""
        return await asyncio.to_thread(self.generate, rows, options)

    async def astream(self, row: GenerationRow, options: GenerationOptions = GenerationOptions()) -> AsyncIterator[str]:
        """Async twin of :meth:`stream`: tokens arrive through the event loop, never blocking it."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def emit(event: tuple[str, Any]) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        stop, worker = await asyncio.to_thread(self._start_stream, row, options, emit)
        deltas = TextDeltas(self.chat_format, self.eos_ids)
        try:
            while not deltas.done:
                for piece in deltas.feed(*(await events.get())):
                    yield piece
        finally:
            stop.set()
            await asyncio.to_thread(worker.join)

    async def ascore_choices(
        self, row: GenerationRow, choices: Sequence[str], reduction: Literal["sum", "mean"] = "sum"
    ) -> list[float]:
        """Async twin of :meth:`score_choices`."""
        return await asyncio.to_thread(self.score_choices, row, choices, reduction)

    async def ascore_continuations(
        self, rows: Sequence[GenerationRow], continuations: Sequence[Sequence[int]]
    ) -> list[ContinuationScores]:
        """Async twin of :meth:`score_continuations`."""
        return await asyncio.to_thread(self.score_continuations, rows, continuations)
