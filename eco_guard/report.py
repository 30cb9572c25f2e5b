"""The fit report: report.json, report.md and plots written next to a fitted guard.

Scores shown here are on the policy's own examples (in-sample for the forget set), so
the report says so; held-out detection numbers come from ``benchmarks/detection.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _plot_histograms(out: Path, targets: list[dict[str, Any]], scores: dict[str, dict[str, list[float]]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(targets)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, t in zip(axes.flat, targets):
        s = scores[t["id"]]
        bins = [i / 40 for i in range(41)]
        ax.hist(s["forget"], bins=bins, alpha=0.6, label="forget (fit data)", color="tab:red")
        if s["retain"]:
            ax.hist(s["retain"], bins=bins, alpha=0.6, label="retain", color="tab:blue")
        ax.axvline(t["threshold"], color="black", linestyle="--", label=f"threshold {t['threshold']:.3f}")
        ax.set_title(t["id"], fontsize=9)
        ax.set_xlabel("score")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    name = "score_histograms.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def write_fit_report(
    out: Path,
    targets: list[dict[str, Any]],
    scores: dict[str, dict[str, list[float]]],
    *,
    seconds: float,
    seed: int,
) -> None:
    """Write report.json, report.md and the score-histogram plot."""
    plot = _plot_histograms(out, targets, scores)
    (out / "report.json").write_text(
        json.dumps({"seed": seed, "fit_seconds": round(seconds, 2), "targets": targets, "plots": [plot]}, indent=2),
        encoding="utf-8",
    )
    lines = [
        "# eco-guard fit report",
        "",
        f"Fitted in {seconds:.1f} s with seed {seed}.",
        "",
        "| target | action | forget | retain (train) | background (train) | calibration negatives | threshold | target FPR | certified | corruption |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in targets:
        c = t["corruption"]
        lines.append(
            f"| {t['id']} | {t['action']} | {t['n_forget']} | {t['n_retain_train']} | {t['n_background_train']} | "
            f"{t['n_calibration']} | {t['threshold']:.4f} | {t['target_fpr']} | "
            f"{'yes' if t['calibration_achievable'] else 'no'} | {c['method']} dims={c['dims']} "
            f"strength={c['strength']:.4g} ({t['strength_source']}, scope {t['scope']}) |"
        )
    notes = [t for t in targets if not t["calibration_achievable"]]
    if notes:
        lines += ["", "## Calibration notes", ""]
        lines += [f"- **{t['id']}**: {t['calibration_note']}" for t in notes]
    lines += [
        "",
        "A prompt is flagged when its score is strictly above the target's threshold. "
        "One threshold is shared by all targets: split conformal calibration of the maximum score over targets "
        "on held-out negatives no head was trained on, so `target FPR` bounds the rate at which a negative is "
        "flagged by any target.",
        "",
        f"![score histograms]({plot})",
        "",
        "The histograms show scores on the policy's own examples (in-sample for the forget set); "
        "see `benchmarks/detection.py` for held-out numbers.",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
