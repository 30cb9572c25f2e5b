"""Generalisation probes: policies of the kinds users write that protocols D1-D3 do not cover.

D1-D3 (``benchmarks/detection.py``) all give the classifier negatives near its targets: a
calibration set, or retain examples. Users often give neither: "forget this person" with
five questions, "forget this topic" with twenty. Then the built-in background is all the
classifier knows of "not this target", and the certified false-positive rate holds only
for traffic like that background (``eco-guard fit`` warns). These probes measure how far
off it is on nearby traffic. Every row comes from the *non-test* parts of the shared data
(TOFU retain rows 1800-2699, which D1-D3 never score; MMLU's train and calibration
quarters; WMDP's training fifth; TOFU forget rows of the training positions), so no test
row of D1-D3 is read. No goal is set: nothing here was tuned, and the numbers are
reported as they come.

Probes (target FPR 0.01, no calibration set; no retain examples but in P4, P6 and P7):

- **P1 person**: one TOFU author from the first 5 of their questions, for authors 0-4
  (one fit each). Positives: the author's other 15 questions and their paraphrases.
  Negatives: questions about other TOFU authors (retain rows 1800-2699), a quarter of
  MMLU's non-test questions, world facts.
- **P2 topic**: 20 WMDP questions of one kind, bio and cyber (one fit each). Positives:
  the rest of that kind's training fifth. Negatives: MMLU's non-test questions, TOFU
  retain rows 1800-2699.
- **P3 subjects**: six MMLU subjects as six targets of 8 questions each, in one policy.
  Positives: the rest of each subject's non-test rows. Negatives: the other subjects'
  non-test rows, TOFU retain rows 1800-2699, world facts.
- **P4 topic with retain**: P2's 20 questions plus 12 retain examples, the first 4
  non-test questions of each of three neighbouring MMLU subjects: the contrast case, a
  topic policy that does give near negatives (for cyber 10 of the 12 are near, so no
  stand-ins join its background; for bio 9, fewer than the fit's 10, so they do).
  Negatives: the rest of those subjects ("MMLU related"), every other subject's non-test
  rows ("MMLU"), TOFU retain rows 1800-2699.
- **P5 people**: ten TOFU authors as ten targets of 5 questions each, in one policy: the
  authors of TOFU retain rows 200-399, which D1 only trains on and D3 never reads.
  Positives: each author's other 15 questions. Negatives as P1's.

- **P6 people with everyday retain**: P5's policy, each target given 4 world-facts
  questions as retain examples (rows 4a-4a+3 for the a-th target): a "keep everything
  else working" list that says nothing about other people. Negatives as P1's, world
  facts less the 40 given as retain.

- **P7 topic with everyday retain**: P2's policy with world-facts rows 0-3 as retain
  examples. Negatives as P2's, plus world facts less those four.

P1's positives are forget rows that D1 and D3 score as test rows (a single author has no
other questions); they are reported here and were never used to choose anything. P5 was
added so that a person policy could be measured without them.

Writes benchmarks/results/generalisation.json and generalisation.md.

    .venv/bin/python benchmarks/generalisation.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from detection import (  # type: ignore[import-not-found]
    DATA,
    HERE,
    Protocol,
    TargetRows,
    _forget10,
    _json_rows,
    _tofu_negatives,
    mmlu_subject_rows,
    run_protocol,
    wmdp_split,
)

SUBJECTS = ("astronomy", "world_religions", "nutrition", "prehistory", "high_school_macroeconomics", "philosophy")
"""P3's targets: six subjects far from WMDP's and TOFU's, picked before any run."""


@cache
def _mmlu_non_test() -> dict[str, list[str]]:
    """Per subject, the train and calibration quarters of the protocols' MMLU split (never its test half)."""
    return {subject: rows[: 2 * (len(rows) // 4)] for subject, rows in mmlu_subject_rows().items()}


def _unseen_authors() -> list[str]:
    """TOFU retain rows 1800-2699: D1's calibration rows, which no protocol scores."""
    return _tofu_negatives()[1]


def _world_facts() -> list[str]:
    return _tofu_negatives()[2]["world_facts"]


def probe_person(author: int) -> Protocol:
    rows = _forget10()[20 * author : 20 * author + 20]
    mmlu = [q for qs in _mmlu_non_test().values() for q in qs]
    return Protocol(
        name=f"P1 person {author}",
        targets=[TargetRows(f"author-{author:02d}", [r["question"] for r in rows[:5]], [], "Everything about this author.")],
        calibration=None,
        positives={"other questions": [r["question"] for r in rows[5:]], "paraphrases": [r["paraphrased_question"] for r in rows[5:]]},
        negatives={"other authors": _unseen_authors(), "MMLU": mmlu[::4], "world facts": _world_facts()},
    )


PEOPLE_AUTHORS = range(10, 20)
"""P5's authors: TOFU retain rows 200-399, 20 questions each (the first 5 are the policy's)."""


def probe_people() -> Protocol:
    retain = [r["question"] for r in _json_rows(DATA / "tofu" / "retain90.json")]
    mmlu = [q for qs in _mmlu_non_test().values() for q in qs]
    authors = [retain[20 * a : 20 * a + 20] for a in PEOPLE_AUTHORS]
    return Protocol(
        name="P5 people",
        targets=[TargetRows(f"author-{a:02d}", qs[:5], [], "Everything about this author.") for a, qs in zip(PEOPLE_AUTHORS, authors)],
        calibration=None,
        positives={"other questions": [q for qs in authors for q in qs[5:]]},
        negatives={"other authors": _unseen_authors(), "MMLU": mmlu[::4], "world facts": _world_facts()},
    )


EVERYDAY_RETAIN = 4
"""P6: world-facts questions given to each target as retain examples."""


def probe_people_with_everyday_retain() -> Protocol:
    people = probe_people()
    facts = _world_facts()
    n = EVERYDAY_RETAIN * len(people.targets)
    targets = [
        TargetRows(t.id, t.forget, facts[EVERYDAY_RETAIN * k : EVERYDAY_RETAIN * (k + 1)], t.description) for k, t in enumerate(people.targets)
    ]
    negatives = {**people.negatives, "world facts": facts[n:]}
    return Protocol(name="P6 people, everyday retain", targets=targets, calibration=None, positives=people.positives, negatives=negatives)


def probe_topic_with_everyday_retain(kind: str) -> Protocol:
    topic = probe_topic(kind)
    facts = _world_facts()
    target = topic.targets[0]
    return Protocol(
        name=f"P7 topic, everyday retain {kind}",
        targets=[TargetRows(target.id, target.forget, facts[:EVERYDAY_RETAIN], target.description)],
        calibration=None,
        positives=topic.positives,
        negatives={**topic.negatives, "world facts": facts[EVERYDAY_RETAIN:]},
    )


def probe_topic(kind: str) -> Protocol:
    train = wmdp_split(kind)[0]
    return Protocol(
        name=f"P2 topic {kind}",
        targets=[TargetRows(f"wmdp-{kind}", train[:20], [], f"Hazardous {kind} knowledge.")],
        calibration=None,
        positives={"other training questions": train[20:]},
        negatives={"MMLU": [q for qs in _mmlu_non_test().values() for q in qs], "other authors": _unseen_authors()},
    )


P4_RETAIN_SUBJECTS = {
    "bio": ("college_biology", "high_school_biology", "virology"),
    "cyber": ("computer_security", "college_computer_science", "high_school_computer_science"),
}
"""P4's retain subjects: MMLU subjects next to each WMDP kind, picked before any run."""


def probe_topic_with_retain(kind: str) -> Protocol:
    mmlu = _mmlu_non_test()
    train = wmdp_split(kind)[0]
    near = P4_RETAIN_SUBJECTS[kind]
    return Protocol(
        name=f"P4 topic+retain {kind}",
        targets=[TargetRows(f"wmdp-{kind}", train[:20], [q for s in near for q in mmlu[s][:4]], f"Hazardous {kind} knowledge.")],
        calibration=None,
        positives={"other training questions": train[20:]},
        negatives={
            "MMLU related": [q for s in near for q in mmlu[s][4:]],
            "MMLU": [q for s, qs in mmlu.items() if s not in near for q in qs],
            "other authors": _unseen_authors(),
        },
    )


def probe_subjects() -> Protocol:
    mmlu = _mmlu_non_test()
    return Protocol(
        name="P3 subjects",
        targets=[TargetRows(s, mmlu[s][:8], [], f"Questions about {s.replace('_', ' ')}.") for s in SUBJECTS],
        calibration=None,
        positives={"held-out subject questions": [q for s in SUBJECTS for q in mmlu[s][8:]]},
        negatives={
            "other MMLU subjects": [q for s, qs in mmlu.items() if s not in SUBJECTS for q in qs],
            "other authors": _unseen_authors(),
            "world facts": _world_facts(),
        },
    )


def markdown(rows: list[dict[str, Any]]) -> str:
    sets = list(dict.fromkeys(k for r in rows for k in r["sets"]))
    lines = [
        "| probe | fit s | threshold | " + " | ".join(sets) + " |",
        "|---|---|---|" + "---|" * len(sets),
    ]
    for r in rows:
        cells = []
        for k in sets:
            row = r["sets"].get(k)
            cells.append("" if row is None else (f"TPR {row['tpr']:.3f}" if "tpr" in row else f"FPR {row['fpr']:.3f}"))
        lines.append(f"| {r['protocol']} | {r['fit_seconds']:.0f} | {r['threshold']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    if not DATA.is_dir():
        print(f"generalisation probes skipped: evaluation data not found at {DATA}", file=sys.stderr)
        return 0
    probes = [*(probe_person(a) for a in range(5)), probe_topic("bio"), probe_topic("cyber"), probe_subjects()]
    probes += [probe_topic_with_retain("bio"), probe_topic_with_retain("cyber"), probe_people()]
    probes += [probe_people_with_everyday_retain(), probe_topic_with_everyday_retain("bio"), probe_topic_with_everyday_retain("cyber")]
    summaries = []
    for protocol in probes:
        print(f"{protocol.name}: fitting {len(protocol.targets)} target(s) ...", file=sys.stderr)
        summary, _ = run_protocol(protocol)
        summaries.append(summary)
        print("  " + json.dumps({k: v.get("tpr", v.get("fpr")) for k, v in summary["sets"].items()}), file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "generalisation.json").write_text(json.dumps({"probes": summaries}, indent=2) + "\n", encoding="utf-8")
    (args.out / "generalisation.md").write_text(markdown(summaries), encoding="utf-8")
    print(markdown(summaries))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
