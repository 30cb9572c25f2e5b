"""Fitting the classifier: ``fit_heads`` and its steps.

- :mod:`~eco_guard.classifier.fit.procedure`: :func:`fit_heads`, the fit step by step, and its report rows;
- :mod:`~eco_guard.classifier.fit.held_out`: which negatives train and which calibrate;
- :mod:`~eco_guard.classifier.fit.core`: heads on given features and their shared threshold;
- :mod:`~eco_guard.classifier.fit.selection`: choosing the feature view and lexical weight.
"""

from eco_guard.classifier.fit.core import CoreFit, fit_core
from eco_guard.classifier.fit.held_out import (
    NO_NEAR_NEGATIVES,
    RETAIN,
    NegativeSplit,
    held_out_max_scores,
    held_out_pieces,
    held_out_sources,
    lacks_near_negatives,
)
from eco_guard.classifier.fit.procedure import FitOptions, FittedHeads, TargetFit, fit_heads, validate_targets
from eco_guard.classifier.fit.selection import LEXICAL_WEIGHTS, SELECTION_TARGETS, forget_folds, select_features

__all__ = [
    "LEXICAL_WEIGHTS",
    "NO_NEAR_NEGATIVES",
    "RETAIN",
    "SELECTION_TARGETS",
    "CoreFit",
    "FitOptions",
    "FittedHeads",
    "NegativeSplit",
    "TargetFit",
    "fit_core",
    "fit_heads",
    "forget_folds",
    "held_out_max_scores",
    "held_out_pieces",
    "held_out_sources",
    "lacks_near_negatives",
    "select_features",
    "validate_targets",
]
