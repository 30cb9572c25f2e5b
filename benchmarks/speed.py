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
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import torch

from eco_guard.audit import NullAudit
from eco_guard.fitting import fit_guard
from eco_guard.guard import Guard
from eco_guard.runner.base import GenerationOptions, GenerationRow
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

SIX_SENTENCES = [" ".join((PROMPTS + PROMPTS)[i : i + 6]) for i in range(len(PROMPTS))]
"""Multi-sentence prompts: each is scored by its pieces (itself, 6 sentences, 3 windows), see ``eco_guard.classifier.pieces.text_pieces``."""


FIRST = ["Aldo", "Brena", "Corin", "Dalia", "Emeric", "Faye", "Gideon", "Hale", "Ilse", "Joram"]
LAST = ["Verrin", "Mossgrove", "Tallis", "Quenby", "Ardeth", "Pellow", "Stroud", "Yarrow", "Kemble", "Osgood"]
ASKS = [
    "Where was {} born?",
    "What is the best-known book by {}?",
    "Which prize did {} win?",
    "Who were the parents of {}?",
    "What genre does {} write in?",
]


def _write_many_target_policy(work: Path, n: int = 20, precision: str = "float32", runtime: str = "auto") -> Path:
    """A policy with ``n`` author-like targets (fictitious names, 5 questions each).

    Throughput depends on the number of heads, not on what they learned, so the texts are
    generated here and the benchmark needs no third-party data.
    """
    names = [f"{f} {l}" for f in FIRST for l in LAST][:n]
    targets = []
    for i, name in enumerate(names):
        other = names[(i + 1) % n].split()[0] + " " + LAST[(i + 3) % len(LAST)] + "son"
        (work / f"t{i}.forget.txt").write_text("\n".join(a.format(name) for a in ASKS) + "\n", encoding="utf-8")
        (work / f"t{i}.retain.txt").write_text("\n".join(a.format(other) for a in ASKS) + "\n", encoding="utf-8")
        targets.append(
            {"id": f"author-{i}", "forget": {"file": f"t{i}.forget.txt"}, "retain": {"file": f"t{i}.retain.txt"}, "corruption": {"strength": 1.0}}
        )
    path = work / f"many-{precision}-{runtime}.yaml"
    doc = {"version": 1, "classifier": {"precision": precision, "runtime": runtime}, "targets": targets}
    path.write_text(json.dumps(doc), encoding="utf-8")  # JSON is YAML
    return path


def _one_prompt_ms(guard: Guard, n: int = 300, prompts: Sequence[str] = PROMPTS) -> list[float]:
    """Latency of a full ``Guard.check`` decision, one prompt at a time, after warm-up."""
    for _ in range(20):
        guard.check(UNFLAGGED)
    lat = []
    for i in range(n):
        text = prompts[i % len(prompts)]
        t = time.perf_counter()
        guard.check(text)
        lat.append((time.perf_counter() - t) * 1000)
    return lat


def _batch_rate(guard: Guard) -> float:
    """Median prompts/s of ``check_batch`` over 1,024 distinct prompts, three runs."""
    batch = [f"{p} (variant {i})" for i in range(128) for p in PROMPTS][:1024]
    guard.check_batch(batch[:64], audit=False)
    rates = []
    for _ in range(3):
        t = time.perf_counter()
        guard.check_batch(batch, audit=False)
        rates.append(len(batch) / (time.perf_counter() - t))
    return statistics.median(rates)


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
    from stage_speed import markdown as stage_rows
    from stage_speed import stage_costs

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
    many: dict[str, Guard] = {}
    # The default (float32, auto: ONNX Runtime on CPU), the same in PyTorch, and bfloat16 (PyTorch autocast).
    for name, precision, runtime in (("float32", "float32", "auto"), ("float32-torch", "float32", "torch"), ("bfloat16", "bfloat16", "auto")):
        policy = _write_many_target_policy(work, precision=precision, runtime=runtime)
        fit_guard(policy, work / f"many-{name}", seed=0, progress=False)
        many[name] = Guard.load(work / f"many-{name}", runner=runner, audit=NullAudit())

    # --- classifier latency, one prompt at a time, and batch throughput; demo and 20 targets
    lat, rate = _one_prompt_ms(guard), _batch_rate(guard)
    twenty = {p: (_one_prompt_ms(g), _batch_rate(g)) for p, g in many.items()}
    six = _one_prompt_ms(many["float32"], n=100, prompts=SIX_SENTENCES)

    # --- guard overhead on an unflagged request vs the bare runner, interleaved
    opts = GenerationOptions(max_new_tokens=args.tokens, ignore_eos=True)
    msgs = [{"role": "user", "content": UNFLAGGED}]
    assert not guard.check(UNFLAGGED).flagged
    guard.invoke(UNFLAGGED, opts)
    runner.generate([GenerationRow(msgs)], opts)
    bare_t, guard_t = interleaved(
        args.reps,
        lambda: runner.generate([GenerationRow(msgs)], opts),
        lambda: guard.invoke(UNFLAGGED, opts),
    )

    # --- corrupted vs clean tokens/s (same prompt, same number of tokens), interleaved
    corruption = guard.rules[0].corruption
    fmsgs = [{"role": "user", "content": FLAGGED}]
    clean_t, corr_t = interleaved(
        args.reps,
        lambda: runner.generate([GenerationRow(fmsgs)], opts),
        lambda: runner.generate([GenerationRow(fmsgs, corruption)], opts),
    )

    clean_tps = args.tokens / statistics.median(clean_t)
    corr_tps = args.tokens / statistics.median(corr_t)
    result = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "classifier_one_prompt_ms": {"p50": round(pct(lat, 0.5), 2), "p99": round(pct(lat, 0.99), 2), "n": len(lat)},
        "batch_scoring_prompts_per_s": round(rate, 1),
        "twenty_targets": {
            p: {
                "one_prompt_ms": {"p50": round(pct(l20, 0.5), 2), "p99": round(pct(l20, 0.99), 2), "n": len(l20)},
                "batch_scoring_prompts_per_s": round(r20, 1),
            }
            for p, (l20, r20) in twenty.items()
        },
        "six_sentence_prompt_ms_20_targets": {"p50": round(pct(six, 0.5), 2), "p99": round(pct(six, 0.99), 2), "n": len(six)},
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
        "stages": stage_costs(guard) if guard.answers is not None else {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    g, c = result["guard_overhead_unflagged"], result["corrupted_vs_clean"]
    t20, b20 = result["twenty_targets"]["float32"], result["twenty_targets"]["bfloat16"]
    p20 = result["twenty_targets"]["float32-torch"]
    md = [
        "| metric | value | goal |",
        "|---|---|---|",
        f"| classifier, one prompt, p50 / p99 (demo policy, 1 target) | {result['classifier_one_prompt_ms']['p50']} / {result['classifier_one_prompt_ms']['p99']} ms | p50 <= 10 ms |",
        f"| classifier, one prompt, p50 / p99 (20 targets) | {t20['one_prompt_ms']['p50']} / {t20['one_prompt_ms']['p99']} ms | p50 <= 10 ms |",
        f"| classifier, one prompt, p50 / p99 (20 targets, `runtime: torch`) | {p20['one_prompt_ms']['p50']} / {p20['one_prompt_ms']['p99']} ms | p50 <= 10 ms |",
        f"| classifier, one prompt, p50 / p99 (20 targets, `precision: bfloat16`) | {b20['one_prompt_ms']['p50']} / {b20['one_prompt_ms']['p99']} ms | p50 <= 10 ms |",
        f"| classifier, one prompt of six sentences, p50 / p99 (20 targets; scored by 10 pieces) | {result['six_sentence_prompt_ms_20_targets']['p50']} / {result['six_sentence_prompt_ms_20_targets']['p99']} ms | |",
        f"| batch scoring throughput (demo policy) | {result['batch_scoring_prompts_per_s']} prompts/s | |",
        f"| batch scoring throughput (20 targets) | {t20['batch_scoring_prompts_per_s']} prompts/s | >= 500 prompts/s |",
        f"| batch scoring throughput (20 targets, `runtime: torch`) | {p20['batch_scoring_prompts_per_s']} prompts/s | >= 500 prompts/s |",
        f"| batch scoring throughput (20 targets, `precision: bfloat16`) | {b20['batch_scoring_prompts_per_s']} prompts/s | >= 500 prompts/s |",
        f"| unflagged request through guard / bare runner ({g['new_tokens']} tokens) | {g['ratio']:.3f}x ({g['guard_s_median']:.3f} s vs {g['bare_s_median']:.3f} s) | <= 1.05x |",
        f"| corrupted / clean tokens/s | {c['ratio']:.3f}x ({c['corrupted_tokens_per_s']:.1f} vs {c['clean_tokens_per_s']:.1f} tok/s) | >= 0.95x |",
        f"| fit of the demo policy | {result['fit_demo_policy_s']} s | |",
        *(stage_rows(result["stages"]) if result["stages"] else []),
    ]
    (args.out / "speed.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
