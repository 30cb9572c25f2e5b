"""Prompt classifier: which prompts touch a forget target, with calibrated false-positive rates."""

from eco_guard.classifier.negatives.background import background_prompts
from eco_guard.classifier.calibration import Calibration, conformal_threshold
from eco_guard.classifier.features.encoder import Encoder, resolve_encoder_path
from eco_guard.classifier.model import Classifier, TargetData, TargetFit, Verdict

__all__ = [
    "Calibration",
    "Classifier",
    "Encoder",
    "TargetData",
    "TargetFit",
    "Verdict",
    "background_prompts",
    "conformal_threshold",
    "resolve_encoder_path",
]
