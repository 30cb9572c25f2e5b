"""The fit report: report.json, report.md and plots written next to a fitted guard.

Scores shown here are on the policy's own examples (in-sample for the forget set), so
the report says so; held-out detection numbers come from ``benchmarks/detection.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .fit_result import FitResult


MAX_PANELS = 12
"""Most per-target panels in one plot. A panel each made figures too large to read, and
past the renderer's 65,536-pixel limit (about 600 targets of histograms in rows of three;
about 130 searched targets of strength curves, which were in one row) the fit failed at
its last step. Larger policies get one pooled panel (histograms) or the first panels
with a note (strength curves, all of which are in report.json)."""


def _panels(n: int, width: float, height: float) -> tuple[Any, list[Any]]:
    """A figure of ``n`` panels in rows of three, unused cells hidden."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return fig, list(axes.flat)[:n]


def _plot_histograms(out: Path, targets: list[dict[str, Any]], scores: dict[str, dict[str, list[float]]]) -> str:
    import matplotlib.pyplot as plt

    if len(targets) <= MAX_PANELS:
        groups = [(t["id"], [t]) for t in targets]
    else:  # the threshold is shared, so one pooled panel says what the per-target ones would
        groups = [(f"all {len(targets)} targets, pooled", targets)]
    fig, axes = _panels(len(groups), 4.2, 3.0)
    bins = [i / 40 for i in range(41)]
    for ax, (title, members) in zip(axes, groups):
        forget = [x for t in members for x in scores[t["id"]]["forget"]]
        retain = [x for t in members for x in scores[t["id"]]["retain"]]
        ax.hist(forget, bins=bins, alpha=0.6, label="forget (fit data)", color="tab:red")
        if retain:
            ax.hist(retain, bins=bins, alpha=0.6, label="retain", color="tab:blue")
        threshold = max(t["threshold"] for t in members)
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("score")
        ax.legend(fontsize=7)
    fig.tight_layout()
    name = "score_histograms.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def _plot_strength_curves(out: Path, targets: list[dict[str, Any]]) -> str | None:
    """The strength-vs-objective curve of every searched target, with the chosen strength.

    Objective (left axis) and fluency of the corrupted answers under the clean model
    (right axis) share the x axis, so the trade-off the search made can be seen.
    """
    searched = [t for t in targets if t.get("search") and t["search"]["curve"]]
    if not searched:
        return None
    import matplotlib.pyplot as plt

    shown = searched[:MAX_PANELS]
    fig, axes = _panels(len(shown), 4.6, 3.2)
    if len(searched) > len(shown):
        fig.suptitle(f"first {len(shown)} of {len(searched)} searched targets (every curve is in report.json)", fontsize=9)
    for ax, t in zip(axes, shown):
        s = t["search"]
        pred = [(p["strength"], p["predicted"]) for p in s["curve"] if p.get("predicted") is not None]
        gen = [p for p in s["curve"] if p.get("metric") is not None]
        if pred:
            ax.plot([x for x, _ in pred], [y for _, y in pred], ".--", color="tab:red", alpha=0.5, label=f"{s['objective']} (predicted)")
        ax.plot([p["strength"] for p in gen], [p["metric"] for p in gen], "o", color="tab:red", label=f"{s['objective']} (generated)")
        ax.axhline(s["target"], color="tab:red", linestyle=":", linewidth=1, label="target")
        ax.axvline(s["strength"], color="black", linestyle="--", linewidth=1, label=f"chosen {s['strength']:.3g}")
        top = max([s["clean_metric"], s["target"], *(y for _, y in pred), *(p["metric"] for p in gen)])
        ax.set_ylim(-0.05, max(top, 0.1) + 0.05)
        ax.set_xscale("log")
        ax.set_xlabel("strength (noise sigma)")
        ax.set_ylabel(s["objective"])
        ax.set_title(t["id"] + ("" if s.get("converged", True) else " (not converged)"), fontsize=9)
        flu = [(p["strength"], p["fluency"]) for p in gen if p["fluency"] is not None]
        if flu:
            ax2 = ax.twinx()
            ax2.plot([f[0] for f in flu], [f[1] for f in flu], "s", color="tab:blue", alpha=0.7)
            if s["fluency_bound"] is not None:
                ax2.axhline(s["fluency_bound"], color="tab:blue", linestyle=":", linewidth=1)
            ax2.set_ylabel("fluency (mean log-prob)", color="tab:blue")
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    name = "strength_curve.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def _search_lines(targets: list[dict[str, Any]], plot: str | None) -> list[str]:
    """The report section on the strength search."""
    searched = [t for t in targets if t.get("search")]
    if not searched:
        return []
    lines = [
        "",
        "## Corruption strength search",
        "",
        "| target | objective | target value | clean | chosen strength | measured there | start | scored / generated | "
        "fluency there (bound) | converged | reused | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in searched:
        s = t["search"]
        chosen = next((p for p in s["curve"] if p.get("metric") is not None and p["strength"] == s["strength"]), None)
        measured = "n/a" if chosen is None else f"{chosen['metric']:.3f}"
        flu = "n/a" if chosen is None or chosen.get("fluency") is None else f"{chosen['fluency']:.3f}"
        bound = "n/a" if s["fluency_bound"] is None else f"{s['fluency_bound']:.3f}"
        converged = "yes" if s.get("converged", True) else "**no**"
        lines.append(
            f"| {t['id']} | {s['objective']} | {s['target']} | {s['clean_metric']:.3f} | {s['strength']:.4g} | {measured} | "
            f"{s['start']:.4g} | {s.get('n_scored', 0)} / {s.get('n_generated', 0)} | {flu} ({bound}) | {converged} | "
            f"{'yes' if t.get('search_reused') else 'no'} | {s['note']} |"
        )
    lines += [
        "",
        "Measured on the target's forget examples only (the questions the clean model answers, for recall). "
        "Strengths on a log grid are first scored teacher-forced (the clean answer up to the gold answer, as the "
        "reply to the corrupted prompt: one forward pass per row), which predicts the objective; only the chosen "
        "point and its neighbours are generated, and the chosen strength is always a generated one. Fluency is the "
        "corrupted answers' mean token log-prob under the clean model; the bound is 25% below the clean answers' own. "
        "See docs/fitting.md.",
    ]
    if plot:
        lines += ["", f"![strength vs objective]({plot})"]
    return lines


def _warning_lines(warnings: list[dict[str, Any]]) -> list[str]:
    """Every warning of the fit, with what to try; said first, since each needs acting on."""
    if not warnings:
        return []
    lines = ["", "## Warnings", ""]
    for w in warnings:
        where = f"target `{w['target']}`: " if w.get("target") else ""
        lines.append(f"- **{w['code']}**: {where}{w['message']}" + (f". Try: {w['hint']}." if w.get("hint") else ""))
    return lines


def _retain_cell(target: dict[str, Any]) -> str:
    """Retain rows trained on, saying how many were name-swapped copies, and whether the policy's own were near the target.

    Reports written before the copies or the nearness test existed lack those keys; they had neither.
    """
    swapped = target.get("n_swapped_retain", 0)
    own = target["n_retain_train"] - swapped
    notes = [f"{swapped} name-swapped"] if swapped else []
    if own and target.get("lacks_near_retain", False):
        notes.append("the policy's not near")
    return f"{target['n_retain_train']} ({'; '.join(notes)})" if notes else str(target["n_retain_train"])


def _calibration_section(targets: list[dict[str, Any]]) -> list[str]:
    """How the threshold was chosen and what false-positive rate to expect, stated every time.

    The threshold is shared, so targets usually carry the same note; it is printed once
    per distinct note. Uncertified calibrations are called out first because they are
    the ones a compliance reader must act on.
    """
    notes = dict.fromkeys(t["calibration_note"] for t in targets)
    lines = ["", "## Calibration", ""]
    uncertified = [t["id"] for t in targets if not t["calibration_achievable"]]
    if uncertified:
        lines.append(
            f"**Warning:** too few held-out negatives to certify the target false-positive rate for "
            f"{', '.join(uncertified)}; see below for what was done instead."
        )
        lines.append("")
    over = [t for t in targets if t["calibration_achievable"] and not t.get("certified", True)]
    if over:
        worst = over[0]["worst_fpr"]
        lines.append(
            f"**Not certified:** the estimated false-positive rate on {worst['source']} is {worst['rate']:.4f}, above "
            f"target_fpr {over[0]['target_fpr']}, so {', '.join(t['id'] for t in over)} are not labelled certified "
            "although the conformal threshold was computed."
        )
        lines.append("")
    lines += [f"- {note}" for note in notes]
    return lines


def write_fit_report(out: Path, result: FitResult, scores: dict[str, dict[str, list[float]]], *, seed: int) -> None:
    """Write report.json, report.md, the score-histogram plot and the strength curve."""
    doc = result.to_dict()
    targets, seconds = doc["targets"], result.seconds
    plot = _plot_histograms(out, targets, scores)
    curve = _plot_strength_curves(out, targets)
    plots = [plot] + ([curve] if curve else [])
    (out / "report.json").write_text(
        json.dumps(
            {"seed": seed, "fit_seconds": round(seconds, 2), "summary": result.summary_line(), "warnings": doc["warnings"],
             "reused": doc["reused"], "worst_fpr": doc["worst_fpr"], "targets": targets, "plots": plots},
            indent=2,
        ),
        encoding="utf-8",
    )
    lines = [
        "# eco-guard fit report",
        "",
        f"Fitted in {seconds:.1f} s with seed {seed}. {result.summary_line()}.",
        *_warning_lines(doc["warnings"]),
        "",
        "| target | action | forget | retain (train) | background (train) | calibration negatives | threshold | target FPR | "
        "worst estimated FPR | certified | corruption |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in targets:
        c = t["corruption"]
        worst = "n/a" if t["worst_fpr"] is None else f"{t['worst_fpr']['rate']:.4f} ({t['worst_fpr']['source']})"
        lines.append(
            f"| {t['id']} | {t['action']} | {t['n_forget']} | {_retain_cell(t)} | {t['n_background_train']} | "
            f"{t['n_calibration']} | {t['threshold']:.4f} | {t['target_fpr']} | {worst} | "
            f"{'yes' if t['certified'] else 'no'} | {c['method']} dims={c['dims']} "
            f"strength={c['strength']:.4g} ({t['strength_source']}, scope {t['scope']}) |"
        )
    lines += _calibration_section(targets)
    views = dict.fromkeys(t.get("feature_view_note", "") for t in targets if t.get("feature_view_note"))
    if views:
        lines += ["", "## Classifier features", ""] + [f"- {note}" for note in views]
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
        *_search_lines(targets, curve),
        "",
    ]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
