"""Per-target prompt classifier: one logistic head per forget target over sentence embeddings.

Heads are tiny (``dim + 1`` numbers each), so a decision costs one encoder forward plus
a ``[dim, n_targets]`` matrix product, and fitting a policy takes seconds. What makes the
scores usable is the threshold: it is calibrated by split conformal prediction on
negatives no head saw, so "flag when score > threshold" comes with a stated
false-positive rate (see :mod:`eco_guard.classifier.calibration` and :meth:`Classifier.fit`).
"""

from __future__ import annotations

import json
import sys
import warnings
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from eco_guard.classifier.background import background_prompts
from eco_guard.classifier.calibration import Calibration, conformal_threshold
from eco_guard.classifier.encoder import Encoder
from eco_guard.errors import GuardLoadError, InputError, UserError

FORMAT_NAME = "eco-guard-classifier"
FORMAT_VERSION = 1
WEIGHTS_FILE = "classifier.safetensors"
META_FILE = "classifier.json"

_C = 4.0
"""Inverse L2 strength of the heads. Embeddings are unit vectors, so separating a topic
needs weights of norm ~10-20; C=1 shrinks them until forget paraphrases score like
background, C>10 starts memorising the few forget examples."""

_EMBED_CHUNK = 256
"""Texts per progress-bar step while fitting; large enough to keep the encoder batched."""


@dataclass(frozen=True)
class TargetData:
    """The labelled text a policy gives for one target."""

    id: str
    forget: list[str]
    retain: list[str]


@dataclass(frozen=True)
class TargetFit:
    """What fitting one head used and achieved, for the fit report.

    ``n_calibration`` and ``calibration`` describe the threshold shared by all heads
    (see :meth:`Classifier.fit`), so they are the same for every target of one fit.
    """

    id: str
    n_forget: int
    n_retain_train: int
    n_background_train: int
    n_calibration: int
    calibration: Calibration
    train_auc: float
    """AUROC on the head's own training rows: a sanity check, not an estimate of test quality."""


@dataclass(frozen=True)
class Verdict:
    """The classifier's decision on one text.

    ``score`` and ``threshold`` are always those of a real target (the flagged one with the
    largest margin, or the highest-scoring one when nothing is flagged), so a passing
    request still shows how close it came.
    """

    target_index: int | None
    target_id: str | None
    score: float
    threshold: float
    flagged: bool


class Classifier:
    """Per-target logistic heads over encoder embeddings, with conformally calibrated thresholds.

    Thresholds are stored per target (``fit`` sets them all to one jointly calibrated
    value, see there). Immutable after construction, so one instance can serve many threads. Scores are
    sigmoid outputs in [0, 1] of heads trained with balanced class weights: they rank
    prompts but are not calibrated probabilities; the thresholds carry the calibration.
    Decision rule: a target is flagged when ``score > threshold`` (strict).
    """

    def __init__(
        self,
        encoder: Encoder,
        target_ids: list[str],
        weights: np.ndarray,
        bias: np.ndarray,
        thresholds: np.ndarray,
    ) -> None:
        n = len(target_ids)
        if n == 0:
            raise UserError("a classifier needs at least one target")
        if len(set(target_ids)) != n:
            raise UserError(f"target ids must be unique, got {target_ids}")
        weights = _frozen(weights)
        bias = _frozen(bias)
        thresholds = _frozen(thresholds)
        if weights.shape != (n, encoder.dim) or bias.shape != (n,) or thresholds.shape != (n,):
            raise UserError(
                f"head shapes do not match {n} targets and encoder dim {encoder.dim}: weights {weights.shape}, "
                f"bias {bias.shape}, thresholds {thresholds.shape}"
            )
        self._encoder = encoder
        self._target_ids = list(target_ids)
        self._weights = weights
        self._bias = bias
        self._thresholds = thresholds

    @property
    def encoder(self) -> Encoder:
        """The encoder the heads were fitted on; callers embedding text themselves must use it."""
        return self._encoder

    @property
    def target_ids(self) -> list[str]:
        """Target ids in column order of :meth:`score` (a copy, so callers cannot reorder ours)."""
        return list(self._target_ids)

    @property
    def thresholds(self) -> np.ndarray:
        """Per-target thresholds (read-only), in the order of :attr:`target_ids`."""
        return self._thresholds

    @property
    def weights(self) -> np.ndarray:
        """Head weights ``[n_targets, dim]`` (read-only); exposed for reports and reproducibility checks."""
        return self._weights

    @property
    def bias(self) -> np.ndarray:
        """Head intercepts ``[n_targets]`` (read-only)."""
        return self._bias

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Scores ``[n, n_targets]`` for a batch of texts; one encoder call for the whole batch."""
        return self.score_embeddings(self._encoder.encode(texts))

    def score_embeddings(self, emb: np.ndarray) -> np.ndarray:
        """Scores for embeddings already produced by :attr:`encoder` (lets callers reuse them)."""
        emb = np.asarray(emb)
        if emb.ndim != 2 or emb.shape[1] != self._weights.shape[1]:
            raise InputError(f"expected embeddings of shape [n, {self._weights.shape[1]}], got {emb.shape}")
        return _head_scores(emb, self._weights, self._bias)

    def decide(self, scores: np.ndarray) -> list[Verdict]:
        """Apply the thresholds; when several targets fire, report the one furthest above its threshold.

        The margin (score - threshold) rather than the raw score picks the target because
        thresholds may differ per head (``fit`` shares one, but a classifier can be built
        with its own): a 0.9 on a strict head can be weaker evidence than a 0.6 on a
        lenient one.
        """
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 2 or scores.shape[1] != len(self._target_ids):
            raise InputError(f"expected scores of shape [n, {len(self._target_ids)}], got {scores.shape}")
        flagged = scores > self._thresholds
        margins = np.where(flagged, scores - self._thresholds, -np.inf)
        verdicts: list[Verdict] = []
        for row in range(scores.shape[0]):
            if flagged[row].any():
                i = int(np.argmax(margins[row]))
                verdicts.append(Verdict(i, self._target_ids[i], float(scores[row, i]), float(self._thresholds[i]), True))
            else:
                i = int(np.argmax(scores[row]))
                verdicts.append(Verdict(None, None, float(scores[row, i]), float(self._thresholds[i]), False))
        return verdicts

    def save(self, directory: Path) -> None:
        """Write the heads (safetensors, exact float64) and their metadata (JSON) to ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        save_file(
            {"weights": self._weights, "bias": self._bias, "thresholds": self._thresholds},
            str(directory / WEIGHTS_FILE),
        )
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "target_ids": self._target_ids,
            "encoder": self._encoder.name,
            "dim": self._encoder.dim,
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: Path, encoder: Encoder) -> Classifier:
        """Restore heads saved by :meth:`save`, refusing anything that would score garbage.

        A dim mismatch means the heads were fitted on another encoder and is an error; a
        different encoder *name* with the same dim is only warned about, because moving or
        renaming a model directory is legitimate.
        """
        meta = _read_meta(directory)
        try:
            tensors = load_file(str(directory / WEIGHTS_FILE))
        except Exception as exc:  # safetensors raises several types for a missing or damaged file
            raise GuardLoadError(f"{directory / WEIGHTS_FILE}: cannot read classifier heads ({exc}); re-run fit") from exc
        missing = {"weights", "bias", "thresholds"} - set(tensors)
        if missing:
            raise GuardLoadError(f"{directory / WEIGHTS_FILE}: missing tensors {sorted(missing)}; re-run fit")
        if meta["dim"] != encoder.dim:
            raise GuardLoadError(
                f"{directory}: heads were fitted on a {meta['dim']}-dim encoder ({meta['encoder']}), "
                f"but the loaded encoder {encoder.name} has dim {encoder.dim}; load the encoder used for fitting"
            )
        if meta["encoder"] != encoder.name:
            warnings.warn(
                f"{directory}: heads were fitted with encoder {meta['encoder']!r}, loading with {encoder.name!r}",
                stacklevel=2,
            )
        arrays = {k: np.asarray(tensors[k], dtype=np.float64) for k in ("weights", "bias", "thresholds")}
        if not all(np.all(np.isfinite(a)) for a in arrays.values()):
            raise GuardLoadError(f"{directory / WEIGHTS_FILE}: contains NaN or infinite values; re-run fit")
        try:
            return cls(encoder, meta["target_ids"], arrays["weights"], arrays["bias"], arrays["thresholds"])
        except UserError as exc:
            raise GuardLoadError(f"{directory}: inconsistent classifier files: {exc}") from exc

    @classmethod
    def fit(
        cls,
        encoder: Encoder,
        targets: Sequence[TargetData],
        *,
        target_fpr: float,
        seed: int = 0,
        background: Sequence[str] | None = None,
        progress: bool = True,
    ) -> tuple[Classifier, list[TargetFit]]:
        """Fit one head per target, then calibrate one threshold for all of them.

        Negatives for a target's head are its retain texts, the other targets' forget texts
        and the background prompts. Half of every target's retain texts and half of the
        background are held out: no head trains on them. Splits are seeded per target id,
        so reordering or adding targets does not change another target's split.

        The threshold is calibrated on the pooled held-out negatives with the *max score
        over targets* as the conformal score, and shared by every head. A prompt counts as
        flagged when any target flags it, so this is what makes ``target_fpr`` bound the
        rate at which a negative is flagged at all. Per-target thresholds at ``target_fpr``
        each would let n targets flag up to n times that rate, and thresholds fitted only
        on a target's own retain examples ignore the near neighbours other targets name.
        On the TOFU few-shot protocol (20 targets, D3 in DESIGN.md) the per-target scheme
        flagged 9% of MMLU and 98% of held-out TOFU retain questions, the joint one 0% and
        3%, at 96% recall. With one target the two schemes are the same.
        """
        targets = list(targets)
        _validate_targets(targets)
        if not 0.0 < target_fpr < 1.0:
            raise UserError(f"target_fpr must be strictly between 0 and 1, got {target_fpr}")
        bg = _unique(background_prompts() if background is None else background)

        # Every distinct text is embedded exactly once, whatever roles it plays.
        row_of: dict[str, int] = {}
        for text in [s for t in targets for s in (*t.forget, *t.retain)] + bg:
            row_of.setdefault(text, len(row_of))
        emb = _embed(encoder, list(row_of), progress)

        bg_order = np.random.default_rng(seed).permutation(len(bg))
        n_bg_cal = len(bg) // 2
        bg_cal = [bg[i] for i in bg_order[:n_bg_cal]]
        bg_train = [bg[i] for i in bg_order[n_bg_cal:]]

        plans = [_plan_target(t, targets, bg_train, seed) for t in targets]
        # Held out from every head: no text any head trains on may calibrate the shared threshold.
        trained = {s for plan in plans for s in plan.train_texts}
        pool = [s for s in _unique([s for plan in plans for s in plan.retain_cal] + bg_cal) if s not in trained]
        if not pool:
            raise UserError("no held-out negatives to calibrate the threshold on; add retain examples or background prompts")

        weights = np.zeros((len(targets), encoder.dim))
        bias = np.zeros(len(targets))
        for i, plan in enumerate(tqdm(plans, desc="fitting heads", unit="target", disable=not progress, file=sys.stderr)):
            head = LogisticRegression(C=_C, class_weight="balanced", max_iter=5000)
            head.fit(emb[[row_of[s] for s in plan.train_texts]], plan.train_labels)
            weights[i] = head.coef_[0]
            bias[i] = head.intercept_[0]

        # Calibrate with the exact scoring code used at run time, so a calibration score and
        # a live score of the same embedding are bit-identical.
        all_scores = _head_scores(emb, weights, bias)
        joint = conformal_threshold(all_scores[[row_of[s] for s in pool]].max(axis=1), target_fpr)
        calibration = replace(
            joint,
            note=f"one threshold shared by all {len(targets)} targets, calibrated on the max score over targets, "
            f"so the rate bounds a prompt being flagged by any target; {joint.note}",
        )
        fits = [
            TargetFit(
                id=target.id,
                n_forget=plan.n_forget,
                n_retain_train=plan.n_retain_train,
                n_background_train=plan.n_background_train,
                n_calibration=len(pool),
                calibration=calibration,
                train_auc=float(roc_auc_score(plan.train_labels, all_scores[[row_of[s] for s in plan.train_texts], i])),
            )
            for i, (target, plan) in enumerate(zip(targets, plans))
        ]
        thresholds = np.full(len(targets), calibration.threshold)
        return cls(encoder, [t.id for t in targets], weights, bias, thresholds), fits


@dataclass(frozen=True)
class _TargetPlan:
    """What one head trains on, and which of its retain texts it leaves for calibration."""

    train_texts: list[str]
    train_labels: np.ndarray
    retain_cal: list[str]
    n_forget: int
    n_retain_train: int
    n_background_train: int


def _plan_target(target: TargetData, targets: list[TargetData], bg_train: list[str], seed: int) -> _TargetPlan:
    """Choose one head's training rows: its forget texts against everything it must not flag.

    A forget text is never a negative for its own target (if the background or another
    target contains it, the policy's forget list wins).
    """
    positives = _unique(target.forget)
    forget_set = set(positives)
    retain = [s for s in _unique(target.retain) if s not in forget_set]
    order = np.random.default_rng([seed, zlib.crc32(target.id.encode("utf-8"))]).permutation(len(retain))
    n_retain_cal = len(retain) // 2
    retain_cal = [retain[i] for i in order[:n_retain_cal]]
    retain_train = [retain[i] for i in order[n_retain_cal:]]
    other_forget = [s for t in targets if t.id != target.id for s in t.forget]

    negatives = [s for s in _unique(retain_train + other_forget + bg_train) if s not in forget_set]
    if not negatives:
        raise UserError(f"target {target.id!r}: no negative examples to train on; add retain examples or background prompts")
    labels = np.concatenate([np.ones(len(positives), dtype=np.int64), np.zeros(len(negatives), dtype=np.int64)])
    return _TargetPlan(
        train_texts=positives + negatives,
        train_labels=labels,
        retain_cal=retain_cal,
        n_forget=len(positives),
        n_retain_train=len(retain_train),
        n_background_train=len(set(negatives) & set(bg_train)),
    )


def _validate_targets(targets: list[TargetData]) -> None:
    """Reject target lists that cannot produce a meaningful head, naming the offending target."""
    if not targets:
        raise UserError("need at least one target to fit a classifier")
    seen: set[str] = set()
    for t in targets:
        if not t.id:
            raise UserError("every target needs a non-empty id")
        if t.id in seen:
            raise UserError(f"duplicate target id {t.id!r}")
        seen.add(t.id)
        if not any(s.strip() for s in t.forget):
            raise UserError(f"target {t.id!r} has no forget examples")


def _head_scores(emb: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Sigmoid of the linear heads, in float64 so thresholds compare at full precision."""
    return expit(emb.astype(np.float64) @ weights.T + bias)


def _embed(encoder: Encoder, texts: list[str], progress: bool) -> np.ndarray:
    """Embed in chunks so a long fit shows progress; chunking does not change the result."""
    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    with tqdm(total=len(texts), desc="embedding examples", unit="text", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(texts), _EMBED_CHUNK):
            chunk = texts[start : start + _EMBED_CHUNK]
            out[start : start + len(chunk)] = encoder.encode(chunk)
            bar.update(len(chunk))
    return out


def _unique(texts: Iterable[str]) -> list[str]:
    """Distinct non-blank texts in first-seen order, so splits depend only on content and seed."""
    return list(dict.fromkeys(s for s in texts if s.strip()))


def _frozen(values: np.ndarray) -> np.ndarray:
    """A private float64 copy that cannot be written, so shared instances stay immutable."""
    arr = np.array(values, dtype=np.float64)
    arr.flags.writeable = False
    return arr


def _read_meta(directory: Path) -> dict[str, Any]:
    """Read and check ``classifier.json``; every failure says which file and what to do."""
    path = directory / META_FILE
    if not path.is_file():
        raise GuardLoadError(f"{path}: not found; is {directory} a fitted guard directory? Run `eco-guard fit` to create one")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GuardLoadError(f"{path}: unreadable ({exc}); re-run fit") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise GuardLoadError(f"{path}: not an eco-guard classifier file")
    if meta.get("format_version") != FORMAT_VERSION:
        raise GuardLoadError(
            f"{path}: format version {meta.get('format_version')!r}, this eco-guard reads version {FORMAT_VERSION}; "
            f"re-run fit with this version"
        )
    ids = meta.get("target_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise GuardLoadError(f"{path}: target_ids must be a list of strings")
    if not isinstance(meta.get("dim"), int) or not isinstance(meta.get("encoder"), str):
        raise GuardLoadError(f"{path}: missing or invalid 'dim' / 'encoder'")
    return meta
