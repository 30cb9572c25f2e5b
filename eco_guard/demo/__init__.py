"""``eco-guard demo``: a self-contained tour on the bundled models.

It fits the bundled "forget France" policy, then asks one question the policy covers
and one it does not, each through the guard and through the bare model, and prints
both decisions. The point to see: the flagged answer loses the fact, the unflagged one
is exactly the bare model's.
"""

from __future__ import annotations

import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

QUESTIONS = ("What is the capital of France?", "What is the capital of Australia?")


def run_demo(out_dir: Path | None = None, *, max_new_tokens: int = 48) -> int:
    from ..fitting import fit_guard
    from ..guard import Guard
    from ..runner.base import GenerationOptions, bare_rows

    start = time.perf_counter()
    work = out_dir or Path(tempfile.mkdtemp(prefix="eco-guard-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    policy = work / "france.yaml"
    policy.write_text(resources.files(__package__).joinpath("france.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    print(f"eco-guard demo: policy {policy}", file=sys.stderr)
    fit_guard(policy, work / "guard", seed=0, progress=True)
    guard = Guard.load(work / "guard", progress=True)
    options = GenerationOptions(max_new_tokens=max_new_tokens)
    guarded = guard.batch(list(QUESTIONS), options)
    bare = guard.runner.generate(bare_rows(QUESTIONS), options)

    out = sys.stdout
    out.write("\neco-guard demo: policy 'forget facts about France' (bundled SmolLM2-135M-Instruct)\n")
    for q, r, b in zip(QUESTIONS, guarded, bare):
        d = r.decision
        out.write("\n" + "=" * 78 + "\n")
        out.write(f"Q: {q}\n")
        out.write(
            f"decision: flagged={d.flagged} action={d.action} target={d.target} "
            f"score={d.score:.3f} threshold={d.threshold:.3f} latency={d.latency_ms:.1f} ms\n"
        )
        if d.corruption:
            c = d.corruption
            out.write(f"corruption: {c['method']} dims={c['dims']} strength={c['strength']:.3g} seed={c['seed']}\n")
        out.write(f"guarded answer: {r.text}\n")
        out.write(f"bare model:     {b}\n")
        out.write(f"identical to bare model: {r.text == b}\n")
    out.write("\n" + "=" * 78 + "\n")
    out.write(f"audit log: {work / 'audit.jsonl'}   guard: {work / 'guard'}   ({time.perf_counter() - start:.0f} s)\n")
    guard.close()
    return 0
