"""Building a batch's ``inputs_embeds``: embed, corrupt each row on its own, left-pad.

Why build the embeddings instead of hooking the model's embedding layer (as the paper's
reference code does): a hook is global state on a shared model, so two concurrent
requests, one flagged and one not, would corrupt each other. Here each call embeds its
own prompts, corrupts its own rows and hands the tensor to the backend; the model is
only ever read. Any backend that accepts prompt embeddings (transformers' ``generate``,
vLLM's ``prompt_embeds``) uses the same rows.

``embed`` is the backend's lookup *as the model consumes it*: Gemma 3 multiplies its
token embeddings by sqrt(hidden size) inside its embedding module, and
``inputs_embeds`` must carry that scale, so corruption is applied after it, and the
statistics ``strength: auto`` starts from are those of the scaled rows too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..corruption import Corruption
from .masking import PreparedPrompt

#: token ids -> embeddings, ``[1, n] -> [1, n, hidden]``, on the model's device and dtype
Embed = Callable[[torch.Tensor], torch.Tensor]

_STATS_CHUNK = 16384  # vocabulary rows embedded at a time for the statistics


def corrupted_row(embed: Embed, prompt: PreparedPrompt, corruption: Corruption | None, device: torch.device) -> torch.Tensor:
    """One prompt's embeddings ``[1, n, hidden]``, corrupted where its mask says.

    Each row is corrupted on its own unpadded tensor, so its noise depends only on the
    prompt and the seed, never on what it was batched with.
    """
    with torch.inference_mode():
        row = embed(torch.tensor([prompt.input_ids], device=device))
        if corruption is not None:
            row = corruption.apply(row, torch.tensor([prompt.mask], dtype=torch.bool, device=device))
    return row


def batch_rows(
    embed: Embed,
    prompts: Sequence[PreparedPrompt],
    corruptions: Sequence[Corruption | None],
    pad_id: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupted, left-padded rows and their attention mask: ``(inputs_embeds, attention_mask)``."""
    width = max(len(p.input_ids) for p in prompts)
    rows: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    with torch.inference_mode():
        pad_vec = embed(torch.tensor([[pad_id]], device=device))[0]
        for prompt, corruption in zip(prompts, corruptions):
            row = corrupted_row(embed, prompt, corruption, device)
            n_pad = width - len(prompt.input_ids)
            rows.append(torch.cat([pad_vec.expand(n_pad, -1), row[0]], dim=0))
            am = torch.zeros(width, dtype=torch.long, device=device)
            am[n_pad:] = 1
            masks.append(am)
    return torch.stack(rows), torch.stack(masks)


def consumed_table(embed: Embed, vocab_size: int, device: torch.device) -> torch.Tensor:
    """Every token's embedding as the model consumes it (scale included), ``[vocab, hidden]``."""
    with torch.inference_mode():
        parts = [
            embed(torch.arange(start, min(start + _STATS_CHUNK, vocab_size), device=device)[None])[0]
            for start in range(0, vocab_size, _STATS_CHUNK)
        ]
    return torch.cat(parts)


def table_stats(embed: Embed, vocab_size: int, device: torch.device) -> tuple[float, int]:
    """Std and width of the consumed embedding table: what ``strength: auto`` starts from."""
    table = consumed_table(embed, vocab_size, device)
    return float(table.float().std()), int(table.shape[1])
