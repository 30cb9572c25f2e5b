"""Per-target prompt classifier: one logistic head per forget target over layer-pooled
encoder features joined with lexical (TF-IDF) features of the forget vocabulary.

The encoder half recognises topics and rewordings; the lexical half recognises the
rare words (names, titles, jargon) that make a prompt about *this* target rather than
about something of the same kind (see :mod:`eco_guard.classifier.features.lexical`). Heads are
linear, so a decision costs one encoder forward, one sparse TF-IDF row and a
``[features, n_targets]`` product, and fitting a policy takes seconds. What makes the
scores usable is the threshold: it is calibrated by split conformal prediction on
negatives no head saw, so "flag when score > threshold" comes with a stated
false-positive rate (see :mod:`eco_guard.classifier.calibration` and :func:`eco_guard.classifier.fit.fit_heads`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack

import numpy as np
from safetensors.numpy import load_file, save_file

from eco_guard.classifier.features.encoder import Encoder
from eco_guard.classifier.heads import VIEWS, FeatureView, TargetData, head_scores, view_columns, view_width
from eco_guard.classifier.features.lexical import Lexicon
from eco_guard.classifier.fit import FitOptions, TargetFit, fit_heads
from eco_guard.errors import GuardLoadError, InputError, UserError

__all__ = ["Classifier", "FeatureView", "TargetData", "TargetFit", "Verdict"]


FORMAT_NAME = "eco-guard-classifier"
FORMAT_VERSION = 4
"""3: heads read layer-pooled features (:meth:`Encoder.features`), not the sentence embedding.
4: the lexical block's weight is chosen per policy and recorded (``lexical_weight``)."""
WEIGHTS_FILE = "classifier.safetensors"
META_FILE = "classifier.json"


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
    """Per-target logistic heads over encoder features, with conformally calibrated thresholds.

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
        lexicon: Lexicon | None = None,
        view: FeatureView = "sentence",
    ) -> None:
        n = len(target_ids)
        if n == 0:
            raise UserError("a classifier needs at least one target")
        if len(set(target_ids)) != n:
            raise UserError(f"target ids must be unique, got {target_ids}")
        weights = _frozen(weights)
        bias = _frozen(bias)
        thresholds = _frozen(thresholds)
        lexicon = lexicon if lexicon is not None else Lexicon((), np.zeros(0))
        if view not in VIEWS:
            raise UserError(f"feature view must be one of {VIEWS}, got {view!r}")
        width = view_width(encoder, view)
        if weights.shape != (n, width + lexicon.size) or bias.shape != (n,) or thresholds.shape != (n,):
            raise UserError(
                f"head shapes do not match {n} targets, {view} features of width {width} and {lexicon.size} lexical "
                f"features: weights {weights.shape}, "
                f"bias {bias.shape}, thresholds {thresholds.shape}"
            )
        self._encoder = encoder
        self._target_ids = list(target_ids)
        self._weights = weights
        self._bias = bias
        self._thresholds = thresholds
        self._lexicon = lexicon
        self._view: FeatureView = view

    @property
    def view(self) -> FeatureView:
        """Which encoder features the heads read (chosen by :meth:`fit`)."""
        return self._view

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
        """Head weights ``[n_targets, dim + lexical terms]`` (read-only); for reports and reproducibility checks."""
        return self._weights

    @property
    def bias(self) -> np.ndarray:
        """Head intercepts ``[n_targets]`` (read-only)."""
        return self._bias

    @property
    def lexicon(self) -> Lexicon:
        """The lexical vocabulary the heads' trailing weight columns belong to."""
        return self._lexicon

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Scores ``[n, n_targets]`` for a batch of texts; one encoder call for the whole batch."""
        feats = view_columns(self._encoder.features(texts), self._view, self._encoder.dim)
        return head_scores(feats, self._lexicon.transform(texts), self._weights, self._bias)

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
            {"weights": self._weights, "bias": self._bias, "thresholds": self._thresholds, "idf": self._lexicon.idf},
            str(directory / WEIGHTS_FILE),
        )
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "target_ids": self._target_ids,
            "encoder": self._encoder.name,
            "encoder_precision": self._encoder.precision,
            "encoder_runtime": self._encoder.runtime,  # informational: both runtimes give the same features to ~1e-7
            "dim": self._encoder.feature_dim,
            "feature_layers": list(self._encoder.feature_layers),
            "feature_view": self._view,
            "lexical_terms": list(self._lexicon.terms),
            "lexical_weight": self._lexicon.weight,
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
        missing = {"weights", "bias", "thresholds", "idf"} - set(tensors)
        if missing:
            raise GuardLoadError(f"{directory / WEIGHTS_FILE}: missing tensors {sorted(missing)}; re-run fit")
        view = meta.get("feature_view")
        if view not in VIEWS:
            raise GuardLoadError(f"{directory / META_FILE}: feature_view must be one of {VIEWS}, got {view!r}; re-run fit")
        if meta["dim"] != encoder.feature_dim or meta.get("feature_layers") != list(encoder.feature_layers):
            raise GuardLoadError(
                f"{directory}: heads were fitted on {meta['dim']}-wide features of layers {meta.get('feature_layers')} "
                f"({meta['encoder']}), but the loaded encoder {encoder.name} gives {encoder.feature_dim}-wide features "
                f"of layers {list(encoder.feature_layers)}; load the encoder used for fitting"
            )
        fitted_precision = meta.get("encoder_precision", "float32")
        if fitted_precision != encoder.precision:
            raise GuardLoadError(
                f"{directory}: heads were calibrated with a {fitted_precision} encoder but the encoder runs in "
                f"{encoder.precision}; thresholds only hold at the precision they were fitted at "
                f"(set classifier.precision: {fitted_precision} or re-run fit)"
            )
        if meta["encoder"] != encoder.name:
            warnings.warn(
                f"{directory}: heads were fitted with encoder {meta['encoder']!r}, loading with {encoder.name!r}",
                stacklevel=2,
            )
        arrays = {k: np.asarray(tensors[k], dtype=np.float64) for k in ("weights", "bias", "thresholds", "idf")}
        if not all(np.all(np.isfinite(a)) for a in arrays.values()):
            raise GuardLoadError(f"{directory / WEIGHTS_FILE}: contains NaN or infinite values; re-run fit")
        try:
            lexicon = Lexicon(tuple(meta["lexical_terms"]), arrays["idf"], meta.get("lexical_weight"))
            return cls(encoder, meta["target_ids"], arrays["weights"], arrays["bias"], arrays["thresholds"], lexicon, view)
        except (UserError, ValueError) as exc:
            raise GuardLoadError(f"{directory}: inconsistent classifier files: {exc}") from exc

    @classmethod
    def fit(cls, encoder: Encoder, targets: Sequence[TargetData], **options: Unpack[FitOptions]) -> tuple[Classifier, list[TargetFit]]:
        """Fit one head per target and one shared, conformally calibrated threshold; see :func:`fit_heads`.

        Returns the classifier and, per target, what its head trained on and achieved (for
        the fit report).
        """
        fitted = fit_heads(encoder, targets, **options)
        classifier = cls(encoder, fitted.target_ids, fitted.weights, fitted.bias, fitted.thresholds, fitted.lexicon, fitted.view)
        return classifier, fitted.fits


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
    terms = meta.get("lexical_terms")
    if not isinstance(terms, list) or not all(isinstance(t, str) for t in terms):
        raise GuardLoadError(f"{path}: lexical_terms must be a list of strings")
    if not isinstance(meta.get("dim"), int) or not isinstance(meta.get("encoder"), str):
        raise GuardLoadError(f"{path}: missing or invalid 'dim' / 'encoder'")
    return meta
