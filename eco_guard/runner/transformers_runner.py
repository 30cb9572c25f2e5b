"""Transformers runner: generation from ``inputs_embeds`` with per-row corruption.

Why build ``inputs_embeds`` ourselves instead of registering a forward hook on the
embedding layer (as the paper's reference code does): a hook is global state on a shared
model, so two concurrent requests, one flagged and one not, would corrupt each other.
Here each call embeds its own prompts, corrupts its own rows, and hands the tensor to
``generate``; the model is only ever read.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import warnings
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ..corruption import Corruption
from ..entities import name_spans
from ..errors import InputError, ModelLoadError
from .base import GenerationOptions, MaskSpec, Messages, normalize_messages
from .store import resolve_model


@dataclass(frozen=True)
class PreparedPrompt:
    """A templated prompt: its token ids and which of them a corruption may touch."""

    input_ids: list[int]
    mask: list[bool]


@dataclass(frozen=True)
class ContinuationScores:
    """Teacher-forced scores of a reply's tokens (:meth:`TransformersRunner.score_continuations`)."""

    logprobs: tuple[float, ...]  # log-prob of each token given the prompt and the tokens before it
    greedy: tuple[bool, ...]  # whether each token is the argmax there: greedy decoding would emit it


def pick_device(device: str) -> torch.device:
    """``auto`` means CUDA when present, else CPU; anything else is taken literally."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"model.device: {device!r} is not a valid torch device ({exc})") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"model.device is {device!r} but CUDA is not available; use 'auto' or 'cpu'")
    return dev


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """float32 on CPU (bf16 is not faster there, only smaller); bf16 on CUDA."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


class _StopFlag:
    """A stopping criterion that ends generation when a consumer goes away."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _QueueStreamer:
    """Receives new token ids from ``generate`` and forwards them through a callback."""

    def __init__(self, emit: Any) -> None:
        self._emit = emit
        self._first = True

    def put(self, value: torch.Tensor) -> None:
        # With inputs_embeds, generate's first put() carries no prompt tokens, but some
        # versions still send an (empty) prompt tensor; only token ids matter here.
        ids = value.reshape(-1).tolist()
        self._emit(("tokens", ids))

    def end(self) -> None:
        self._emit(("end", None))


class _TextDeltas:
    """Per-stream state: turns token events into text deltas.

    It holds back a delta that ends in an incomplete UTF-8 sequence (decoded as U+FFFD)
    until the next token completes it, so a client never sees a broken character.
    """

    def __init__(self, tokenizer: Any, eos_ids: Sequence[int]) -> None:
        self._tokenizer = tokenizer
        self._eos = set(eos_ids)
        self._ids: list[int] = []
        self._sent = ""
        self.done = False

    def feed(self, kind: str, payload: Any) -> list[str]:
        if kind == "error":
            self.done = True
            raise payload
        if kind == "end":
            self.done = True
        else:
            for t in payload:
                if t in self._eos:
                    self.done = True
                    break
                self._ids.append(int(t))
        text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        if text.endswith("\ufffd") and not self.done:
            return []
        if len(text) > len(self._sent) and text.startswith(self._sent):
            piece, self._sent = text[len(self._sent):], text
            return [piece]
        return []


class TransformersRunner:
    """A Hugging Face causal LM behind the :class:`~eco_guard.runner.base.Runner` protocol."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.device = next(model.parameters()).device
        config = model.config
        self.max_context = int(getattr(config, "max_position_embeddings", 2048) or 2048)
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._eos_ids = self._collect_eos_ids()

    @classmethod
    def load(
        cls,
        path: str = "default",
        *,
        device: str = "auto",
        dtype: str = "auto",
        base_dir: Path | None = None,
        progress: bool = True,
    ) -> "TransformersRunner":
        """Load a model reference (``default``, HF dir or ``.gguf``), converting once if needed."""
        resolved = resolve_model(path, base_dir, progress=progress)
        dev = pick_device(device)
        torch_dtype = pick_dtype(dtype, dev)
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tokenizer = AutoTokenizer.from_pretrained(str(resolved.directory))
                model = AutoModelForCausalLM.from_pretrained(str(resolved.directory), dtype=torch_dtype)
        except Exception as exc:
            raise ModelLoadError(
                f"could not load the model at {resolved.directory}: {type(exc).__name__}: {exc}. "
                "If this is a cache entry, delete it (ECO_GUARD_CACHE, default ~/.cache/eco-guard) "
                "and it will be rebuilt."
            ) from exc
        finally:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()
        if getattr(tokenizer, "chat_template", None) is None:
            raise ModelLoadError(f"the tokenizer at {resolved.directory} has no chat template; use an instruct model")
        model.to(dev)
        model.eval()
        model.requires_grad_(False)
        name = "SmolLM2-135M-Instruct" if path == "default" else Path(path).name
        return cls(model, tokenizer, name=name)

    # ------------------------------------------------------------------ preparation

    def _collect_eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        ids = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    def prepare(self, messages: Messages, mask_spec: MaskSpec = MaskSpec()) -> PreparedPrompt:
        """Template ``messages`` and mark the tokens a corruption may touch.

        Token positions are located through ``offset_mapping`` over the rendered
        template, so no assumption is made about how a given chat template wraps turns.
        """
        msgs = normalize_messages(messages)
        text = self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        spans = self._user_spans(text, msgs)
        if mask_spec.scope == "entities":
            entity_spans = self._term_spans(text, spans, mask_spec.terms) + self._name_spans(text, spans)
            spans = entity_spans or spans
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = list(enc["input_ids"])
        if mask_spec.scope == "all":
            mask = [True] * len(ids)
        else:
            mask = [any(s < e_tok and s_tok < e for s, e in spans) for s_tok, e_tok in enc["offset_mapping"]]
        return PreparedPrompt(ids, mask)

    @staticmethod
    def _user_spans(text: str, msgs: list[dict[str, str]]) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        pos = 0
        for msg in msgs:
            content = msg["content"]
            if not content:
                continue
            start = text.find(content, pos)
            if start < 0:  # a template that rewrites content; fall back to no span for it
                continue
            end = start + len(content)
            if msg["role"] == "user":
                spans.append((start, end))
            pos = end
        return spans

    @staticmethod
    def _term_spans(text: str, user_spans: list[tuple[int, int]], terms: Sequence[str]) -> list[tuple[int, int]]:
        lowered = text.lower()
        found: list[tuple[int, int]] = []
        for term in terms:
            needle = term.lower().strip()
            if not needle:
                continue
            for s0, e0 in user_spans:
                i = lowered.find(needle, s0, e0)
                while i >= 0:
                    found.append((i, i + len(needle)))
                    i = lowered.find(needle, i + 1, e0)
        return found

    @staticmethod
    def _name_spans(text: str, user_spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Names and titles inside the user turns, found in the prompt itself (``entities.py``)."""
        return [(s0 + s, s0 + e) for s0, e0 in user_spans for s, e in name_spans(text[s0:e0])]

    def _check_length(self, n_prompt: int, max_new_tokens: int, where: str) -> None:
        if n_prompt + max_new_tokens > self.max_context:
            raise InputError(
                f"{where}: the prompt is {n_prompt} tokens and {max_new_tokens} new tokens were asked for, "
                f"but the model's context is {self.max_context} tokens; shorten the prompt or lower max_new_tokens"
            )

    def _embed_rows(
        self,
        prompts: Sequence[PreparedPrompt],
        corruptions: Sequence[Corruption | None],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed, corrupt and left-pad each row; return ``(inputs_embeds, attention_mask)``.

        Each row is corrupted before padding, on its own unpadded tensor, so a prompt's
        noise depends only on the prompt and the seed and never on what it was batched with.
        """
        embed = self.model.get_input_embeddings()
        width = max(len(p.input_ids) for p in prompts)
        rows: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        with torch.inference_mode():
            pad_vec = embed(torch.tensor([[self._pad_id]], device=self.device))[0]
            for prompt, corruption in zip(prompts, corruptions):
                ids = torch.tensor([prompt.input_ids], device=self.device)
                row = embed(ids)
                if corruption is not None:
                    mask = torch.tensor([prompt.mask], dtype=torch.bool, device=self.device)
                    row = corruption.apply(row, mask)
                n_pad = width - len(prompt.input_ids)
                rows.append(torch.cat([pad_vec.expand(n_pad, -1), row[0]], dim=0))
                am = torch.zeros(width, dtype=torch.long, device=self.device)
                am[n_pad:] = 1
                masks.append(am)
        return torch.stack(rows), torch.stack(masks)

    @staticmethod
    def _broadcast(value: Any, n: int, name: str) -> list[Any]:
        if isinstance(value, Sequence) and not isinstance(value, (str, MaskSpec)):
            items = list(value)
            if len(items) != n:
                raise ValueError(f"{name}: got {len(items)} entries for a batch of {n}")
            return items
        return [value] * n

    def _gen_kwargs(self, options: GenerationOptions, corruptions: Sequence[Corruption | None] = ()) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": options.max_new_tokens,
            "pad_token_id": self._pad_id,
            "eos_token_id": self._eos_ids,
        }
        corrupted = [i for i, c in enumerate(corruptions) if c is not None]
        if corrupted and options.corrupted_no_repeat_ngram > 0:
            from transformers import LogitsProcessorList

            from .loop_guard import CorruptedRowsNoRepeat

            kwargs["logits_processor"] = LogitsProcessorList([CorruptedRowsNoRepeat(corrupted, options.corrupted_no_repeat_ngram)])
        if options.ignore_eos:
            kwargs["min_new_tokens"] = options.max_new_tokens
        if options.temperature > 0:
            kwargs.update(do_sample=True, temperature=float(options.temperature), top_p=float(options.top_p))
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def _until_eos(self, ids: Sequence[int]) -> list[int]:
        out: list[int] = []
        for t in ids:
            if t in self._eos_ids:
                break
            out.append(int(t))
        return out

    # ------------------------------------------------------------------ public API

    def generate(
        self,
        messages_batch: Sequence[Messages],
        corruption: Corruption | None | Sequence[Corruption | None] = None,
        mask_spec: MaskSpec | Sequence[MaskSpec] = MaskSpec(),
        options: GenerationOptions = GenerationOptions(),
    ) -> list[str]:
        """Answer a batch of chats; row ``i`` is corrupted with ``corruption[i]`` (or not)."""
        ids = self.generate_ids(messages_batch, corruption, mask_spec, options)
        return [self.tokenizer.decode(row, skip_special_tokens=True) for row in ids]

    def generate_ids(
        self,
        messages_batch: Sequence[Messages],
        corruption: Corruption | None | Sequence[Corruption | None] = None,
        mask_spec: MaskSpec | Sequence[MaskSpec] = MaskSpec(),
        options: GenerationOptions = GenerationOptions(),
    ) -> list[list[int]]:
        """Like :meth:`generate` but returns the new token ids of each row, cut at EOS."""
        if len(messages_batch) == 0:
            return []
        n = len(messages_batch)
        corruptions = self._broadcast(corruption, n, "corruption")
        specs = self._broadcast(mask_spec, n, "mask_spec")
        prompts = [self.prepare(m, s) for m, s in zip(messages_batch, specs)]
        for i, p in enumerate(prompts):
            self._check_length(len(p.input_ids), options.max_new_tokens, f"messages_batch[{i}]")
        embeds, attention = self._embed_rows(prompts, corruptions)
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = self.model.generate(inputs_embeds=embeds, attention_mask=attention, **self._gen_kwargs(options, corruptions))
        return [self._until_eos(row.tolist()) for row in out]

    def stream(
        self,
        messages: Messages,
        corruption: Corruption | None = None,
        mask_spec: MaskSpec = MaskSpec(),
        options: GenerationOptions = GenerationOptions(),
    ) -> Iterator[str]:
        """Yield the answer in text pieces as tokens are produced.

        Generation runs in a worker thread; closing the iterator early stops it at the
        next token instead of letting it run to ``max_new_tokens`` in the background.
        """
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        stop, worker = self._start_stream(messages, corruption, mask_spec, options, events.put)
        deltas = _TextDeltas(self.tokenizer, self._eos_ids)
        try:
            while not deltas.done:
                yield from deltas.feed(*events.get())
        finally:
            # Stop at the next token and wait, so no generation outlives its consumer
            # (an interpreter exiting under a running torch thread aborts).
            stop.event.set()
            worker.join()

    def _start_stream(
        self,
        messages: Messages,
        corruption: Corruption | None,
        mask_spec: MaskSpec,
        options: GenerationOptions,
        emit: Any,
    ) -> tuple[_StopFlag, threading.Thread]:
        from transformers import StoppingCriteriaList

        prompt = self.prepare(messages, mask_spec)
        self._check_length(len(prompt.input_ids), options.max_new_tokens, "messages")
        embeds, attention = self._embed_rows([prompt], [corruption])
        stop = _StopFlag()

        def work() -> None:
            try:
                with torch.inference_mode(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.model.generate(
                        inputs_embeds=embeds,
                        attention_mask=attention,
                        streamer=_QueueStreamer(emit),
                        stopping_criteria=StoppingCriteriaList([stop]),
                        **self._gen_kwargs(options, [corruption]),
                    )
            except BaseException as exc:  # surfaced to the consumer, never lost in a thread
                emit(("error", exc))

        worker = threading.Thread(target=work, name="eco-guard-stream", daemon=True)
        worker.start()
        return stop, worker

    def score_choices(
        self,
        messages: Messages,
        choices: Sequence[str],
        corruption: Corruption | None = None,
        mask_spec: MaskSpec = MaskSpec(),
        reduction: Literal["sum", "mean"] = "sum",
    ) -> list[float]:
        """Log-likelihood of each choice as the assistant's reply to ``messages``.

        The prompt part is corrupted exactly as in generation; the choice tokens never are,
        since they stand for the model's own answer.
        """
        if not choices:
            raise InputError("choices: at least one choice is required")
        prompt = self.prepare(messages, mask_spec)
        choice_ids = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in choices]
        for i, ids in enumerate(choice_ids):
            if not ids:
                raise InputError(f"choices[{i}]: empty choice")
            self._check_length(len(prompt.input_ids), len(ids), f"choices[{i}]")
        embed = self.model.get_input_embeddings()
        n_prompt = len(prompt.input_ids)
        with torch.inference_mode():
            p_emb = embed(torch.tensor([prompt.input_ids], device=self.device))
            if corruption is not None:
                p_emb = corruption.apply(p_emb, torch.tensor([prompt.mask], dtype=torch.bool, device=self.device))
            if all(len(ids) == 1 for ids in choice_ids):
                # One-token choices (multiple-choice letters): the prompt's last position
                # predicts them all, so one forward pass replaces one per choice.
                last = torch.log_softmax(self.model(inputs_embeds=p_emb).logits[0, -1].float(), dim=-1)
                return [float(last[ids[0]]) for ids in choice_ids]
            width = max(len(ids) for ids in choice_ids)
            rows, masks = [], []
            for ids in choice_ids:
                padded = ids + [self._pad_id] * (width - len(ids))
                c_emb = embed(torch.tensor([padded], device=self.device))
                rows.append(torch.cat([p_emb[0], c_emb[0]], dim=0))
                am = torch.zeros(n_prompt + width, dtype=torch.long, device=self.device)
                am[: n_prompt + len(ids)] = 1
                masks.append(am)
            logits = self.model(inputs_embeds=torch.stack(rows), attention_mask=torch.stack(masks)).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            scores: list[float] = []
            for b, ids in enumerate(choice_ids):
                positions = torch.arange(n_prompt - 1, n_prompt - 1 + len(ids), device=self.device)
                target = torch.tensor(ids, device=self.device)
                token_lp = logp[b, positions, target]
                total = float(token_lp.sum())
                scores.append(total / len(ids) if reduction == "mean" else total)
        return scores

    def score_continuations(
        self,
        messages_batch: Sequence[Messages],
        continuations: Sequence[Sequence[int]],
        corruption: Corruption | None | Sequence[Corruption | None] = None,
        mask_spec: MaskSpec | Sequence[MaskSpec] = MaskSpec(),
    ) -> list[ContinuationScores]:
        """Teacher-forced scores of each row's ``continuations[i]`` (token ids) as the reply to its chat.

        One forward pass for the whole batch, where generating the same tokens takes one
        pass per token: the strength search (``optimize.py``) scores many strengths this
        way and generates only to confirm the one it picks. The prompt is corrupted
        exactly as in :meth:`generate` (same per-row noise); the continuation never is,
        since it stands for the model's own answer. Rows are right-padded, so every real
        token keeps the position it has in an unpadded forward pass.
        """
        n = len(messages_batch)
        if n == 0:
            return []
        if len(continuations) != n:
            raise ValueError(f"continuations: got {len(continuations)} entries for a batch of {n}")
        corruptions = self._broadcast(corruption, n, "corruption")
        specs = self._broadcast(mask_spec, n, "mask_spec")
        prompts = [self.prepare(m, s) for m, s in zip(messages_batch, specs)]
        conts = [list(c) for c in continuations]
        for i, (p, c) in enumerate(zip(prompts, conts)):
            if not c:
                raise InputError(f"continuations[{i}]: empty continuation")
            self._check_length(len(p.input_ids), len(c), f"messages_batch[{i}]")
        embed = self.model.get_input_embeddings()
        width = max(len(p.input_ids) + len(c) for p, c in zip(prompts, conts))
        out: list[ContinuationScores] = []
        with torch.inference_mode():
            pad_vec = embed(torch.tensor([[self._pad_id]], device=self.device))[0]
            rows, masks = [], []
            for p, c, corr in zip(prompts, conts, corruptions):
                p_emb = embed(torch.tensor([p.input_ids], device=self.device))
                if corr is not None:
                    p_emb = corr.apply(p_emb, torch.tensor([p.mask], dtype=torch.bool, device=self.device))
                c_emb = embed(torch.tensor([c], device=self.device))
                used = len(p.input_ids) + len(c)
                rows.append(torch.cat([p_emb[0], c_emb[0], pad_vec.expand(width - used, -1)], dim=0))
                am = torch.zeros(width, dtype=torch.long, device=self.device)
                am[:used] = 1
                masks.append(am)
            logits = self.model(inputs_embeds=torch.stack(rows), attention_mask=torch.stack(masks)).logits
            for b, (p, c) in enumerate(zip(prompts, conts)):
                start = len(p.input_ids) - 1
                step = logits[b, start : start + len(c)].float()
                target = torch.tensor(c, device=self.device)
                logp = torch.log_softmax(step, dim=-1).gather(-1, target[:, None])[:, 0]
                greedy = step.argmax(dim=-1) == target
                out.append(ContinuationScores(tuple(logp.tolist()), tuple(bool(g) for g in greedy.tolist())))
        return out

    # ------------------------------------------------------------------ async twins

    async def agenerate(
        self,
        messages_batch: Sequence[Messages],
        corruption: Corruption | None | Sequence[Corruption | None] = None,
        mask_spec: MaskSpec | Sequence[MaskSpec] = MaskSpec(),
        options: GenerationOptions = GenerationOptions(),
    ) -> list[str]:
        """Async twin of :meth:`generate`; runs in a worker thread so the loop stays free."""
        return await asyncio.to_thread(self.generate, messages_batch, corruption, mask_spec, options)

    async def astream(
        self,
        messages: Messages,
        corruption: Corruption | None = None,
        mask_spec: MaskSpec = MaskSpec(),
        options: GenerationOptions = GenerationOptions(),
    ) -> AsyncIterator[str]:
        """Async twin of :meth:`stream`: tokens arrive through the event loop, never blocking it."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def emit(event: tuple[str, Any]) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        stop, worker = await asyncio.to_thread(self._start_stream, messages, corruption, mask_spec, options, emit)
        deltas = _TextDeltas(self.tokenizer, self._eos_ids)
        try:
            while not deltas.done:
                for piece in deltas.feed(*(await events.get())):
                    yield piece
        finally:
            stop.event.set()
            await asyncio.to_thread(worker.join)

    async def ascore_continuations(
        self,
        messages_batch: Sequence[Messages],
        continuations: Sequence[Sequence[int]],
        corruption: Corruption | None | Sequence[Corruption | None] = None,
        mask_spec: MaskSpec | Sequence[MaskSpec] = MaskSpec(),
    ) -> list[ContinuationScores]:
        """Async twin of :meth:`score_continuations`."""
        return await asyncio.to_thread(self.score_continuations, messages_batch, continuations, corruption, mask_spec)

    async def ascore_choices(
        self,
        messages: Messages,
        choices: Sequence[str],
        corruption: Corruption | None = None,
        mask_spec: MaskSpec = MaskSpec(),
        reduction: Literal["sum", "mean"] = "sum",
    ) -> list[float]:
        """Async twin of :meth:`score_choices`."""
        return await asyncio.to_thread(self.score_choices, messages, choices, corruption, mask_spec, reduction)
