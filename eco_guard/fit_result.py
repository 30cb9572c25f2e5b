"""What ``eco-guard fit`` produced, typed: per-target results, structured warnings, the summary.

Kept apart from :mod:`eco_guard.fitting` so that the fit report (:mod:`eco_guard.report`)
and the CLI can read a result without importing the fitting machinery that makes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifact import FittedTarget
from .classifier.fit import TargetFit
from .fit_warnings import FitWarning
from .optimize import SearchResult
from .policy import TargetSpec


@dataclass(frozen=True)
class TargetResult:
    """What fitting one target produced: its classifier head, its corruption and its search."""

    spec: TargetSpec
    classifier: TargetFit
    fitted: FittedTarget
    search: SearchResult | None
    search_reused: bool = False  # the search's result came from the fit cache (same inputs as before)

    @property
    def estimated_fpr(self) -> dict[str, float]:
        """Cross-calibrated flag rate per source of held-out negatives (shared by all targets of a fit)."""
        return dict(self.classifier.calibration.estimated_fpr)

    @property
    def worst_fpr(self) -> tuple[str, float] | None:
        """The source with the highest estimated false-positive rate, and that rate."""
        rates = self.estimated_fpr
        return max(rates.items(), key=lambda kv: kv[1]) if rates else None

    @property
    def certified(self) -> bool:
        """Calibration certified target_fpr and no source's estimated rate exceeds it."""
        worst = self.worst_fpr
        cal = self.classifier.calibration
        return cal.achievable and (worst is None or worst[1] <= cal.target_fpr)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for report.json and the CLI's output."""
        fit, ft, cal = self.classifier, self.fitted, self.classifier.calibration
        worst = self.worst_fpr
        return {
            "id": fit.id,
            "action": self.spec.action,
            "n_forget": fit.n_forget,
            "n_retain_train": fit.n_retain_train,
            "n_swapped_retain": fit.n_swapped_retain,
            "lacks_near_retain": fit.lacks_near_retain,
            "n_near_retain": fit.n_near_retain,
            "n_background_train": fit.n_background_train,
            "n_calibration": cal.n_calibration,
            "threshold": cal.threshold,
            "target_fpr": cal.target_fpr,
            "calibration_achievable": cal.achievable,
            "certified": self.certified,
            "estimated_fpr": self.estimated_fpr,
            "worst_fpr": None if worst is None else {"source": worst[0], "rate": worst[1]},
            "calibration_note": cal.note,
            "train_auc": fit.train_auc,
            "feature_view_note": fit.view_note,
            "corruption": ft.corruption.to_dict(),
            "scope": ft.mask.scope,
            "strength_source": ft.strength_source,
            "terms": list(ft.mask.terms),
            "search": self.search.to_dict() if self.search is not None else None,
            "search_reused": self.search_reused,
        }


@dataclass(frozen=True)
class FitResult:
    """What ``fit`` wrote, for the CLI and the report: typed per-target results and structured warnings."""

    out_dir: Path
    targets: list[TargetResult]
    warnings: list[FitWarning]
    seconds: float
    reused: dict[str, tuple[int, int]] = field(default_factory=dict)  # kind -> (found, looked up) in the fit cache

    @property
    def worst_fpr(self) -> tuple[str, float] | None:
        """The highest estimated false-positive rate over sources (the threshold is shared)."""
        rates = [t.worst_fpr for t in self.targets if t.worst_fpr is not None]
        return max(rates, key=lambda kv: kv[1]) if rates else None

    def summary_line(self) -> str:
        """The line ``fit`` ends with: where, how long, how many certified, the worst estimated rate."""
        n_cert = sum(t.certified for t in self.targets)
        worst = self.worst_fpr
        rate = "no estimate" if worst is None else f"worst estimated false-positive rate {worst[1]:.4f} ({worst[0]})"
        fpr = self.targets[0].classifier.calibration.target_fpr if self.targets else 0.0
        return (
            f"wrote {self.out_dir} in {self.seconds:.1f} s: {n_cert} of {len(self.targets)} target(s) certified at "
            f"target_fpr {fpr:g}; {rate}; {len(self.warnings)} warning(s)"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what ``eco-guard fit`` prints on stdout."""
        worst = self.worst_fpr
        return {
            "out": str(self.out_dir),
            "seconds": round(self.seconds, 2),
            "worst_fpr": None if worst is None else {"source": worst[0], "rate": worst[1]},
            "warnings": [w.to_dict() for w in self.warnings],
            "reused": {k: {"found": a, "of": b} for k, (a, b) in self.reused.items()},
            "targets": [t.to_dict() for t in self.targets],
        }
