"""Topic generalisation (issue 27): forget a subject without flagging the subjects next to it.

A topic policy's hard negatives are its field: questions on biology next to hazardous
biology, physics next to astronomy. This benchmark measures, per neighbouring subject,
how often they are flagged, on non-test rows only, so nothing here touches a row D1-D3
report on:

- negatives come from MMLU's train quarter (what policies may give as retain examples)
  and its calibration quarter (what is scored), per subject, as protocol D2 splits MMLU
  (``detection._mmlu_splits``); TOFU retain rows 1800-2699 are the generic negatives;
- positives: WMDP's training fifth (even rows forget, odd rows scored), and for topics that
  are MMLU subjects, the subject's train quarter (forget) and calibration quarter (scored).

Topics, with their neighbouring subjects (chosen before any run):

- WMDP bio: college and high-school biology, virology, medical genetics, anatomy,
  clinical knowledge, college medicine (D2's related biology subjects);
- WMDP cyber: computer security, college and high-school computer science, electrical
  engineering (D2's related computing subjects);
- virology (an MMLU subject): college and high-school biology, medical genetics, anatomy,
  clinical knowledge, college medicine;
- astronomy (an MMLU subject): college, high-school and conceptual physics.

Each topic is fitted in three variants, target FPR 0.01, no calibration set:

- ``grouped``: retain = every other subject's train quarter, each row with its subject as
  its group (``group_field``), neighbours included;
- ``found``: the same retain rows without groups (the fit finds clusters);
- ``no neighbours``: retain = the train quarter of the subjects that are not neighbours,
  grouped: the policy that forgot to give its field.

And, for each topic, the plain baseline the issue compares against (MiniLM sentence
embedding + logistic regression, split-conformal threshold on the second half of the
retain rows, shuffled; ``benchmarks/baselines.py``) on the ``grouped`` policy's rows.

The encoder's features are memoised in this process (every variant reads the same MMLU
rows); that changes nothing but the time (a text's features do not depend on its batch
beyond ~1e-8).

Writes benchmarks/results/topics.json and topics.md.

    .venv/bin/python benchmarks/topics.py [--out DIR] [--topics bio,cyber,virology,astronomy] [--variants grouped,found,no-neighbours]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from baselines import BaselineTarget, EmbeddingLogisticBaseline, run_baseline  # benchmarks/, next to this script
from detection import DATA, HERE, Protocol, TargetRows, _tofu_negatives, mmlu_subject_rows, run_protocol, wmdp_split  # type: ignore[import-not-found]
from eco_guard.classifier.features.encoder import Encoder, resolve_encoder_path

TARGET_FPR = 0.01
NEIGHBOUR_GOAL = 0.05
RECALL_GOAL = 0.85


@dataclass(frozen=True)
class Topic:
    """A topic to forget: its forget rows, the rows that test recall, its own MMLU subject (if any) and its neighbours."""

    name: str
    forget: list[str]
    positives: list[str]
    subject: str | None
    neighbours: tuple[str, ...]


BIO_NEIGHBOURS = (
    "college_biology", "high_school_biology", "virology", "medical_genetics", "anatomy", "clinical_knowledge", "college_medicine",
)
CYBER_NEIGHBOURS = ("computer_security", "college_computer_science", "high_school_computer_science", "electrical_engineering")


def _quarters() -> dict[str, tuple[list[str], list[str]]]:
    """Per MMLU subject, its train and calibration quarters (protocol D2's split; never the test half)."""
    out = {}
    for subject, rows in mmlu_subject_rows().items():
        q = len(rows) // 4
        out[subject] = (rows[:q], rows[q : 2 * q])
    return out


def topics() -> dict[str, Topic]:
    quarters = _quarters()
    bio, cyber = wmdp_split("bio")[0], wmdp_split("cyber")[0]
    return {
        "bio": Topic("wmdp-bio", bio[0::2], bio[1::2], None, BIO_NEIGHBOURS),
        "cyber": Topic("wmdp-cyber", cyber[0::2], cyber[1::2], None, CYBER_NEIGHBOURS),
        "virology": Topic("virology", *quarters["virology"], "virology", tuple(s for s in BIO_NEIGHBOURS if s != "virology")),
        "astronomy": Topic("astronomy", *quarters["astronomy"], "astronomy", ("college_physics", "high_school_physics", "conceptual_physics")),
    }


VARIANTS = ("grouped", "found", "no-neighbours")

OTHER_STRIDE = 3
"""Retain takes every neighbouring subject's whole train quarter and every third row of the other subjects' (about
1,500 rows in all): a policy that gives its field in full and the rest as a sample, and a third of the fit time."""


def protocol(topic: Topic, variant: str) -> Protocol:
    """The topic's policy in one variant, and its labelled non-test sets."""
    quarters = _quarters()
    keep = [s for s in quarters if s != topic.subject and (variant != "no-neighbours" or s not in topic.neighbours)]
    given = {s: quarters[s][0] if s in topic.neighbours else quarters[s][0][::OTHER_STRIDE] for s in keep}
    retain = [q for s in keep for q in given[s]]
    groups = None if variant == "found" else [s for s in keep for _ in given[s]]
    negatives = {f"neighbour {s}": quarters[s][1] for s in topic.neighbours}
    negatives["other MMLU"] = [q for s in quarters if s != topic.subject and s not in topic.neighbours for q in quarters[s][1]]
    negatives["TOFU authors"] = _tofu_negatives()[1]
    return Protocol(
        name=f"{topic.name} {variant}",
        targets=[TargetRows(topic.name, topic.forget, retain, f"Questions on {topic.name}.", groups)],
        calibration=None,
        positives={"held-out topic questions": topic.positives},
        negatives=negatives,
    )


def baseline(topic: Topic, encoder: Encoder) -> dict[str, Any]:
    """MiniLM + logistic regression on the grouped policy's rows (retain shuffled so its calibrating half spans every subject)."""
    p = protocol(topic, "grouped")
    retain = list(p.targets[0].retain)
    random.Random(0).shuffle(retain)
    run = run_baseline(EmbeddingLogisticBaseline(encoder), [BaselineTarget(topic.name, topic.forget, retain)], None, p.positives, p.negatives, TARGET_FPR)
    scorer = EmbeddingLogisticBaseline(encoder).fit([BaselineTarget(topic.name, topic.forget, retain[: len(retain) // 2])])
    scores = {name: scorer(list(texts)) for name, texts in {**p.positives, **p.negatives}.items()}
    return {"threshold": run.threshold, "n_calibration": run.n_calibration, "sets": run.sets, "scores": scores}


def memoise_encoder_features(memo: dict[tuple[str, str], np.ndarray]) -> None:
    """Keep every text's features for the process (in ``memo``): the variants re-read the same MMLU rows."""
    original = Encoder.features

    def features(self: Encoder, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        key = str(self.path)
        missing = [t for t in dict.fromkeys(texts) if (key, t) not in memo]
        if missing:
            for text, row in zip(missing, original(self, missing, batch_size)):
                memo[(key, text)] = row
        if not texts:
            return original(self, texts, batch_size)
        return np.stack([memo[(key, t)] for t in texts])

    Encoder.features = features  # type: ignore[method-assign]


def recall_at_neighbour_fpr(scores: dict[str, np.ndarray], rate: float) -> float:
    """Recall at the threshold that flags ``rate`` of the neighbouring subjects' rows pooled: what the scores could
    do with an oracle threshold (a diagnosis of the features, apart from calibration; never used to set anything)."""
    near = np.concatenate([v for k, v in scores.items() if k.startswith("neighbour ")])
    cut = np.quantile(near, 1.0 - rate)
    return round(float(np.mean(scores["held-out topic questions"] > cut)), 4)


def summarise(summary: dict[str, Any], topic: Topic) -> dict[str, Any]:
    """The numbers the issue asks for: recall, FPR per neighbouring subject, the worst, others, and the fit's per-group estimates and warnings."""
    sets = summary["sets"]
    neighbours = {k.removeprefix("neighbour "): v["fpr"] for k, v in sets.items() if k.startswith("neighbour ")}
    recall = sets["held-out topic questions"]["tpr"]
    worst = max(neighbours.values())
    return {
        "recall": recall,
        "neighbour_fpr": neighbours,
        "worst_neighbour_fpr": worst,
        "other_mmlu_fpr": sets["other MMLU"]["fpr"],
        "tofu_fpr": sets["TOFU authors"]["fpr"],
        "met": recall >= RECALL_GOAL and worst <= NEIGHBOUR_GOAL,
        "threshold": summary["threshold"],
        "fit_seconds": summary["fit_seconds"],
        "estimated_fpr": summary.get("estimated_fpr", {}),
        "warnings": summary.get("warnings", []),
        "classifier_features": summary.get("classifier_features", ""),
        "n_neighbour_rows": {s: len(_quarters()[s][1]) for s in topic.neighbours},
        "oracle": summary.get("oracle", {}),
    }


def markdown(rows: list[dict[str, Any]], load: str) -> str:
    lines = [
        f"Target FPR {TARGET_FPR}; goal with neighbour retain given: every neighbouring subject <= {NEIGHBOUR_GOAL} at recall >= "
        f"{RECALL_GOAL}. Non-test rows only. Load when run: {load}.",
        "",
        "| topic | variant | recall | worst neighbour FPR | other MMLU | TOFU | goal met | fit s | fit warned | oracle recall at neighbour FPR 0.01 / 0.05 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        warned = "yes" if r.get("warnings") else "no"
        met = "" if r["variant"] == "no-neighbours" else ("yes" if r["met"] else "**no**")
        fit_s = f"{r['fit_seconds']:.0f}" if "fit_seconds" in r else ""
        lines.append(
            f"| {r['topic']} | {r['variant']} | {r['recall']:.3f} | {r['worst_neighbour_fpr']:.3f} | {r['other_mmlu_fpr']:.3f} | "
            f"{r['tofu_fpr']:.3f} | {met} | {fit_s} | {warned if r['variant'] != 'baseline' else ''} | "
            + " / ".join(f"{v:.3f}" for v in r.get("oracle", {}).values())
            + " |"
        )
    lines += [
        "",
        "Oracle recall: at the threshold that flags 1% / 5% of the neighbouring subjects' rows pooled, read off the test "
        "scores: what the scores could do with a perfect threshold, a diagnosis of the features apart from calibration "
        "(never used to choose anything).",
        "",
        "FPR per neighbouring subject (calibration quarter of each):",
        "",
    ]
    for r in rows:
        cells = ", ".join(f"{s} {v:.3f}" for s, v in r["neighbour_fpr"].items())
        lines.append(f"- {r['topic']} {r['variant']}: {cells}")
    lines += ["", "The fit's per-group estimates (2-fold cross-calibration) and warnings:", ""]
    for r in rows:
        if r["variant"] == "baseline":
            continue
        est = ", ".join(f"{k} {v:.3f}" for k, v in r["estimated_fpr"].items())
        lines.append(f"- {r['topic']} {r['variant']}: {est or 'none'}")
        for w in r["warnings"]:
            lines.append(f"  - warning: {w}")
    return "\n".join(lines) + "\n"


def write(out: Path, name: str, rows: list[dict[str, Any]], load: str, start: float, merge: bool) -> None:
    """topics.json and topics.md with ``rows`` (and, with ``merge``, an earlier run's rows this run does not redo)."""
    out_json = out / f"{name}.json"
    if merge and out_json.exists():
        done = {(r["topic"], r["variant"]) for r in rows}
        earlier = json.loads(out_json.read_text(encoding="utf-8"))
        rows = [r for r in earlier["rows"] if (r["topic"], r["variant"]) not in done] + rows
        load = f"{earlier['load']}; this run {load}"
    load += f" -> {os.getloadavg()[0]:.1f} (1-min load average at start and now; {time.perf_counter() - start:.0f} s)"
    out_json.write_text(json.dumps({"target_fpr": TARGET_FPR, "load": load, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    (out / f"{name}.md").write_text(markdown(rows, load), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--topics", default="bio,cyber,virology,astronomy")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--runs", help="topic:variant pairs to run instead of every topic x variant (e.g. bio:grouped,cyber:found)")
    ap.add_argument("--merge", action="store_true", help="keep the rows of an earlier run in the output that this run does not redo")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--name", default="topics", help="output file stem")
    ap.add_argument("--memo", type=Path, help="keep the encoder's features in this pickle between runs (development only)")
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"topic benchmark skipped: evaluation data not found at {DATA}", file=sys.stderr)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    memo: dict[tuple[str, str], np.ndarray] = pickle.loads(args.memo.read_bytes()) if args.memo and args.memo.exists() else {}
    memoise_encoder_features(memo)
    encoder = None if args.no_baseline else Encoder(resolve_encoder_path("default"))
    all_topics = topics()
    rows: list[dict[str, Any]] = []
    load = f"{os.getloadavg()[0]:.1f}"
    start = time.perf_counter()
    pairs = [tuple(r.split(":")) for r in args.runs.split(",")] if args.runs else [
        (key, variant) for key in args.topics.split(",") for variant in args.variants.split(",")
    ]
    for key, variant in pairs:
        topic = all_topics[key]
        print(f"{topic.name} {variant}: fitting ...", file=sys.stderr)
        summary, results = run_protocol(protocol(topic, variant))
        if args.memo:
            args.memo.write_bytes(pickle.dumps(memo))
        scores = {k: r.scores for k, r in results.items()}
        summary["oracle"] = {f"recall at neighbour FPR {r}": recall_at_neighbour_fpr(scores, r) for r in (0.01, 0.05)}
        rows.append({"topic": topic.name, "variant": variant, **summarise(summary, topic)})
        print("  " + json.dumps({k: rows[-1][k] for k in ("recall", "worst_neighbour_fpr", "other_mmlu_fpr", "met", "oracle")}), file=sys.stderr)
        print("  " + json.dumps(rows[-1]["estimated_fpr"]) + " " + summary["calibration_note"][-600:], file=sys.stderr)
        write(args.out, args.name, rows, load, start, args.merge)  # after every fit: a long run keeps what it measured
    for key in dict.fromkeys(k for k, _ in pairs):
        if encoder is None:
            break
        topic = all_topics[key]
        run = baseline(topic, encoder)
        oracle = {f"recall at neighbour FPR {r}": recall_at_neighbour_fpr(run["scores"], r) for r in (0.01, 0.05)}
        row = summarise({"sets": run["sets"], "threshold": run["threshold"], "fit_seconds": 0.0, "oracle": oracle}, topic)
        rows.append({"topic": topic.name, "variant": "baseline", **row})
        print("  baseline " + json.dumps({k: rows[-1][k] for k in ("recall", "worst_neighbour_fpr", "other_mmlu_fpr")}), file=sys.stderr)
    write(args.out, args.name, rows, load, start, args.merge)
    print(markdown(rows, load))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
