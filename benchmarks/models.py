"""Model support benchmark (issue 26): load time and tokens/s of each bundled model.

For each bundled short name: the time ``TransformersRunner.load`` takes from the store's
cache (the one-time GGUF conversion is not counted: it is paid once per installation),
and greedy decoding speed, bare and corrupted, with ``ignore_eos`` so every run makes
the same number of tokens. Both models are measured in one process, interleaved, so
their ratio is comparable even on a shared machine. Writes
benchmarks/results/models.{json,md}; docs/models.md cites it.

    .venv/bin/python benchmarks/models.py [--tokens 32] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from eco_guard.corruption import Corruption
from eco_guard.fitting import default_strength, embedding_stats
from eco_guard.runner.base import GenerationOptions, GenerationRow
from eco_guard.runner.store import resolve_model
from eco_guard.runner.transformers_runner import TransformersRunner

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("default", "gemma3-270m")
PROMPT = [{"role": "user", "content": "Which author wrote 'The Bluest Eye' and won the Nobel Prize for Literature?"}]


def measure(model: str, tokens: int, reps: int) -> dict[str, Any]:
    """Load time (cache warm: the conversion is done first, untimed) and decoding speed."""
    resolve_model(model, progress=True)
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401  (import time is not load time)

    start = time.perf_counter()
    runner = TransformersRunner.load(model, progress=False)
    load_s = time.perf_counter() - start
    stats = embedding_stats(runner)
    corruption = Corruption("rand_noise_first_n", dims=stats.dim, strength=default_strength("rand_noise_first_n", stats.dim, stats), seed=0)
    opts = GenerationOptions(max_new_tokens=tokens, ignore_eos=True)
    runner.generate([GenerationRow(PROMPT)], GenerationOptions(max_new_tokens=2))  # warm-up
    clean, corrupted = [], []
    for _ in range(reps):
        for row, times in ((GenerationRow(PROMPT), clean), (GenerationRow(PROMPT, corruption), corrupted)):
            start = time.perf_counter()
            runner.generate_ids([row], opts)
            times.append(time.perf_counter() - start)
    config = runner.model.config
    return {
        "model": runner.name,
        "short_name": model,
        "architecture": type(runner.model).__name__,
        "parameters_m": round(sum(p.numel() for p in runner.model.parameters()) / 1e6, 1),
        "hidden": stats.dim,
        "vocab": runner.vocab_size,
        "chat_format": "plain Question/Answer" if runner.chat_format.plain else "chat template",
        "embedding_scale": round(stats.std / float(runner.model.get_input_embeddings().weight.float().std()), 3),
        "consumed_embedding_std": round(stats.std, 4),
        "max_context": runner.max_context,
        "load_s": round(load_s, 2),
        "tokens_per_s_clean": round(tokens / statistics.median(clean), 1),
        "tokens_per_s_corrupted": round(tokens / statistics.median(corrupted), 1),
        "model_type": config.model_type,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Model support",
        "",
        f"Machine: {result['machine']}. Command: `{result['command']}`.",
        "",
        "| model | short name | architecture | params (M) | chat format | embedding scale | load (s, cached) | tokens/s clean | tokens/s corrupted |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in result["models"]:
        lines.append(
            f"| {m['model']} | `{m['short_name']}` | {m['architecture']} | {m['parameters_m']} | {m['chat_format']} | "
            f"{m['embedding_scale']} | {m['load_s']} | {m['tokens_per_s_clean']} | {m['tokens_per_s_corrupted']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = {
        "machine": f"{torch.get_num_threads()} torch thread(s), CPU, load average {os.getloadavg()[0]:.1f} at start",
        "command": "python benchmarks/models.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "models": [measure(m, args.tokens, args.reps) for m in MODELS],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "models.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    (RESULTS / "models.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
