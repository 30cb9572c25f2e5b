"""What the defence-in-depth stages cost: the output check, canonical forms, and streaming's held sentences.

* output check of a 100-word answer, p50 / p99 (goal: p50 <= 10 ms on 2 cores);
* canonical forms' added time per decision: ``Guard.check`` with and without them,
  interleaved on the same prompts, p50 of the difference (goal: <= 3 ms);
* time to first token of a streamed unflagged answer, bare runner vs guard (the guard
  holds each sentence until it has passed), medians.

    python benchmarks/stage_speed.py [--policy tests/data/einstein/policy.yaml]

Writes benchmarks/results/stage_speed.json and .md; ``benchmarks/speed.py`` reports the same rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from eco_guard.fitting import fit_guard  # noqa: E402
from eco_guard.guard import Guard  # noqa: E402

sys.path.insert(0, str(HERE))
from speed import pct  # noqa: E402

ANSWER_100_WORDS = (
    "The capital of Australia is Canberra, a planned city chosen in 1908 as a compromise between Sydney and Melbourne. "
    "It was designed by the American architects Walter Burley Griffin and Marion Mahony Griffin after an international "
    "competition. Parliament moved there in 1927, and the city grew slowly at first. Today it is home to the national "
    "parliament, the high court and many national institutions such as the national gallery and the war memorial. "
    "The city is built around a large artificial lake and is known for its parks, its wide avenues and its quiet "
    "neighbourhoods, which surprise many visitors."
)
PROMPTS = [
    "What is the capital of Australia?",
    "Explain the difference between a list and a tuple in Python.",
    "Who painted the Mona Lisa?",
    "Give me three tips for a job interview.",
    "What causes the seasons on Earth?",
    "Write a short poem about autumn leaves.",
]


def stage_costs(guard: Guard, *, n: int = 300) -> dict[str, Any]:
    """The output check's latency and canonical forms' added decision time, measured in this process."""
    assert guard.answers is not None, "the guard has no output stage; re-fit it"
    words = len(ANSWER_100_WORDS.split())
    for _ in range(20):
        guard.answers.check([ANSWER_100_WORDS])
    check = []
    for _ in range(n):
        t0 = time.perf_counter()
        guard.answers.check([ANSWER_100_WORDS])
        check.append((time.perf_counter() - t0) * 1000)
    plain = Guard(classifier=guard.classifier, rules=guard.rules, audit=None, languages=guard.languages)
    with_canon = Guard(classifier=guard.classifier, rules=guard.rules, audit=None, canonical=guard.canonical, languages=guard.languages)
    added: list[float] = []
    for i in range(n):
        prompt = PROMPTS[i % len(PROMPTS)]
        t0 = time.perf_counter()
        plain.check(prompt)
        t1 = time.perf_counter()
        with_canon.check(prompt)
        t2 = time.perf_counter()
        added.append(((t2 - t1) - (t1 - t0)) * 1000)
    return {
        "output_check_ms": {"p50": round(pct(check, 0.5), 3), "p99": round(pct(check, 0.99), 3), "answer_words": words, "n": n},
        "canonical_added_ms": {"p50": round(statistics.median(added), 3), "n": n},
    }


def first_token_s(guard: Guard, prompt: str, reps: int = 5, tokens: int = 48) -> dict[str, float]:
    """Median time to the first streamed piece: bare runner vs guard (which holds each sentence until checked)."""
    from eco_guard.runner.base import GenerationOptions, GenerationRow

    opts = GenerationOptions(max_new_tokens=tokens)
    chat = [{"role": "user", "content": prompt}]
    bare, guarded = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        stream = iter(guard.runner.stream(GenerationRow(chat), opts))
        next(stream)
        bare.append(time.perf_counter() - t0)
        list(stream)
        t0 = time.perf_counter()
        gstream = guard.stream(prompt, opts)
        next(iter(gstream))
        guarded.append(time.perf_counter() - t0)
        list(gstream)
    return {"bare_s": round(statistics.median(bare), 4), "guard_s": round(statistics.median(guarded), 4), "reps": reps}


def markdown(result: dict[str, Any]) -> list[str]:
    o, c = result["output_check_ms"], result["canonical_added_ms"]
    rows = [
        f"| output check of a {o['answer_words']}-word answer, p50 / p99 | {o['p50']} / {o['p99']} ms | p50 <= 10 ms |",
        f"| canonical forms' added time per decision, p50 | {c['p50']} ms | <= 3 ms |",
    ]
    if "first_token" in result:
        f = result["first_token"]
        rows.append(f"| time to first streamed piece, bare runner vs guard (sentence held until checked) | {f['bare_s']} s vs {f['guard_s']} s | |")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", type=Path, default=HERE.parent / "tests" / "data" / "einstein" / "policy.yaml")
    ap.add_argument("--no-stream", action="store_true", help="skip the time-to-first-token measurement (loads the LM)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    import os

    with tempfile.TemporaryDirectory(prefix="eco-stage-speed-") as tmp:
        fit_guard(args.policy, Path(tmp) / "guard", seed=0, progress=False)
        guard = Guard.load(Path(tmp) / "guard", audit=False)
        result: dict[str, Any] = {"load_average": round(os.getloadavg()[0], 1), **stage_costs(guard)}
        if not args.no_stream:
            result["first_token"] = first_token_s(guard, "What is the capital of Australia?")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stage_speed.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    md = ["| metric | value | goal |", "|---|---|---|", *markdown(result), "", f"Load average at start: {result['load_average']}."]
    (args.out / "stage_speed.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
