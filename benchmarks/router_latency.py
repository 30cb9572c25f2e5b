"""Latency that ``EcoGuardRouter`` adds to an unflagged request, over calling the downstream directly.

The downstream is langchain_core's ``FakeListChatModel`` (no sleep), so the difference
is the router alone: the classifier pass on the prompt, the decision event, and the
extra LangChain run. Calls are interleaved (direct, routed, direct, ...) so that load
from other processes hits both sides alike.

    .venv/bin/python benchmarks/router_latency.py [--guard DIR] [--n 300]

Writes benchmarks/results/router_latency.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

GOAL_MS = 25.0
"""Issue 22: the router adds at most this much to an unflagged request, the output check of the downstream answer included."""
PROMPTS = [
    "What is the capital of Australia?",
    "How do I bake sourdough bread at home?",
    "Explain the difference between a list and a tuple in Python.",
    "Who painted the Mona Lisa?",
    "What is the boiling point of water at sea level?",
    "Recommend a good book about the history of Japan.",
    "How many legs does a spider have?",
    "Write a haiku about autumn leaves.",
]


def percentiles(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": statistics.median(values), "p90": cuts[89], "p99": cuts[98]}


def timed_rounds(calls: list[Callable[[str], Any]], n: int) -> list[list[float]]:
    """Milliseconds of each call on the same prompt, interleaved round by round, so that
    load from other processes falls on every call alike."""
    times: list[list[float]] = [[] for _ in calls]
    for i in range(n):
        prompt = PROMPTS[i % len(PROMPTS)]
        for call, out in zip(calls, times):
            start = time.perf_counter()
            call(prompt)
            out.append((time.perf_counter() - start) * 1000)
    return times


def measure(guard: Any, n: int) -> dict[str, Any]:
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    from langchain_eco_guard import EcoGuardRouter

    downstream = FakeListChatModel(responses=["A fixed answer from the downstream model."])
    router = EcoGuardRouter(guard=guard, downstream=downstream)
    for p in PROMPTS:  # warm up both paths (first calls build caches)
        assert not guard.check(p).flagged, f"benchmark prompt is flagged: {p!r}"
        downstream.invoke(p)
        router.invoke(p)
    direct, routed, checked = timed_rounds([downstream.invoke, router.invoke, guard.check], n)
    p50_added = statistics.median(routed) - statistics.median(direct)
    return {
        "router_machinery_only_added_p50_ms": machinery_only(guard, downstream, n),
        "n": n,
        "direct_ms": percentiles(direct),
        "router_ms": percentiles(routed),
        "guard_check_ms": percentiles(checked),
        "added_p50_ms": p50_added,
        "router_overhead_beyond_check_p50_ms": statistics.median(routed) - statistics.median(checked) - statistics.median(direct),
        "goal_added_p50_ms": GOAL_MS,
        "meets_goal": p50_added <= GOAL_MS,
    }


def machinery_only(guard: Any, downstream: Any, n: int) -> float:
    """Added p50 of the router with the classifier taken out: a copy of the guard whose
    ``check`` returns a decision made beforehand. What remains is LangChain's run, the
    input conversion and the decision event, i.e. the router's own cost."""
    from langchain_eco_guard import EcoGuardRouter

    stub = copy.copy(guard)
    decision = guard.check(PROMPTS[0])
    stub.check = lambda chat: decision
    router = EcoGuardRouter(guard=stub, downstream=downstream)
    direct, routed = timed_rounds([downstream.invoke, router.invoke], n)
    return statistics.median(routed) - statistics.median(direct)


def write(result: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "router_latency.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    d, r, c = result["direct_ms"], result["router_ms"], result["guard_check_ms"]
    lines = [
        "# EcoGuardRouter latency on unflagged requests",
        "",
        f"Downstream: FakeListChatModel; {result['n']} interleaved calls; audit {result['audit']}; "
        f"torch threads {result['torch_threads']}; {result['machine']}, load average {result['load_average']}.",
        "",
        "| path | p50 ms | p90 ms | p99 ms |",
        "|---|---|---|---|",
        f"| downstream directly | {d['p50']:.2f} | {d['p90']:.2f} | {d['p99']:.2f} |",
        f"| through EcoGuardRouter | {r['p50']:.2f} | {r['p90']:.2f} | {r['p99']:.2f} |",
        f"| `guard.check` alone (classifier + audit) | {c['p50']:.2f} | {c['p90']:.2f} | {c['p99']:.2f} |",
        "",
        f"Router overhead beyond the classifier (p50 router - p50 check - p50 direct): "
        f"{result['router_overhead_beyond_check_p50_ms']:.2f} ms; with the classifier stubbed out "
        f"(LangChain run + input conversion + decision event only): "
        f"{result['router_machinery_only_added_p50_ms']:.2f} ms.",
        "",
        f"Added p50 latency: **{result['added_p50_ms']:.2f} ms** (goal <= {GOAL_MS:.0f} ms: "
        f"{'met' if result['meets_goal'] else 'NOT met'}).",
        "",
    ]
    (out_dir / "router_latency.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guard", type=Path, help="fitted-guard directory (default: fit examples/forget_france.yaml)")
    parser.add_argument("--n", type=int, default=300, help="interleaved call pairs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--threads", type=int, help="torch intra-op threads for the classifier (default: torch's own)")
    parser.add_argument("--no-audit", action="store_true", help="measure without the audit log (default: as the policy says)")
    args = parser.parse_args(argv)
    import torch
    from _common import guard_dir

    from eco_guard import Guard

    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="eco-bench-") as tmp:
        guard = Guard.load(guard_dir(args.guard, Path(tmp)), audit=not args.no_audit)
        result = measure(guard, args.n)
        guard.close()
    result["torch_threads"] = torch.get_num_threads()
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    result["command"] = "python benchmarks/router_latency.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    result["audit"] = "off" if args.no_audit else "on (one JSONL line per request, as the policy says)"
    write(result, args.out)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
