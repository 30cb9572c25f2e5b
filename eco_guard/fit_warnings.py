"""Structured warnings of a fit: what went wrong, for which target, and what to try.

``fit`` prints each on stderr and the report lists them; code reading ``report.json``
(or :class:`~eco_guard.fitting.FitResult`) can act on ``code`` without parsing prose.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .classifier import TargetData
    from .classifier.fit import TargetFit

#: the codes a fit can raise, each with the part of the fit it comes from
CODES = {
    "objective_not_met": "strength search",
    "fluency_bound": "strength search",
    "looping": "strength search",
    "fpr_above_target": "calibration",
    "calibration_not_achievable": "calibration",
    "few_near_retain": "classifier",
    "no_near_negatives": "classifier",
    "retain_also_forget": "policy",
    "no_output_check": "output stage",
}


@dataclass(frozen=True)
class FitWarning:
    """One problem a fit found; ``target`` is None for ones about the whole policy."""

    code: str
    message: str
    hint: str = ""
    target: str | None = None

    def __post_init__(self) -> None:
        assert self.code in CODES, f"unknown fit warning code {self.code!r}"

    def line(self) -> str:
        """One line for stderr: what, where, and what to try."""
        where = f"target {self.target!r}: " if self.target else ""
        return f"{where}{self.message}" + (f"; try: {self.hint}" if self.hint else "")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for report.json."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FitWarning:
        """Inverse of :meth:`to_dict` (cached search results carry their warnings)."""
        return cls(str(d["code"]), str(d["message"]), str(d.get("hint", "")), d.get("target"))


def classifier_warnings(fits: Sequence[TargetFit], data: Sequence[TargetData], calibration: Sequence[str] | None) -> list[FitWarning]:
    """The classifier's problems: a calibration that cannot certify, retain examples that are not near."""
    from .classifier.negatives.swaps import MIN_NEAR_RETAIN, NEAR_QUANTILE
    from .classifier.fit import NO_NEAR_NEGATIVES, lacks_near_negatives

    out = [
        FitWarning("calibration_not_achievable", fit.calibration.note, "", fit.id)
        for fit in fits
        if not fit.calibration.achievable
    ]
    generic = [fit.id for fit, t in zip(fits, data) if fit.lacks_near_retain and any(s.strip() for s in t.retain)]
    if generic:
        out.append(
            FitWarning(
                "few_near_retain",
                f"few retain examples of {', '.join(map(repr, generic))} (no more than half, and fewer than "
                f"{MIN_NEAR_RETAIN}) are nearer to the target's forget examples than {NEAR_QUANTILE:.0%} of everyday "
                "prompts, so they say little about where the target ends and are not counted as near negatives",
                "retain examples of what must still pass that sits close to the target (other people, neighbouring topics)",
            )
        )
    if lacks_near_negatives(sum(fit.n_near_retain for fit in fits), calibration):
        out.append(FitWarning("no_near_negatives", NO_NEAR_NEGATIVES))
    return out


def fpr_warnings(fits: Sequence[TargetFit]) -> list[FitWarning]:
    """One warning when a source's estimated false-positive rate exceeds target_fpr (the threshold is shared).

    Such a fit is not certified whatever the conformal bound on the other sources says:
    that source's traffic would be flagged more often than the policy allows.
    """
    if not fits:
        return []
    cal = fits[0].calibration
    over = [(name, rate) for name, rate in cal.estimated_fpr if rate > cal.target_fpr]
    if not over:
        return []
    rates = ", ".join(f"{name} {rate:.3f}" for name, rate in sorted(over, key=lambda kv: -kv[1]))
    return [
        FitWarning(
            "fpr_above_target",
            f"estimated false-positive rate above target_fpr {cal.target_fpr:g} on {rates} (2-fold cross-calibration); "
            "no target is certified",
            "more retain examples like those negatives (they train the heads and calibrate the threshold), "
            "a classifier.calibration sample of real traffic, or a larger target_fpr",
        )
    ]
