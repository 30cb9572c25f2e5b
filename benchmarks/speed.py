"""Speed benchmark (issue 2): classifier latency, batch throughput, guard overhead,
corrupted vs clean generation speed.

Every ratio is measured inside this one process with interleaved repetitions, because
the machine is shared and noisy: absolute numbers drift, ratios of neighbours do not.
Writes benchmarks/results/speed.json and speed.md.

    .venv/bin/python benchmarks/speed.py [--reps N] [--tokens N]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import torch

from eco_guard.audit import NullAudit
from eco_guard.corruption import Corruption
from eco_guard.fitting import fit_guard
from eco_guard.guard import Guard
from eco_guard.runner.base import GenerationOptions
from eco_guard.runner.transformers_runner import TransformersRunner

HERE = Path(__file__).resolve().parent
UNFLAGGED = "What is the capital of Australia?"
FLAGGED = "What is the capital of France?"
PROMPTS = [
    "How do I bake sourdough bread at home?",
    "Explain the difference between a list and a tuple in Python.",
    "What causes the seasons on Earth?",
    "Write a short poem about autumn leaves.",
    "Which French region is famous for sparkling wine?",
    "What is the boiling point of water at sea level?",
    "Give me three tips for a job interview.",
    "Who painted the Mona Lisa?",
]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def interleaved(reps: int, first: Callable[[], object], second: Callable[[], object]) -> tuple[list[float], list[float]]:
    """Time two calls alternately, so machine-load drift hits both sides of a ratio alike."""
    a: list[float] = []
    b: list[float] = []
    for _ in range(reps):
        for fn, out in ((first, a), (second, b)):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return a, b


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7, help="repetitions of each generation timing")
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per generation")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="eco-guard-speed-"))
    (work / "france.yaml").write_text(
        resources.files("eco_guard.demo").joinpath("france.yaml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    print("fitting the demo policy...", file=sys.stderr)
    t0 = time.perf_counter()
    fit_guard(work / "france.yaml", work / "guard", seed=0, progress=False)
    fit_s = time.perf_counter() - t0
    runner = TransformersRunner.load("default", progress=False)
    guard = Guard.load(work / "guard", runner=runner, audit=NullAudit())

    # --- classifier latency, one prompt at a time (a full Guard.check decision)
    for _ in range(20):
        guard.check(UNFLAGGED)
    lat = []
    for i in range(300):
        text = PROMPTS[i % len(PROMPTS)]
        t = time.perf_counter()
        guard.check(text)
        lat.append((time.perf_counter() - t) * 1000)

    # --- batch scoring throughput
    batch = [f"{p} (variant {i})" for i in range(128) for p in PROMPTS][:1024]
    guard.check_batch(batch[:64], audit=False)
    rates = []
    for _ in range(3):
        t = time.perf_counter()
        guard.check_batch(batch, audit=False)
        rates.append(len(batch) / (time.perf_counter() - t))

    # --- guard overhead on an unflagged request vs the bare runner, interleaved
    opts = GenerationOptions(max_new_tokens=args.tokens, ignore_eos=True)
    msgs = [{"role": "user", "content": UNFLAGGED}]
    assert not guard.check(UNFLAGGED).flagged
    guard.invoke(UNFLAGGED, opts)
    runner.generate([msgs], None, options=opts)
    bare_t, guard_t = interleaved(
        args.reps,
        lambda: runner.generate([msgs], None, options=opts),
        lambda: guard.invoke(UNFLAGGED, opts),
    )

    # --- corrupted vs clean tokens/s (same prompt, same number of tokens), interleaved
    corruption = guard.rules[0].corruption
    fmsgs = [{"role": "user", "content": FLAGGED}]
    clean_t, corr_t = interleaved(
        args.reps,
        lambda: runner.generate([fmsgs], None, options=opts),
        lambda: runner.generate([fmsgs], corruption, options=opts),
    )

    clean_tps = args.tokens / statistics.median(clean_t)
    corr_tps = args.tokens / statistics.median(corr_t)
    result = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "classifier_one_prompt_ms": {"p50": round(pct(lat, 0.5), 2), "p99": round(pct(lat, 0.99), 2), "n": len(lat)},
        "batch_scoring_prompts_per_s": round(statistics.median(rates), 1),
        "guard_overhead_unflagged": {
            "bare_s_median": round(statistics.median(bare_t), 4),
            "guard_s_median": round(statistics.median(guard_t), 4),
            "ratio": round(statistics.median(guard_t) / statistics.median(bare_t), 4),
            "new_tokens": args.tokens,
            "reps": args.reps,
        },
        "corrupted_vs_clean": {
            "clean_tokens_per_s": round(clean_tps, 2),
            "corrupted_tokens_per_s": round(corr_tps, 2),
            "ratio": round(corr_tps / clean_tps, 4),
            "corruption": corruption.to_dict(),
        },
        "fit_demo_policy_s": round(fit_s, 2),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    g, c = result["guard_overhead_unflagged"], result["corrupted_vs_clean"]
    md = [
        "| metric | value | goal |",
        "|---|---|---|",
        f"| classifier, one prompt, p50 / p99 | {result['classifier_one_prompt_ms']['p50']} / {result['classifier_one_prompt_ms']['p99']} ms | p50 <= 15 ms |",
        f"| batch scoring throughput | {result['batch_scoring_prompts_per_s']} prompts/s | |",
        f"| unflagged request through guard / bare runner ({g['new_tokens']} tokens) | {g['ratio']:.3f}x ({g['guard_s_median']:.3f} s vs {g['bare_s_median']:.3f} s) | <= 1.05x |",
        f"| corrupted / clean tokens/s | {c['ratio']:.3f}x ({c['corrupted_tokens_per_s']:.1f} vs {c['clean_tokens_per_s']:.1f} tok/s) | >= 0.95x |",
        f"| fit of the demo policy | {result['fit_demo_policy_s']} s | |",
    ]
    (args.out / "speed.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
