"""Prompt classifier: which prompts touch a forget target, with calibrated false-positive rates.

The names below are loaded on first use (PEP 562): the fit's worker processes import the
head-fitting modules of this package, and importing the encoder (so torch) in each of
them would cost seconds of start-up for code they never run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eco_guard.classifier.calibration import Calibration, conformal_threshold
    from eco_guard.classifier.features.encoder import Encoder, resolve_encoder_path
    from eco_guard.classifier.model import Classifier, TargetData, TargetFit, Verdict
    from eco_guard.classifier.negatives.background import background_prompts

_HOME = {
    "Calibration": "eco_guard.classifier.calibration",
    "conformal_threshold": "eco_guard.classifier.calibration",
    "Encoder": "eco_guard.classifier.features.encoder",
    "resolve_encoder_path": "eco_guard.classifier.features.encoder",
    "Classifier": "eco_guard.classifier.model",
    "TargetData": "eco_guard.classifier.model",
    "TargetFit": "eco_guard.classifier.model",
    "Verdict": "eco_guard.classifier.model",
    "background_prompts": "eco_guard.classifier.negatives.background",
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)
