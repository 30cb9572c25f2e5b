"""Honest fit output (issue 23): what is certified, the summary line, warnings in the report.

Built from typed results, without the models: the point is what the fit *says* about
numbers it has, so the numbers are set here, one above ``target_fpr`` and one below.
"""

from __future__ import annotations

import json
from pathlib import Path

from eco_guard.artifact import FittedTarget
from eco_guard.classifier.calibration import Calibration, joint_threshold
from eco_guard.classifier.fit import TargetFit
from eco_guard.corruption import Corruption
from eco_guard.fit_warnings import FitWarning, fpr_warnings
from eco_guard.fit_result import FitResult, TargetResult
from eco_guard.policy import TargetSpec
from eco_guard.report import write_fit_report
from eco_guard.runner.base import MaskSpec


def _target(rates: dict[str, float], achievable: bool = True) -> TargetResult:
    cal = Calibration(0.35, 0.01, 1447, achievable, "note", tuple(rates.items()))
    fit = TargetFit("person", 8, 10, 1393, 1447, cal, 1.0, forget_scores=(0.9, 0.8), retain_scores=(0.1,))
    spec = TargetSpec.model_validate({"id": "person", "forget": {"examples": ["Who is X?"]}})
    fitted = FittedTarget("person", Corruption("rand_noise_first_n", 576, 0.5, 1), MaskSpec(), "policy")
    return TargetResult(spec, fit, fitted, None)


def test_rate_above_target_fpr_is_never_certified(tmp_path: Path) -> None:
    over = _target({"held-out background": 0.005, "near neighbours": 0.13})
    assert not over.certified and over.worst_fpr == ("near neighbours", 0.13)
    warnings = fpr_warnings([over.classifier])
    assert [w.code for w in warnings] == ["fpr_above_target"] and "near neighbours 0.130" in warnings[0].message
    result = FitResult(tmp_path, [over], warnings, 1.0)
    assert "0 of 1 target(s) certified" in result.summary_line()
    assert "worst estimated false-positive rate 0.1300 (near neighbours)" in result.summary_line()
    write_fit_report(tmp_path, result, {"person": {"forget": [0.9, 0.8], "retain": [0.1]}}, seed=0)
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert report["targets"][0]["certified"] is False and report["targets"][0]["calibration_achievable"] is True
    assert report["warnings"][0]["code"] == "fpr_above_target"
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "## Warnings" in md and "**Not certified:**" in md
    row = next(line for line in md.splitlines() if line.startswith("| person |"))
    assert "| no |" in row and "0.1300 (near neighbours)" in row


def test_rates_within_target_fpr_are_certified(tmp_path: Path) -> None:
    ok = _target({"held-out background": 0.0054, "people": 0.0})
    assert ok.certified and not fpr_warnings([ok.classifier])
    assert "1 of 1 target(s) certified" in FitResult(tmp_path, [ok], [], 1.0).summary_line()
    assert not _target({"held-out background": 0.0}, achievable=False).certified


def test_calibration_carries_its_estimates_as_numbers() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    cal = joint_threshold({"a": rng.random(400), "b": rng.random(300) + 0.5}, 0.01, 1)
    rates = dict(cal.estimated_fpr)
    assert set(rates) == {"a", "b"} and all(0.0 <= r <= 1.0 for r in rates.values())
    assert all(f"{name} {rate:.4f}" in cal.note for name, rate in rates.items())


def test_warning_line_says_what_to_try() -> None:
    w = FitWarning("objective_not_met", "recall 0.125 at 2.7", "scope: prompt", "person")
    assert w.line() == "target 'person': recall 0.125 at 2.7; try: scope: prompt"
    assert FitWarning.from_dict(w.to_dict()) == w
