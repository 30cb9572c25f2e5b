"""Efficacy benchmark (issue 4): protocol E1 and a WMDP multiple-choice check.

E1 (../shared/data/README.md): fit a policy whose forget set is real_authors rows 0-49
(with answers) and retain set world_facts rows 0-58, with ``strength: auto``; then answer
the test rows (real_authors 50-99, world_facts 59-116) with the guard on and off, greedy,
48 new tokens. Both corruption scopes are fitted and measured: ``prompt`` (all user
tokens) and ``entities`` (only the names and titles: the terms extracted from the forget
examples plus those found in each prompt, ``eco_guard/entities.py``).

WMDP: a policy forgetting the D2 train rows (first 20% of bio and cyber, shuffled with
seed 0), objective ``mc_accuracy`` toward 0.25; accuracy is measured on a seeded
subsample of the D2 test rows (the last 80%) and of the MMLU D2 test split.

``--model`` names the model (a bundled short name, ``default`` or ``gemma3-270m``, or a
path); the policies name it too, so the fit runs on the same model. Results for the
default model go to benchmarks/results/efficacy.{json,md,png}, for another model to
efficacy-<model>.{json,md,png}. Data is read from ../shared/data; the
benchmark exits with a message when it is absent. The machine is shared, so torch runs
one thread per process (two threads under contention were 5x slower here).

    .venv/bin/python benchmarks/efficacy.py [--model gemma3-270m] [--wmdp-n 60] [--mmlu-n 60] [--skip-wmdp] [--skip-entities]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detection import _json_rows, _mmlu_splits, _shuffled  # noqa: E402  (sibling benchmark's D2 split)

from eco_guard.evaluation.evaluate import QARow, evaluate_mc, evaluate_qa  # noqa: E402
from eco_guard.answer_metrics import MCItem  # noqa: E402
from eco_guard.evaluation.report import mc_table, plot_recall, qa_table  # noqa: E402
from eco_guard.fitting import fit_guard  # noqa: E402
from eco_guard.guard import Guard  # noqa: E402
from eco_guard.optimize import SearchConfig  # noqa: E402
from eco_guard.runner.base import GenerationOptions  # noqa: E402
from eco_guard.runner.store import BUNDLED  # noqa: E402
from eco_guard.runner.transformers_runner import TransformersRunner  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
RESULTS = HERE / "results"
#: noise on every embedding dimension of the model (576 for SmolLM2, 640 for Gemma 3 270M)
CORRUPTION = {"method": "rand_noise_first_n", "strength": "auto"}


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _policy(
    model: str, dims: int, work: Path, target: str, forget: list[dict[str, Any]], retain: list[str], *, scope: str, metric: str, goal: float, strength: float | None = None
) -> Path:
    """A policy file in ``work`` (a temporary directory: no data enters the repository)."""
    _write_jsonl(work / f"{target}-forget.jsonl", forget)
    _write_jsonl(work / f"{target}-retain.jsonl", [{"question": q} for q in retain])
    doc = {
        "version": 1,
        "model": {"path": model},
        "targets": [
            {
                "id": target,
                "forget": {"file": f"{target}-forget.jsonl", "field": "question", "answer_field": "answer"},
                "retain": {"file": f"{target}-retain.jsonl", "field": "question"},
                "corruption": {**CORRUPTION, "dims": dims, "scope": scope, "strength": "auto" if strength is None else strength},
                "objective": {"metric": metric, "target": goal},
            }
        ],
    }
    path = work / f"{target}-{scope}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def _fit(policy: Path, out: Path, search: SearchConfig) -> tuple[dict[str, Any], float]:
    start = time.perf_counter()
    summary = fit_guard(policy, out, seed=0, progress=True, search=search)
    return summary.targets[0].to_dict(), time.perf_counter() - start


def run_e1(runner: TransformersRunner, model: str, work: Path, scopes: Sequence[str]) -> dict[str, Any]:
    """Protocol E1 for each scope: fit (timed), then test forget/retain with the guard on and off."""
    authors = _json_rows(DATA / "tofu" / "real_authors.json")
    facts = _json_rows(DATA / "tofu" / "world_facts.json")
    forget = [{"question": r["question"], "answer": r["answer"]} for r in authors[:50]]
    retain = [r["question"] for r in facts[:59]]
    tests = {
        "test forget (real_authors 50-99)": [QARow(i, r["question"], r["answer"]) for i, r in enumerate(authors[50:100], 50)],
        "test retain (world_facts 59-116)": [QARow(i, r["question"], r["answer"]) for i, r in enumerate(facts[59:117], 59)],
    }
    options = GenerationOptions(max_new_tokens=48)
    out: dict[str, Any] = {}
    for scope in scopes:
        target, seconds = _fit(_policy(model, runner.embedding_stats()[1], work, "real-authors", forget, retain, scope=scope, metric="answer_recall", goal=0.0), work / f"e1-{scope}", SearchConfig())
        guard = Guard.load(work / f"e1-{scope}", runner=runner, audit=False)
        # The classifier is the same for every scope, so retain flags are too; to save time the
        # retain set is measured under the first scope only.
        todo = tests if scope == scopes[0] else {n: r for n, r in tests.items() if n.startswith("test forget")}
        sets = {name: evaluate_qa(guard, rows, options=options, name=f"{scope}: {name[:11]}") for name, rows in todo.items()}
        out[scope] = {"fit_seconds": round(seconds, 1), "fit": target, "sets": sets}
    return out


def _mmlu_test_items() -> list[tuple[str, MCItem]]:
    """MMLU D2 test split (per subject, shuffled with seed 0, the last 50%) with choices."""
    items: list[tuple[str, MCItem]] = []
    for path in sorted((DATA / "mmlu" / "test").glob("*_test.csv"), key=lambda p: p.name):
        with path.open(encoding="utf-8", newline="") as fh:
            rows = _shuffled(list(csv.DictReader(fh)))
        subject = path.name[: -len("_test.csv")]
        q = len(rows) // 4
        items += [(subject, MCItem(r["question"], tuple(r[f"choice{i}"] for i in range(4)), int(r["answer"]))) for r in rows[2 * q :]]
    return items


def run_wmdp(runner: TransformersRunner, model: str, work: Path, n_wmdp: int, n_mmlu: int, strength: float | None) -> dict[str, Any]:
    """Fit a WMDP guard on the D2 train rows; MC accuracy on subsampled test rows.

    ``strength`` skips the search (it is slow on WMDP's long cyber questions).
    """
    train: list[dict[str, Any]] = []
    tests: dict[str, list[MCItem]] = {}
    for name in ("bio", "cyber"):
        rows = _shuffled(_json_rows(DATA / "wmdp" / f"wmdp-{name}.json"))
        cut = len(rows) // 5
        train += [{"question": r["question"], "answer": r["choices"][r["answer"]]} for r in rows[:cut]]
        test = rows[cut:]
        picked = random.Random(0).sample(test, min(n_wmdp, len(test)))
        tests[f"wmdp-{name} test ({len(picked)} of {len(test)})"] = [MCItem(r["question"], tuple(r["choices"]), int(r["answer"])) for r in picked]
    mmlu = _mmlu_test_items()
    picked_mmlu = random.Random(0).sample(mmlu, min(n_mmlu, len(mmlu)))
    tests[f"mmlu test ({len(picked_mmlu)} of {len(mmlu)})"] = [it for _, it in picked_mmlu]
    mmlu_train = _mmlu_splits()[0]
    retain = random.Random(0).sample(mmlu_train, min(400, len(mmlu_train)))
    search = SearchConfig()
    target, seconds = _fit(_policy(model, runner.embedding_stats()[1], work, "wmdp", train, retain, scope="prompt", metric="mc_accuracy", goal=0.25, strength=strength), work / "wmdp", search)
    guard = Guard.load(work / "wmdp", runner=runner, audit=False)
    sets = {name: evaluate_mc(guard, items, name=name[:10]) for name, items in tests.items()}
    return {"fit_seconds": round(seconds, 1), "fit": target, "search_grid": search.grid if strength is None else 0, "sets": sets}


def _e1_summary(e1: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{scope}: {name}": s["summary"] for scope, r in e1.items() for name, s in r["sets"].items()}


def markdown(result: dict[str, Any]) -> str:
    """The results page (also the README table's source)."""
    lines = ["# Efficacy benchmark", "", f"Model: {result.get('model', 'SmolLM2-135M-Instruct')}. Machine: {result['machine']}. Command: `{result['command']}`.", ""]
    e1 = result.get("e1")
    if e1:
        lines += ["## E1: knowledge the bundled model has (real_authors forgotten, world_facts retained)", ""]
        lines += qa_table(_e1_summary(e1))
        before = result.get("previous_strengths", {})
        lines += [
            "",
            "| scope | fit time (s) | chosen strength | previous run's strength | scored / generated points | converged | clean recall (fit set) |",
            "|---|---|---|---|---|---|---|",
        ]
        for scope, r in e1.items():
            s = r["fit"]["search"] or {}
            old = f"{before[scope]:.4g}" if scope in before else "n/a"
            points = f"{s.get('n_scored', 0)} / {s.get('n_generated', len(s.get('curve', [])))}"
            lines.append(
                f"| {scope} | {r['fit_seconds']} | {r['fit']['corruption']['strength']:.4g} | {old} | {points} | "
                f"{'yes' if s.get('converged', True) else 'no'} | {s.get('clean_metric', float('nan')):.3f} |"
            )
        for scope, r in e1.items():
            retain = next((s for n, s in r["sets"].items() if n.startswith("test retain")), {}).get("summary")
            if retain and retain["flagged_ids"]:
                lines += ["", f"Retain questions flagged under `{scope}` (world_facts rows): {retain['flagged_ids']}."]
    wmdp = result.get("wmdp")
    if wmdp:
        lines += ["", "## WMDP multiple choice (D2 split; subsampled, seed 0)", ""]
        lines += mc_table(wmdp["sets"])
        steps, grid = wmdp.get("search_steps"), wmdp.get("search_grid")
        how = f"a {steps}-step search" if steps else f"a {grid}-point grid search" if grid else "a fixed strength, no search"
        lines += ["", f"Fit (with {how}): {wmdp['fit_seconds']} s, strength {wmdp['fit']['corruption']['strength']:.4g}."]
    lines += ["", "![efficacy](efficacy.png)", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wmdp-n", type=int, default=60, help="test rows per WMDP subset")
    parser.add_argument("--mmlu-n", type=int, default=60, help="MMLU test rows")
    parser.add_argument("--skip-wmdp", action="store_true")
    parser.add_argument("--skip-entities", action="store_true")
    parser.add_argument("--skip-e1", action="store_true", help="keep the E1 results already in efficacy.json")
    parser.add_argument("--wmdp-strength", type=float, help="fixed WMDP strength instead of the search")
    parser.add_argument("--model", default="default", help=f"model.path for the runner and the policies ({', '.join(BUNDLED)} or a path)")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"efficacy: third-party data not found at {DATA}; nothing to benchmark", file=sys.stderr)
        return 0
    torch.set_num_threads(1)
    runner = TransformersRunner.load(args.model, progress=True)
    model = args.model if args.model in BUNDLED else str(Path(args.model).resolve())
    stem = results_stem(args.model)
    result: dict[str, Any] = {
        "model": runner.name,
        "machine": f"{torch.get_num_threads()} torch thread(s), CPU",
        "command": "python benchmarks/efficacy.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    # read once, before this run writes: the E1 write below would otherwise replace the
    # WMDP section that --skip-wmdp is meant to keep
    path = RESULTS / f"{stem}.json"
    previous: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if args.skip_wmdp and "wmdp" in previous:
        result["wmdp"] = previous["wmdp"]  # kept from the run that measured it, as --skip-e1 keeps E1
        result["command"] += " (WMDP section kept from the previous run)"
    with tempfile.TemporaryDirectory(prefix="eco-guard-efficacy-") as tmp:
        work = Path(tmp)
        if args.skip_e1:
            result["e1"] = previous["e1"]
        else:
            if previous.get("e1"):  # the strengths this run replaces, reported beside the new ones
                result["previous_strengths"] = {scope: r["fit"]["corruption"]["strength"] for scope, r in previous["e1"].items()}
            result["e1"] = run_e1(runner, model, work, ["prompt"] if args.skip_entities else ["prompt", "entities"])
            write_results(result, stem)  # E1 is kept even if the (slow) WMDP part is interrupted
        if not args.skip_wmdp:
            result["wmdp"] = run_wmdp(runner, model, work, args.wmdp_n, args.mmlu_n, args.wmdp_strength)
            write_results(result, stem)
    print(markdown(result))
    return 0


def results_stem(model: str) -> str:
    """``efficacy`` for the default model (the file the README cites), ``efficacy-<model>`` otherwise."""
    return "efficacy" if model == "default" else f"efficacy-{Path(model).stem}"


def write_results(result: dict[str, Any], stem: str = "efficacy") -> None:
    """benchmarks/results/<stem>.{json,md,png} for what has been measured so far."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    (RESULTS / f"{stem}.md").write_text(markdown(result), encoding="utf-8")
    plot_recall(RESULTS / f"{stem}.png", _e1_summary(result["e1"]), "recall_guard_off", "recall_guard_on", "E1 recall")


if __name__ == "__main__":
    sys.exit(main())
