"""Transformers backend: decoding from ``inputs_embeds`` with Hugging Face ``generate``.

Only the backend-specific parts live here (loading, the embedding lookup, ``generate``,
its streamer and the forward pass); everything else is shared with any other backend
through :class:`~eco_guard.runner.embedding_runner.EmbeddingRunner`.
"""

from __future__ import annotations

import copy
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError
from .base import GenerationOptions
from .embedding_runner import EmbeddedBatch, EmbeddingRunner
from .loop_guard import loop_guard
from .store import display_name, resolve_model




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


class _StopOn:
    """A stopping criterion that ends generation once a consumer has gone away."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _IdStreamer:
    """Receives new token ids from ``generate`` and forwards them."""

    def __init__(self, emit_ids: Callable[[list[int]], None]) -> None:
        self._emit_ids = emit_ids

    def put(self, value: torch.Tensor) -> None:
        # With inputs_embeds, generate's first put() carries no prompt tokens, but some
        # versions still send an (empty) prompt tensor; only token ids matter here.
        self._emit_ids(value.reshape(-1).tolist())

    def end(self) -> None:
        """The shared runner signals the end once ``generate`` returns."""


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    eos = model.generation_config.eos_token_id
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


class TransformersRunner(EmbeddingRunner):
    """A Hugging Face causal LM behind the :class:`~eco_guard.runner.base.Runner` protocol."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str) -> None:
        self.model = model
        config = model.config
        super().__init__(
            tokenizer,
            name=name,
            max_context=int(getattr(config, "max_position_embeddings", 2048) or 2048),
            device=next(model.parameters()).device,
            pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            eos_ids=_eos_ids(model, tokenizer),
            vocab_size=int(model.get_input_embeddings().weight.shape[0]),
        )

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
        """Load a model reference (a short name, HF dir or ``.gguf``), converting once if needed."""
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
        model.to(dev)
        model.eval()
        model.requires_grad_(False)
        return cls(model, tokenizer, name=display_name(path))

    # ------------------------------------------------------------------ backend

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The model's own embedding module, so a scale it applies (Gemma's sqrt(hidden)) is kept."""
        return self.model.get_input_embeddings()(ids)

    def _gen_kwargs(self, options: GenerationOptions, corrupted_rows: tuple[int, ...]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": options.max_new_tokens,
            "pad_token_id": self.pad_id,
            "eos_token_id": self.eos_ids,
        }
        guard = loop_guard(corrupted_rows, options)
        if guard is not None:
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList([guard])
        if options.ignore_eos:
            kwargs["min_new_tokens"] = options.max_new_tokens
        if options.temperature > 0:
            kwargs.update(do_sample=True, temperature=float(options.temperature), top_p=float(options.top_p))
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def generate_embeds(self, batch: EmbeddedBatch, options: GenerationOptions) -> list[list[int]]:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = self.model.generate(
                inputs_embeds=batch.embeds, attention_mask=batch.attention, **self._gen_kwargs(options, batch.corrupted_rows)
            )
        return [row.tolist() for row in out]

    def stream_embeds(
        self, batch: EmbeddedBatch, options: GenerationOptions, emit_ids: Callable[[list[int]], None], stop: threading.Event
    ) -> None:
        from transformers import StoppingCriteriaList

        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.generate(
                inputs_embeds=batch.embeds,
                attention_mask=batch.attention,
                streamer=_IdStreamer(emit_ids),
                stopping_criteria=StoppingCriteriaList([_StopOn(stop)]),
                **self._gen_kwargs(options, batch.corrupted_rows),
            )

    def logits(
        self, embeds: torch.Tensor, attention: torch.Tensor | None, keep: int = 0, past: object | None = None
    ) -> torch.Tensor:
        with torch.inference_mode():
            cache = None
            if past is not None:
                cache = copy.deepcopy(past)  # the forward pass appends to it; the prefill stays reusable
                cache.batch_repeat_interleave(embeds.shape[0])  # type: ignore[attr-defined]
            out = self.model(
                inputs_embeds=embeds, attention_mask=attention, cache=cache, use_cache=cache is not None, logits_to_keep=keep
            )
            return out.logits

    def prefill(self, embeds: torch.Tensor) -> object | None:
        """The KV cache after ``embeds``: transformers' own cache object, grown by :meth:`logits`."""
        with torch.inference_mode():
            return self.model(inputs_embeds=embeds, use_cache=True).cache
