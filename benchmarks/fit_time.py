"""Fit time (issue 23): how long a user waits between editing a policy and having its guard.

One process, fitting each policy twice through ``fit_guard`` (what ``eco-guard fit`` runs):
first with an empty fit cache (``fresh``: clean answers and strength searches computed),
then again (``warm``: both reused). The model and encoder caches are warm in both, as
after ``make install`` and one first run. Policies:

- ``demo``: the bundled demo policy (``eco_guard/demo/france.yaml``), whose strength is
  pinned to what the search finds for it; ``demo, strength: auto`` runs that search;
- ``one person (prompt|entities)``: eight questions about William Shakespeare with
  answers (``benchmarks/data/shakespeare/``, written for this benchmark), ten retain
  questions about other people, ``strength: auto``, each corruption scope;
- ``D3 auto``: protocol D3's policy (20 authors of five questions, no answers) with the
  default ``strength: auto``; plus a refit after editing one target's forget examples
  (``D3 refit after one edit``), which should redo only that target's search;
- ``E1 (prompt|entities)``: protocol E1's policy (``benchmarks/efficacy.py``).

Also measured, as subprocesses of the real CLI: the bare model answering the one-person
policy's eight questions (``eco-guard generate --no-guard``, 128 new tokens, the CLI's
default), a fit of the same policy (``eco-guard fit``, warm fit cache and fresh), and the
rejection of a policy with a typo'd key. The ratio fit / bare answering is what the issue
asks (<= 3x). The machine is shared, so every row notes the load average (``uptime``)
when it ran; compare ratios measured in this one run rather than absolute seconds.

Writes benchmarks/results/fit_time.{json,md}. D3 and E1 need ../shared/data (skipped,
with a note, when it is absent).

    .venv/bin/python benchmarks/fit_time.py [--skip-d3] [--skip-e1] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = ROOT.parent / "shared" / "data"
PERSON = HERE / "data" / "shakespeare"
RESULTS = HERE / "results"
GOALS = {"demo": 20.0, "one person (prompt)": 30.0, "one person (entities)": 30.0, "D3 auto": 90.0, "E1 (prompt)": 60.0, "E1 (entities)": 60.0}


def load_average() -> str:
    """The 1-minute load average (the machine is shared; say how busy it was)."""
    return f"{os.getloadavg()[0]:.2f}"


def person_policy(work: Path, scope: str) -> Path:
    """The one-person policy for ``scope``, referring to the repository's data files."""
    doc = {
        "version": 1,
        "targets": [
            {
                "id": "shakespeare",
                "description": "William Shakespeare: his life and works.",
                "forget": {"file": str(PERSON / "forget.jsonl"), "field": "question", "answer_field": "answer"},
                "retain": {"file": str(PERSON / "retain.jsonl"), "field": "question"},
                "corruption": {"method": "rand_noise_first_n", "dims": 576, "strength": "auto", "scope": scope},
            }
        ],
    }
    path = work / f"shakespeare-{scope}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def demo_policy(work: Path, *, auto: bool = False) -> Path:
    """The bundled demo policy; ``auto``: with its pinned strength put back to ``auto`` (the search it pins)."""
    text = resources.files("eco_guard.demo").joinpath("france.yaml").read_text(encoding="utf-8")
    if auto:
        pinned = [line for line in text.splitlines() if line.strip().startswith("strength:")]
        assert len(pinned) == 1, "the demo policy pins one strength"
        text = text.replace(pinned[0], pinned[0].split(":")[0] + ": auto")
    path = work / ("france-auto.yaml" if auto else "france.yaml")
    path.write_text(text, encoding="utf-8")
    return path


def d3_policy(work: Path) -> Path:
    """D3's policy as detection.py writes it, with the corruption left at its default (``strength: auto``)."""
    from detection import protocol_d3, write_policy

    work.mkdir(parents=True, exist_ok=True)
    path = write_policy(protocol_d3(), work)
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    for target in doc["targets"]:
        target.pop("corruption")
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def e1_policy(work: Path, scope: str) -> Path:
    from detection import _json_rows
    from efficacy import _policy

    authors = _json_rows(DATA / "tofu" / "real_authors.json")
    facts = _json_rows(DATA / "tofu" / "world_facts.json")
    forget = [{"question": r["question"], "answer": r["answer"]} for r in authors[:50]]
    return _policy("default", 576, work, "real-authors", forget, [r["question"] for r in facts[:59]], scope=scope, metric="answer_recall", goal=0.0)


def timed_fit(policy: Path, out: Path) -> dict[str, Any]:
    from eco_guard.fitting import fit_guard

    load = load_average()
    start = time.perf_counter()
    result = fit_guard(policy, out, seed=0, progress=False)
    seconds = time.perf_counter() - start
    searches = [t.search for t in result.targets if t.search is not None]
    return {
        "seconds": round(seconds, 2),
        "load": load,
        "reused": {k: list(v) for k, v in result.reused.items()},
        "strengths": [round(t.fitted.corruption.strength, 4) for t in result.targets],
        "converged": sum(s.converged for s in searches),
        "searched": len(searches),
        "generated_points": sum(s.n_generated for s in searches),
        "scored_points": sum(s.n_scored for s in searches),
        "warnings": [w.code for w in result.warnings],
        "summary": result.summary_line(),
    }


def fresh_and_warm(name: str, make: Callable[[Path], Path], work: Path, fits: Path) -> dict[str, Any]:
    """Fit ``make(work)`` with an empty fit cache, then again with it warm."""
    print(f"{name}: fresh fit ...", file=sys.stderr)
    os.environ["ECO_GUARD_FIT_CACHE"] = str(fits / name.replace(" ", "_").replace("(", "").replace(")", ""))
    policy = make(work)
    fresh = timed_fit(policy, work / "guard-fresh")
    print(f"{name}: {fresh['seconds']} s; warm fit ...", file=sys.stderr)
    warm = timed_fit(policy, work / "guard-warm")
    assert warm["strengths"] == fresh["strengths"], f"{name}: a warm fit chose other strengths"
    return {"policy": name, "fresh": fresh, "warm": warm, "goal_s": GOALS.get(name)}


def d3_refit(work: Path, fits: Path) -> dict[str, Any]:
    """D3 fitted fresh, then refitted after one target's first forget example was edited."""
    row = fresh_and_warm("D3 auto", d3_policy, work, fits)
    target = work / "author-00.forget.jsonl"
    lines = target.read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    first["text"] = first["text"].rstrip("?") + ", in a few words?"
    target.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n", encoding="utf-8")
    print("D3: refit after editing one target ...", file=sys.stderr)
    edited = timed_fit(work / "policy.yaml", work / "guard-edited")
    edited["fraction_of_fresh"] = round(edited["seconds"] / row["fresh"]["seconds"], 3)
    row["refit_after_one_edit"] = edited
    return row


def cli(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """Wall seconds, exit code and stderr tail of one ``eco-guard`` run."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from eco_guard.cli import main; sys.argv[0] = 'eco-guard'; main()", *argv],
        cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
    )
    return time.perf_counter() - start, proc.returncode, proc.stderr[-400:]


def cli_rows(work: Path, fits: Path, guard: Path) -> dict[str, Any]:
    """The CLI comparisons: bare answering vs fit of the one-person policy, and a typo'd policy."""
    policy = person_policy(work, "entities")
    questions = work / "questions.jsonl"
    questions.write_text((PERSON / "forget.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    load = load_average()
    bare_s, rc, err = cli("generate", "--no-guard", "--guard", str(guard), "--input", str(questions), "--output", str(work / "bare.jsonl"), "--field", "question", cwd=work)
    assert rc == 0, err
    env = {"ECO_GUARD_FIT_CACHE": str(fits / "cli")}
    fit_fresh_s, rc, err = cli("fit", str(policy), "--out", str(work / "cli-guard"), cwd=work, env=env)
    assert rc == 0, err
    fit_warm_s, rc, err = cli("fit", str(policy), "--out", str(work / "cli-guard2"), cwd=work, env=env)
    assert rc == 0, err
    bad = work / "typo.yaml"
    bad.write_text(policy.read_text(encoding="utf-8").replace("targets:", "targts:"), encoding="utf-8")
    typo_s, typo_rc, typo_err = cli("fit", str(bad), "--out", str(work / "typo-guard"), cwd=work)
    return {
        "load": load,
        "bare_answering_s": round(bare_s, 2),
        "fit_fresh_s": round(fit_fresh_s, 2),
        "fit_warm_s": round(fit_warm_s, 2),
        "fit_fresh_over_bare": round(fit_fresh_s / bare_s, 2),
        "fit_warm_over_bare": round(fit_warm_s / bare_s, 2),
        "typo_s": round(typo_s, 2),
        "typo_exit": typo_rc,
        "typo_message": typo_err.strip().splitlines()[0] if typo_err.strip() else "",
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Fit time",
        "",
        f"{result['machine']}; torch threads {result['threads']}. Load average (1 min) beside each row: the machine is shared.",
        "",
        "| policy | fresh fit (s) | warm fit (s) | goal (s) | strengths | converged | generated / scored points | load (fresh, warm) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        f, w = row["fresh"], row["warm"]
        strengths = ", ".join(f"{s:.3g}" for s in f["strengths"][:3]) + (" ..." if len(f["strengths"]) > 3 else "")
        lines.append(
            f"| {row['policy']} | {f['seconds']} | {w['seconds']} | {row['goal_s'] or ''} | {strengths} | "
            f"{f['converged']} of {f['searched']} | {f['generated_points']} / {f['scored_points']} | {f['load']}, {w['load']} |"
        )
        if "refit_after_one_edit" in row:
            e = row["refit_after_one_edit"]
            lines.append(
                f"| D3 refit after one edit | {e['seconds']} ({e['fraction_of_fresh']:.0%} of fresh) | | 25% of fresh | | | "
                f"reused {e['reused']} | {e['load']} |"
            )
    c = result.get("cli")
    if c:
        lines += [
            "",
            "CLI, as subprocesses (process start and model load included), one-person policy, entities scope:",
            "",
            f"- bare model answering its 8 questions (`eco-guard generate --no-guard`, 128 new tokens): {c['bare_answering_s']} s (load {c['load']})",
            f"- `eco-guard fit`, fresh fit cache: {c['fit_fresh_s']} s = {c['fit_fresh_over_bare']}x the bare answering (goal <= 3x)",
            f"- `eco-guard fit`, warm fit cache: {c['fit_warm_s']} s = {c['fit_warm_over_bare']}x",
            f"- a policy with a typo'd key: exit {c['typo_exit']} in {c['typo_s']} s (goal: exit 2 in <= 2 s): `{c['typo_message']}`",
        ]
    for note in result["notes"]:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (one: two threads on a busy 2-core machine ran several times slower; the CLI uses torch's default)")
    ap.add_argument("--skip-d3", action="store_true")
    ap.add_argument("--skip-e1", action="store_true")
    ap.add_argument("--skip-cli", action="store_true")
    args = ap.parse_args()
    import platform

    import torch

    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    result = {
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "threads": args.threads,
        "command": "python benchmarks/fit_time.py " + " ".join(sys.argv[1:]),
        "rows": rows,
        "cli": None,
        "notes": notes,
    }

    def save() -> None:  # after every row: a long run that is stopped keeps what it measured
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "fit_time.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
        (args.out / "fit_time.md").write_text(markdown(result), encoding="utf-8")

    with tempfile.TemporaryDirectory(prefix="eco-guard-fit-time-") as tmp:
        work, fits = Path(tmp), Path(tmp) / "fits"
        (work / "demo").mkdir()
        rows.append(fresh_and_warm("demo", demo_policy, work / "demo", fits))
        save()
        (work / "demo-auto").mkdir()
        rows.append(fresh_and_warm("demo, strength: auto", lambda w: demo_policy(w, auto=True), work / "demo-auto", fits))
        save()
        if not args.skip_cli:
            result["cli"] = cli_rows(work, fits, work / "demo" / "guard-fresh")
            save()
        for scope in ("prompt", "entities"):
            (work / scope).mkdir()
            rows.append(fresh_and_warm(f"one person ({scope})", lambda w, s=scope: person_policy(w, s), work / scope, fits))
            save()
        have_data = (DATA / "tofu").is_dir()
        if not have_data:
            notes.append(f"D3 and E1 skipped: {DATA} is absent.")
        if have_data and not args.skip_d3:
            rows.append(d3_refit(work / "d3", fits))
            save()
        if have_data and not args.skip_e1:
            for scope in ("prompt", "entities"):
                (work / f"e1-{scope}").mkdir()
                rows.append(fresh_and_warm(f"E1 ({scope})", lambda w, s=scope: e1_policy(w, s), work / f"e1-{scope}", fits))
                save()
    save()
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
