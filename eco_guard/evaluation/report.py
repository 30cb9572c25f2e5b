"""Write an evaluation as JSON, Markdown and a plot (``eco-guard eval`` and the benchmark)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def qa_table(sets: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows for free-form sets: recall on/off, flags, identity, fluency."""
    lines = [
        "| set | n | flagged | recall off | recall on | recall on (flagged) | unflagged identical | "
        "fluency corrupted / bare | distinct corrupted (mean / min) | looping corrupted |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in sets.items():
        lines.append(
            f"| {name} | {s['n']} | {s['n_flagged']} | {_fmt(s['recall_guard_off'])} | {_fmt(s['recall_guard_on'])} | "
            f"{_fmt(s['recall_flagged_guard_on'])} | {s['unflagged_identical']}/{s['n_unflagged']} | "
            f"{_fmt(s['fluency_corrupted'])} / {_fmt(s['fluency_bare_same_prompts'])} | "
            f"{_fmt(s['distinct_corrupted'])} / {_fmt(s['min_distinct_corrupted'])} | "
            f"{s.get('looping_corrupted', 'n/a')}/{s['n_corrupted']} |"
        )
    return lines


def mc_table(sets: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows for multiple-choice sets: accuracy on/off against chance."""
    lines = [
        "| set | n | flagged | accuracy off | accuracy on | accuracy on (flagged) | accuracy unflagged off / on | chance |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in sets.items():
        lines.append(
            f"| {name} | {s['n']} | {s['n_flagged']} | {_fmt(s['accuracy_guard_off'])} | {_fmt(s['accuracy_guard_on'])} | "
            f"{_fmt(s['accuracy_flagged_guard_on'])} | {_fmt(s['accuracy_unflagged_guard_off'])} / "
            f"{_fmt(s['accuracy_unflagged_guard_on'])} | {_fmt(s['chance'])} |"
        )
    return lines


def plot_recall(path: Path, sets: dict[str, dict[str, Any]], key_off: str, key_on: str, label: str) -> None:
    """Bars of a metric with the guard off and on, per set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(sets)
    off = [sets[n][key_off] or 0.0 for n in names]
    on = [sets[n][key_on] or 0.0 for n in names]
    xs = range(len(names))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(names), 3.0))
    ax.bar([x - 0.2 for x in xs], off, width=0.4, label="guard off", color="tab:gray")
    ax.bar([x + 0.2 for x in xs], on, width=0.4, label="guard on", color="tab:red")
    ax.set_xticks(list(xs), names, fontsize=8)
    ax.set_ylabel(label)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_eval(out: Path, result: dict[str, Any], *, title: str = "eco-guard eval") -> list[Path]:
    """``eval.json``, ``eval.md`` and ``eval.png`` (recall or accuracy, guard off vs on)."""
    out.mkdir(parents=True, exist_ok=True)
    sets = result["sets"]
    mc = result.get("mc", False)
    json_path, md_path, png_path = out / "eval.json", out / "eval.md", out / "eval.png"
    json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    summaries = {name: s["summary"] if "summary" in s else s for name, s in sets.items()}
    table = mc_table(summaries) if mc else qa_table(summaries)
    lines = [f"# {title}", "", f"Guard: `{result['guard']}`", "", *table, ""]
    if not mc:
        lines += [
            "Recall: the lower-cased, punctuation-stripped gold answer occurs in the answer (protocol E1). "
            "Fluency: mean token log-prob of the answer under the clean model. Unflagged answers are compared "
            "with the bare model's answers from the same batch.",
            "",
        ]
    lines += ["![guard off vs on](eval.png)", ""]
    md_path.write_text("\n".join(lines), encoding="utf-8")
    keys = ("accuracy_guard_off", "accuracy_guard_on", "accuracy") if mc else ("recall_guard_off", "recall_guard_on", "recall")
    plot_recall(png_path, summaries, *keys)
    return [json_path, md_path, png_path]
