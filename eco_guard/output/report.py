"""The output stage's section of the fit report (report.json key ``output_stage``, and a Markdown section)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eco_guard.output.answers import AnswerClassifier, AnswerFitReport


def output_section(classifier: AnswerClassifier, report: AnswerFitReport) -> dict[str, Any]:
    """What the output stage trained on, its calibrated threshold and its held-out recall."""
    c = report.calibration
    return {
        "targets": [
            {"id": t, "names": names, "context_names": context}
            for t, names, context in zip(classifier.target_ids, classifier.names, classifier.context)
        ],
        "n_positive": report.n_positive,
        "n_negative": report.n_negative,
        "threshold": c.threshold,
        "target_fpr": c.target_fpr,
        "n_calibration": c.n_calibration,
        "calibration_achievable": c.achievable,
        "calibration_note": c.note,
        "held_out_recall": report.held_out_recall,
    }


def add_output_section(out: Path, section: dict[str, Any]) -> None:
    """Add the section to the report ``write_fit_report`` wrote in ``out``."""
    path = out / "report.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["output_stage"] = section
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    lines = [
        "",
        "## Output stage (answers)",
        "",
        f"Answers that pass the input stage are checked before the caller sees them. Trained on "
        f"{section['n_positive']} positive texts (forget answers and names) against {section['n_negative']} negatives "
        f"(retain answers and generic answer-like text). Threshold {section['threshold']:.4f} for a target FPR of "
        f"{section['target_fpr']} ({'certified' if section['calibration_achievable'] else 'not certified'}; "
        f"{section['n_calibration']} calibration negatives). Forget answers and names flagged by heads that never saw "
        f"them: {section['held_out_recall']:.3f}.",
        "",
        f"Calibration: {section['calibration_note']}.",
        "",
        "| target | names looked for in answers | context names (count only in answers naming no one else) |",
        "|---|---|---|",
        *[
            f"| {t['id']} | {', '.join(t['names']) or '(none)'} | {', '.join(t.get('context_names', [])) or '(none)'} |"
            for t in section["targets"]
        ],
    ]
    with (out / "report.md").open("a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
