"""Run a fitted guard over forget and retain sets, with the guard on and off (DESIGN §8).

Both answers of a prompt come from the same batch of prompts (the bare model's batch and
the guard's batch contain the same rows, in the same order), so an unflagged prompt's
guarded answer can be compared with the bare answer token for token: the runner keeps
rows independent when the batch composition is equal.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..guard import Guard
from ..runner.base import GenerationOptions, bare_rows
from .metrics import MIN_DISTINCT, MCItem, answer_distinct_ratio, answer_logprobs, contains_answer, mc_prediction, mean_or_none


@dataclass(frozen=True)
class QARow:
    """A free-form probe: question and (optional) gold answer."""

    id: Any
    question: str
    answer: str | None = None


def _progress(total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="q", file=sys.stderr, disable=total < 16 or None)


def evaluate_qa(
    guard: Guard,
    rows: Sequence[QARow],
    *,
    options: GenerationOptions = GenerationOptions(max_new_tokens=48),
    batch_size: int = 8,
    name: str = "set",
) -> dict[str, Any]:
    """Answers with the guard on and off, recall of each, flags, identity and fluency.

    Fluency is measured on the corrupted answers (the ones the guard changed) and, as
    the reference, on the bare model's answers to the same prompts.
    """
    per_row: list[dict[str, Any]] = []
    with _progress(len(rows), f"eval {name}") as bar:
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            prompts = [r.question for r in chunk]
            bare = guard.runner.generate(bare_rows(prompts), options)
            guarded = guard.batch(prompts, options)
            for r, b, g in zip(chunk, bare, guarded):
                per_row.append(
                    {
                        "id": r.id,
                        "question": r.question,
                        "answer": r.answer,
                        "flagged": g.decision.flagged,
                        "action": g.decision.action,
                        "score": g.decision.score,
                        "bare": b,
                        "guarded": g.text,
                        "identical": b == g.text,
                        "recalled_bare": contains_answer(b, r.answer) if r.answer else None,
                        "recalled_guarded": contains_answer(g.text, r.answer) if r.answer else None,
                    }
                )
            bar.update(len(chunk))
    corrupted = [p for p in per_row if p["action"] == "corrupt"]
    for i in range(0, len(corrupted), batch_size):  # one scoring pass per chunk of answers
        chunk = corrupted[i : i + batch_size]
        fluent = zip(answer_logprobs(guard.runner, [p["guarded"] for p in chunk]), answer_logprobs(guard.runner, [p["bare"] for p in chunk]))
        for p, (on, off) in zip(chunk, fluent):
            p["fluency_guarded"], p["fluency_bare"] = on, off
            p["distinct_guarded"] = answer_distinct_ratio(guard.runner, p["guarded"])
    return {"summary": summarize_qa(per_row), "rows": per_row}


def _rate(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def _on_off(rows: Sequence[dict[str, Any]], metric: str, off_key: str, on_key: str) -> dict[str, Any]:
    """Counts, flag rate, and ``metric`` with the guard off and on: overall, flagged, unflagged."""
    flagged = [r for r in rows if r["flagged"]]
    unflagged = [r for r in rows if not r["flagged"]]
    out: dict[str, Any] = {"n": len(rows), "n_flagged": len(flagged), "flag_rate": len(flagged) / len(rows) if rows else 0.0}
    for part, subset in (("", rows), ("_flagged", flagged), ("_unflagged", unflagged)):
        out[f"{metric}{part}_guard_off"] = _rate(subset, off_key)
        out[f"{metric}{part}_guard_on"] = _rate(subset, on_key)
    return out


def summarize_qa(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The headline numbers of one set (see :func:`evaluate_qa`)."""
    unflagged = [r for r in rows if not r["flagged"]]
    corrupted = [r for r in rows if r["action"] == "corrupt"]
    return {
        **_on_off(rows, "recall", "recalled_bare", "recalled_guarded"),
        "unflagged_identical": sum(r["identical"] for r in unflagged),
        "n_unflagged": len(unflagged),
        "n_corrupted": len(corrupted),
        "fluency_corrupted": mean_or_none([r.get("fluency_guarded") for r in corrupted]),
        "fluency_bare_same_prompts": mean_or_none([r.get("fluency_bare") for r in corrupted]),
        "distinct_corrupted": mean_or_none([r.get("distinct_guarded") for r in corrupted]),
        "min_distinct_corrupted": min((r["distinct_guarded"] for r in corrupted), default=None),
        "looping_corrupted": sum(r["distinct_guarded"] < MIN_DISTINCT for r in corrupted),
        "flagged_ids": [r["id"] for r in rows if r["flagged"]],
    }


def evaluate_mc(guard: Guard, items: Sequence[MCItem], *, name: str = "set") -> dict[str, Any]:
    """Multiple-choice accuracy with the guard on and off.

    The guard decides on the question alone (what a user would ask); a flagged
    question's whole prompt, choices included, is corrupted as in generation.
    """
    decisions = guard.check_batch([it.question for it in items], audit=False)
    rows: list[dict[str, Any]] = []
    with _progress(len(items), f"eval {name} (mc)") as bar:
        for it, d in zip(items, decisions):
            corruption, mask, refusal = guard.route(d)
            off = mc_prediction(guard.runner, it)
            if refusal is not None:
                on = -1  # refused: no choice made
            else:
                on = off if corruption is None else mc_prediction(guard.runner, it, corruption, mask)
            rows.append({"flagged": d.flagged, "action": d.action, "correct_off": off == it.answer, "correct_on": on == it.answer})
            bar.update(1)
    return {
        **_on_off(rows, "accuracy", "correct_off", "correct_on"),
        "chance": mean_or_none([1 / len(it.choices) for it in items]),
    }
