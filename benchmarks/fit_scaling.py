"""How `eco-guard fit` scales with the number of targets: a "forget these people" policy
that grows by one person per request.

Two measurements, on made-up people of two questions each (no retain examples, so each
gets name-swapped copies, as such a policy would):

- classifier fit time for 20 and 60 targets (`action: refuse`, so no strength search):
  the feature choice judges at most 20 targets (`training.SELECTION_TARGETS`), so past
  20 the time grows with the final heads only;
- the `strength: auto` searches of 5 and 20 targets run together (what `fit` does,
  `optimize.search_strengths`) against one after another (`optimize.search_strength`
  per target), in this one process, with the searched strengths compared.

With the shared data present, it also times the fit of protocol D3's policy as a user
would write it: `benchmarks/detection.py`'s D3 policy without its fixed strength, so
every author's strength is searched (`strength: auto`, the default).

Writes benchmarks/results/fit_scaling.json and fit_scaling.md.

    .venv/bin/python benchmarks/fit_scaling.py [--out DIR] [--skip-d3]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from detection import DATA, protocol_d3, write_policy  # type: ignore[import-not-found]
from speed import FIRST, LAST  # type: ignore[import-not-found]

from eco_guard.corruption import Corruption
from eco_guard.fitting import default_strength, embedding_stats, fit_guard
from eco_guard.optimize import SearchConfig, SearchJob, search_strength, search_strengths
from eco_guard.runner.base import MaskSpec
from eco_guard.runner.transformers_runner import TransformersRunner

HERE = Path(__file__).resolve().parent


def people(n: int) -> list[tuple[str, list[str]]]:
    """``n`` made-up people, each with two questions about them."""
    names = [f"{f} {l}" for l in LAST for f in FIRST][:n]
    return [(name, [f"Where was {name} born?", f"Which books did {name} write?"]) for name in names]


def write_people_policy(work: Path, n: int) -> Path:
    lines = ["version: 1", "targets:"]
    for i, (_, questions) in enumerate(people(n)):
        (work / f"p{i}.txt").write_text("\n".join(questions) + "\n", encoding="utf-8")
        lines += [f"  - id: person-{i}", f"    forget: {{file: p{i}.txt}}", "    action: refuse"]
    path = work / f"people-{n}.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def timed_fit(policy: Path) -> tuple[float, dict[str, Any]]:
    """Seconds `fit_guard` takes on ``policy`` (guard written beside it), and its report.json."""
    start = time.perf_counter()
    fit_guard(policy, policy.parent / "guard", progress=False)
    seconds = time.perf_counter() - start
    return seconds, json.loads((policy.parent / "guard" / "report.json").read_text(encoding="utf-8"))


def time_fit(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="eco-guard-fit-scaling-") as tmp:
        seconds, report = timed_fit(write_people_policy(Path(tmp), n))
    return {"targets": n, "fit_s": round(seconds, 1), "features": report["targets"][0]["feature_view_note"]}


def time_d3_auto() -> dict[str, Any] | None:
    """Fit of D3's policy with every strength searched; None without the shared data."""
    if not DATA.is_dir():
        print(f"skipping D3: evaluation data not found at {DATA}", file=sys.stderr)
        return None
    protocol = protocol_d3()
    with tempfile.TemporaryDirectory(prefix="eco-guard-fit-scaling-d3-") as tmp:
        policy = write_policy(protocol, Path(tmp))
        doc = yaml.safe_load(policy.read_text(encoding="utf-8"))
        for target in doc["targets"]:
            target.pop("corruption")  # back to the default, strength: auto
        policy.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        seconds, report = timed_fit(policy)
    strengths = [round(t["corruption"]["strength"], 4) for t in report["targets"]]
    return {"targets": len(strengths), "fit_s": round(seconds, 1), "strengths": strengths}


def time_searches(runner: TransformersRunner, n: int, config: SearchConfig) -> dict[str, Any]:
    start = default_strength("rand_noise_first_n", 1, embedding_stats(runner))
    jobs = [
        SearchJob(questions, [None] * len(questions), Corruption("rand_noise_first_n", 1, start, seed=i), MaskSpec())
        for i, (_, questions) in enumerate(people(n))
    ]
    t0 = time.perf_counter()
    together = search_strengths(runner, jobs, config=config)
    t1 = time.perf_counter()
    alone = [search_strength(runner, j.questions, j.answers, j.base, j.mask, config=config) for j in jobs]
    t2 = time.perf_counter()
    same = sum(a.to_dict() == b.to_dict() for a, b in zip(together, alone))
    return {
        "targets": n,
        "together_s": round(t1 - t0, 1),
        "one_after_another_s": round(t2 - t1, 1),
        "speedup": round((t2 - t1) / (t1 - t0), 2),
        "same_result": f"{same} of {n}",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--skip-d3", action="store_true", help="skip the fit of D3's policy with searched strengths")
    args = ap.parse_args()
    fits = []
    for n in (20, 60):
        print(f"fitting {n} people (classifier only)...", file=sys.stderr)
        fits.append(time_fit(n))
    print("loading the bundled model...", file=sys.stderr)
    runner = TransformersRunner.load("default", progress=False)
    config = SearchConfig(progress=False)
    searches = []
    for n in (5, 20):
        print(f"searching strengths of {n} people, together and one after another...", file=sys.stderr)
        searches.append(time_searches(runner, n, config))
    d3 = None
    if not args.skip_d3:
        print("fitting D3's policy with strength: auto...", file=sys.stderr)
        d3 = time_d3_auto()
    result = {"machine": platform.platform(), "fits": fits, "searches": searches, "d3_auto": d3}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fit_scaling.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    md = [
        "# Fit scaling",
        "",
        "Made-up people, two questions each, no retain examples.",
        "",
        "| classifier fit (`action: refuse`) | seconds | feature choice |",
        "|---|---|---|",
        *(f"| {f['targets']} targets | {f['fit_s']} | {f['features']} |" for f in fits),
        "",
        "| `strength: auto` searches | together (fit) | one after another | speedup | same strength and curve |",
        "|---|---|---|---|---|",
        *(
            f"| {s['targets']} targets | {s['together_s']} s | {s['one_after_another_s']} s | {s['speedup']}x | {s['same_result']} |"
            for s in searches
        ),
    ]
    if d3 is not None:
        md += ["", f"D3's policy with `strength: auto` ({d3['targets']} authors, 5 questions each): fit in {d3['fit_s']} s."]
    (args.out / "fit_scaling.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
