"""The fitted-guard directory: write it after ``fit``, restore it exactly with ``Guard.load``.

Layout (DESIGN section 5)::

    guard.yaml              resolved policy + fitted corruptions, data hashes, versions
    classifier.safetensors  head weights, biases and thresholds
    classifier.json         target ids, encoder, dims
    report.json/.md, *.png  the fit report (written by eco_guard.report)

``guard.yaml`` is the human-readable record of everything but the classifier. Each
threshold is stored once, in ``classifier.safetensors`` next to the head it was calibrated
for (the fit report shows it); a copy in ``guard.yaml`` could only disagree with it.
Older ``guard.yaml`` files that still carry a ``threshold`` entry load as before; the
entry is ignored.

This module reads the directory into the parts of a guard (:class:`GuardParts`); it
does not build the :class:`~eco_guard.guard.Guard` itself, so that the guard can offer
``Guard.load`` without the two modules importing each other.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import yaml

from .audit import AuditSink, JsonlAudit, NullAudit
from .canonical import Canonicalizer
from .language import LanguagePolicy
from .output.answers import AnswerClassifier
from .classifier import Classifier, Encoder, resolve_encoder_path
from .corruption import Corruption
from .errors import GuardLoadError, PolicyError
from .policy import LoadedPolicy, parse_policy
from .routing import TargetRule
from .runner.base import MaskSpec, Runner

FORMAT = 1
GUARD_FILE = "guard.yaml"


@dataclass(frozen=True)
class FittedTarget:
    """What ``fit`` learned for one target beyond the classifier head."""

    id: str
    corruption: Corruption
    mask: MaskSpec
    strength_source: str  # "policy" | "auto-default" | "optimized"


def package_versions() -> dict[str, str]:
    """Versions that affect a guard's behaviour, recorded so a reload can be audited."""
    out = {"python": platform.python_version()}
    for dist in ("eco-guard", "torch", "transformers", "sentence-transformers", "numpy", "scikit-learn"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def write_guard(
    out_dir: Path,
    *,
    loaded: LoadedPolicy,
    resolved_policy: dict[str, Any],
    classifier: Classifier,
    fitted: list[FittedTarget],
    data: list[dict[str, Any]],
    seed: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``guard.yaml`` and the classifier files into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    classifier.save(out_dir)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "policy_file": str(loaded.path),
        "policy": resolved_policy,
        "fitted": {
            "targets": [
                {
                    "id": f.id,
                    "corruption": f.corruption.to_dict(),
                    "scope": f.mask.scope,
                    "terms": list(f.mask.terms),
                    "strength_source": f.strength_source,
                }
                for f in fitted
            ]
        },
        "data": data,
        "versions": package_versions(),
        **(extra or {}),
    }
    path = out_dir / GUARD_FILE
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    tmp.replace(path)
    return path


def read_guard_yaml(directory: Path) -> dict[str, Any]:
    """Parse ``guard.yaml`` with errors that name the directory and what is wrong."""
    path = directory / GUARD_FILE
    if not directory.is_dir():
        raise GuardLoadError(f"{directory}: guard directory not found; create one with `eco-guard fit POLICY.yaml --out {directory}`")
    if not path.is_file():
        raise GuardLoadError(f"{path}: missing; is {directory} a directory written by `eco-guard fit`?")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise GuardLoadError(f"{path}: unreadable ({exc}); re-run `eco-guard fit`") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise GuardLoadError(f"{path}: not a guard file of format {FORMAT}; re-run `eco-guard fit` with this version")
    return doc


@dataclass(frozen=True)
class GuardParts:
    """Everything a :class:`~eco_guard.guard.Guard` is built from, as its keyword arguments."""

    classifier: Classifier
    rules: list[TargetRule]
    runner: Runner | Callable[[], Runner]
    canonical: Canonicalizer | None
    answers: AnswerClassifier | None
    languages: LanguagePolicy
    audit: AuditSink
    on_error: Literal["fail_closed", "fail_open"]
    seed: int
    name: str


def read_guard(
    directory: Path,
    *,
    runner: Runner | None = None,
    audit: bool | AuditSink = True,
    progress: bool = False,
) -> GuardParts:
    """The parts of the guard in ``directory``; the runner is a factory, loaded on first generation."""
    doc = read_guard_yaml(directory)
    try:
        loaded = parse_policy(doc["policy"], source=str(directory / GUARD_FILE), base_dir=directory)
        fitted = doc["fitted"]["targets"]
        seed = int(doc.get("seed", 0))
    except PolicyError as exc:
        raise GuardLoadError(f"{directory / GUARD_FILE}: the stored policy is invalid: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise GuardLoadError(f"{directory / GUARD_FILE}: missing or malformed entry ({exc}); re-run `eco-guard fit`") from exc
    policy = loaded.policy
    encoder = Encoder(
        resolve_encoder_path(policy.classifier.encoder, loaded.base_dir),
        precision=policy.classifier.precision,
        runtime=policy.classifier.runtime,
    )
    classifier = Classifier.load(directory, encoder)
    if list(classifier.target_ids) != [t["id"] for t in fitted]:
        raise GuardLoadError(f"{directory}: classifier targets {classifier.target_ids} do not match guard.yaml")
    rules = []
    for entry, spec in zip(fitted, policy.targets):
        rules.append(
            TargetRule(
                id=spec.id,
                action=spec.action,
                corruption=Corruption.from_dict(entry["corruption"]),
                mask=MaskSpec(scope=entry.get("scope", "prompt"), terms=tuple(entry.get("terms", ()))),
                refusal=spec.refusal,
            )
        )
    sink: AuditSink
    if isinstance(audit, bool):
        sink = JsonlAudit(loaded.resolve(policy.audit.path), policy.audit.prompts) if audit and policy.audit.path else NullAudit()
    else:
        sink = audit

    def make_runner() -> Runner:
        from .runner.transformers_runner import TransformersRunner

        return TransformersRunner.load(
            policy.model.path,
            device=policy.model.device,
            dtype=policy.model.dtype,
            base_dir=loaded.base_dir,
            progress=progress,
        )

    names = doc.get("canonical")
    canonical = Canonicalizer.from_names(names["names"], names.get("words", ())) if isinstance(names, dict) else None
    return GuardParts(
        canonical=canonical,
        answers=AnswerClassifier.load(directory, canonical),
        languages=LanguagePolicy(
            tuple(policy.languages.calibrated), policy.languages.other, policy.languages.min_confidence
        ),
        classifier=classifier,
        rules=rules,
        runner=runner if runner is not None else make_runner,
        audit=sink,
        on_error=policy.on_error,
        seed=seed,
        name=directory.resolve().name,
    )
