"""Validation probe for issue 3's D2 gap: does fine-tuning the bundled encoder separate
WMDP questions from the related MMLU subjects?

D2 misses its goals because, at the calibrated threshold, MMLU questions on neighbouring
subjects (virology, computer security, ...) score like WMDP questions. The fit's heads
read a frozen all-MiniLM-L6-v2; this probe measures whether re-training the encoder
itself, end to end, moves that ranking enough to matter. It uses D2's non-test rows only:

- positives: the D2 training questions of each WMDP set (the first 20% after the
  protocol's shuffle), dealt into alternate halves; a fold trains on one half and is
  measured on the other;
- negatives: D2's MMLU training rows train; its MMLU calibration rows are dealt into
  alternate halves, one calibrating the 1% threshold (split conformal, as the product
  does), the other measuring the related-subject and other-subject rates.

Detectors, all on the same fold:

- ``eco-guard``: the product's own fit (``fit_guard`` + ``Guard.check_batch``, as in
  ``benchmarks/detection.py``), with the calibration half as ``classifier.calibration``;
- ``frozen + LR``: logistic regression on the frozen sentence embedding;
- ``fine-tuned head``: the encoder and a none/bio/cyber softmax head trained together
  (AdamW, encoder lr 3e-5, head lr 1e-3, linear warm-up and decay, class-balanced loss,
  inputs cut at 128 tokens), scored after each epoch;
- ``fine-tuned + LR``: logistic regression on the fine-tuned sentence embedding.

For each it reports recall and rates at the 1% threshold, and two points of its
recall/related-FPR curve that do not depend on calibration: recall where 2% of the
related half is flagged (D2's related goal), and the related rate at recall 0.97 (D2's
recall goal). D2 needs both at once: recall 0.97 at related FPR 0.02.

Writes benchmarks/results/encoder_finetune.json and encoder_finetune.md.

    .venv/bin/python benchmarks/encoder_finetune.py [--folds 0,1] [--epochs 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detection import (  # type: ignore[import-not-found]
    DATA,
    RELATED_MMLU,
    HERE,
    Protocol,
    TargetRows,
    _mmlu_splits,
    run_protocol,
    wmdp_split,
)
from sklearn.linear_model import LogisticRegression
from tqdm import tqdm
from transformers import AutoModel, AutoTokenizer

from eco_guard.classifier.calibration import conformal_threshold
from eco_guard.classifier.features.encoder import resolve_encoder_path
from eco_guard.classifier.heads import HEAD_C

TARGETS = ("bio", "cyber")
MAX_TOKENS = 128
BATCH = 16
LOGIT_SCALE = 20.0
"""Cosine-style head on unit-norm embeddings: the scale turns cosines into usable logits."""


class Fold:
    """One validation fold of D2's non-test rows (see the module docstring)."""

    def __init__(self, fold: int) -> None:
        self.train_pos: list[tuple[str, int]] = []
        self.val_pos: list[tuple[str, int]] = []
        for label, name in enumerate(TARGETS, start=1):
            train, _ = wmdp_split(name)  # D2's training rows; its test rows are never read here
            self.train_pos += [(t, label) for i, t in enumerate(train) if i % 2 == fold]
            self.val_pos += [(t, label) for i, t in enumerate(train) if i % 2 != fold]
        self.train_neg, cal, _ = _mmlu_splits()
        self.calibrate = [t for _, t in cal[0::2]]
        measure = cal[1::2]
        self.related = [t for subject, t in measure if subject in RELATED_MMLU]
        self.other = [t for subject, t in measure if subject not in RELATED_MMLU]

    def train_texts(self) -> tuple[list[str], np.ndarray]:
        """Training texts with labels 0 (MMLU), 1 (bio), 2 (cyber): one softmax head serves both targets."""
        texts = [t for t, _ in self.train_pos] + self.train_neg
        return texts, np.array([y for _, y in self.train_pos] + [0] * len(self.train_neg))

    def protocol(self) -> Protocol:
        """The fold as a policy for the product's own fit."""
        targets = [
            TargetRows(f"wmdp-{name}", [t for t, y in self.train_pos if y == label], self.train_neg)
            for label, name in enumerate(TARGETS, start=1)
        ]
        positives = {name: [t for t, y in self.val_pos if y == label] for label, name in enumerate(TARGETS, start=1)}
        return Protocol("D2-validation", targets, self.calibrate, positives, {"related": self.related, "other": self.other})


def summarise(pos: dict[str, np.ndarray], related: np.ndarray, other: np.ndarray, threshold: float) -> dict[str, float]:
    """Rates at a threshold, and the two calibration-free curve points D2's goals name."""
    all_pos = np.concatenate(list(pos.values()))
    row = {f"recall {k}": float((v > threshold).mean()) for k, v in pos.items()}
    row["recall"] = float((all_pos > threshold).mean())
    row["related FPR"] = float((related > threshold).mean())
    row["other FPR"] = float((other > threshold).mean())
    row["recall at related FPR 0.02"] = float((all_pos > np.quantile(related, 0.98)).mean())
    row["related FPR at recall 0.97"] = float((related >= np.quantile(all_pos, 0.03)).mean())
    return {k: round(v, 4) for k, v in row.items()}


class Scorer:
    """Mean-pooled, unit-norm sentence embeddings from a (possibly training) MiniLM."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    def pooled(self, texts: Sequence[str]) -> torch.Tensor:
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        hidden = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    @torch.no_grad()
    def embed(self, texts: Sequence[str], desc: str) -> np.ndarray:
        self.model.eval()
        order = np.argsort([len(t) for t in texts])  # similar lengths together: less padding
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        for start in tqdm(range(0, len(texts), 64), desc=desc, leave=False, file=sys.stderr):
            idx = order[start : start + 64]
            out[idx] = self.pooled([texts[i] for i in idx]).numpy()
        return out


def evaluate(score: Callable[[Sequence[str], str], np.ndarray], fold: Fold) -> dict[str, float]:
    """Calibrate on the fold's calibration half at 1%, measure on the rest."""
    threshold = conformal_threshold(score(fold.calibrate, "calibration half"), 0.01).threshold
    pos = {name: score([t for t, y in fold.val_pos if y == label], f"held-out {name}") for label, name in enumerate(TARGETS, start=1)}
    return summarise(pos, score(fold.related, "related half"), score(fold.other, "other half"), threshold)


def logistic_scorer(scorer: Scorer, texts: list[str], labels: np.ndarray) -> Callable[[Sequence[str], str], np.ndarray]:
    """The product's head strength (HEAD_C), class-balanced, on the scorer's embeddings."""
    head = LogisticRegression(C=HEAD_C, max_iter=3000, class_weight="balanced").fit(scorer.embed(texts, "embedding training rows"), labels)
    return lambda xs, desc: 1.0 - head.predict_proba(scorer.embed(xs, desc))[:, 0]


def run_fold(fold_index: int, epochs: int, seed: int) -> dict[str, Any]:
    """Every detector on one fold; the product's fit first, so it sees the untouched encoder."""
    fold = Fold(fold_index)
    result: dict[str, Any] = {
        "fold": fold_index,
        "n": {
            "train positives": len(fold.train_pos),
            "held-out positives": len(fold.val_pos),
            "train negatives": len(fold.train_neg),
            "calibration half": len(fold.calibrate),
            "related half": len(fold.related),
            "other half": len(fold.other),
        },
        "detectors": {},
    }
    print(f"fold {fold_index}: eco-guard's own fit ...", file=sys.stderr)
    start = time.perf_counter()
    _, sets = run_protocol(fold.protocol(), seed=seed)
    pos = {name: sets[name].scores for name in TARGETS}
    # Scores are margins over the guard's own threshold, so the product's threshold is 0.
    result["detectors"]["eco-guard"] = {**summarise(pos, sets["related"].scores, sets["other"].scores, 0.0), "seconds": round(time.perf_counter() - start, 1)}
    print(f"  eco-guard: {result['detectors']['eco-guard']}", file=sys.stderr)

    torch.manual_seed(seed)
    path = resolve_encoder_path("default")
    scorer = Scorer(AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path))
    texts, labels = fold.train_texts()
    start = time.perf_counter()
    result["detectors"]["frozen + LR"] = {**evaluate(logistic_scorer(scorer, texts, labels), fold), "seconds": round(time.perf_counter() - start, 1)}
    print(f"  frozen + LR: {result['detectors']['frozen + LR']}", file=sys.stderr)

    head = torch.nn.Linear(scorer.model.config.hidden_size, len(TARGETS) + 1)
    optimiser = torch.optim.AdamW(
        [{"params": scorer.model.parameters(), "lr": 3e-5}, {"params": head.parameters(), "lr": 1e-3}], weight_decay=0.01
    )
    y = torch.as_tensor(labels)
    counts = torch.bincount(y, minlength=len(TARGETS) + 1).float()
    class_weights = counts.sum() / (counts.numel() * counts)
    steps = epochs * math.ceil(len(texts) / BATCH)
    warmup = max(1, int(0.06 * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: min(1.0, s / warmup) * max(0.0, (steps - s) / steps))
    rng = random.Random(seed)
    for epoch in range(epochs):
        scorer.model.train()
        start = time.perf_counter()
        # Batches of similar length (jittered so they differ by epoch), in random order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]) + rng.random() * 40)
        batches = [order[s : s + BATCH] for s in range(0, len(order), BATCH)]
        rng.shuffle(batches)
        total = 0.0
        for batch in tqdm(batches, desc=f"fine-tuning epoch {epoch + 1}/{epochs}", leave=False, file=sys.stderr):
            logits = head(scorer.pooled([texts[i] for i in batch])) * LOGIT_SCALE
            loss = torch.nn.functional.cross_entropy(logits, y[batch], weight=class_weights)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss) * len(batch)
        train_s = round(time.perf_counter() - start, 1)

        def head_score(xs: Sequence[str], desc: str) -> np.ndarray:
            with torch.no_grad():
                return 1.0 - torch.softmax(head(torch.from_numpy(scorer.embed(xs, desc))) * LOGIT_SCALE, -1)[:, 0].numpy()

        tag = f"epoch {epoch + 1}"
        result["detectors"][f"fine-tuned head, {tag}"] = {**evaluate(head_score, fold), "train seconds": train_s, "loss": round(total / len(texts), 4)}
        result["detectors"][f"fine-tuned + LR, {tag}"] = evaluate(logistic_scorer(scorer, texts, labels), fold)
        for name in (f"fine-tuned head, {tag}", f"fine-tuned + LR, {tag}"):
            print(f"  {name}: {result['detectors'][name]}", file=sys.stderr)
    return result


def markdown(folds: list[dict[str, Any]]) -> str:
    """One row per fold and detector, the curve points beside the calibrated rates."""
    cols = ["recall", "recall bio", "recall cyber", "related FPR", "other FPR", "recall at related FPR 0.02", "related FPR at recall 0.97"]
    lines = [
        "D2 validation folds (non-test rows only). Goal, on test rows: recall >= 0.97 at related FPR <= 0.02.",
        "",
        "| fold | detector | " + " | ".join(cols) + " | seconds |",
        "|---|---|" + "---|" * (len(cols) + 1),
    ]
    for f in folds:
        for name, row in f["detectors"].items():
            secs = row.get("seconds", row.get("train seconds", ""))
            lines.append(f"| {f['fold']} | {name} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + f" | {secs} |")
    lines.append("")
    for f in folds:
        lines.append(f"- fold {f['fold']}: " + ", ".join(f"{k} {v}" for k, v in f["n"].items()))
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", default="0,1", help="comma-separated folds (0 and 1: which half of the positives trains)")
    ap.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs; every epoch is scored (about 4.5 minutes each on 2 cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    try:
        folds = sorted({int(f) for f in args.folds.split(",") if f.strip()})
    except ValueError:
        folds = [-1]
    if not folds or any(f not in (0, 1) for f in folds) or args.epochs < 1:
        print(f"--folds must list 0 and/or 1 and --epochs must be at least 1 (got {args.folds!r}, {args.epochs})", file=sys.stderr)
        return 2
    if not DATA.is_dir():
        print(f"encoder fine-tuning probe skipped: evaluation data not found at {DATA}", file=sys.stderr)
        return 0
    torch.set_num_threads(min(2, torch.get_num_threads()))
    results = [run_fold(f, args.epochs, args.seed) for f in folds]
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"max_tokens": MAX_TOKENS, "batch": BATCH, "epochs": args.epochs, "seed": args.seed, "folds": results}
    (args.out / "encoder_finetune.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    (args.out / "encoder_finetune.md").write_text(markdown(results), encoding="utf-8")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
