"""``eco-guard fit``: from a policy file to a fitted-guard directory.

Fitting is deterministic for a given policy, data and seed: the classifier split and
solver are seeded, corruption parameters are derived from the seed, and nothing reads
the clock or global random state.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .artifact import FittedTarget, write_guard
from .canonical import Canonicalizer
from .output.answers import AnswerTarget, fit_answers
from .output.report import add_output_section, output_section
from .classifier import Classifier, Encoder, TargetData, resolve_encoder_path
from .classifier.swaps import MIN_NEAR_RETAIN, NEAR_QUANTILE
from .classifier.training import NO_NEAR_NEGATIVES, lacks_near_negatives
from .corruption import Corruption
from .entities import extract_terms
from .examples import Example, load_examples
from .optimize import SearchConfig, SearchJob, SearchResult, search_strengths
from .policy import LoadedPolicy, TargetSpec, load_policy, policy_to_dict
from .report import write_fit_report
from .runner.base import MaskSpec
from .runner.store import resolve_model

if TYPE_CHECKING:
    from .runner.transformers_runner import TransformersRunner

#: ``strength: auto`` starts the search here (and is kept for actions that never
#: corrupt or methods without a strength): the noise
#: std per corrupted dimension is this many embedding stds, scaled by sqrt(D / dims)
#: so that the total noise energy per token is the same whatever ``dims`` is. At 2x
#: the answers of SmolLM2-135M stay fluent but lose the prompt's facts (DESIGN §7).
AUTO_NOISE_SCALE = 2.0


@dataclass(frozen=True)
class EmbeddingStats:
    """What the default strength needs to know about the model's embedding table."""

    std: float
    dim: int


@dataclass(frozen=True)
class FitSummary:
    """What ``fit`` wrote, for the CLI to print."""

    out_dir: Path
    targets: list[dict[str, Any]]
    seconds: float


def default_strength(method: str, dims: int, stats: EmbeddingStats) -> float:
    """The documented value of ``strength: auto`` before optimisation."""
    if not method.startswith("rand_noise"):
        return 0.0  # zero_out / flip_sign are parameterised by dims alone
    dims = min(dims, stats.dim)
    return float(AUTO_NOISE_SCALE * stats.std * math.sqrt(stats.dim / dims))


def _digest(examples: list[Example]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(ex.text.encode("utf-8"))
        h.update(b"\x00")
        h.update((ex.answer or "").encode("utf-8"))
        h.update(b"\x01")
    return "sha256:" + h.hexdigest()


def _target_seed(seed: int, target_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}|{target_id}".encode()).digest()[:4], "little")


def _resolved_policy(loaded: LoadedPolicy) -> dict[str, Any]:
    """The policy with every relative path made absolute, so the guard directory does
    not depend on the working directory it is loaded from."""
    doc = policy_to_dict(loaded.policy)
    if doc["model"]["path"] != "default":
        doc["model"]["path"] = str(loaded.resolve(doc["model"]["path"]))
    if doc["classifier"]["encoder"] != "default":
        doc["classifier"]["encoder"] = str(loaded.resolve(doc["classifier"]["encoder"]))
    calibration = doc["classifier"].get("calibration")  # issue 3: calibration negatives may be a file
    if calibration and calibration.get("file"):
        calibration["file"] = str(loaded.resolve(calibration["file"]))
    if doc["audit"].get("path"):
        doc["audit"]["path"] = str(loaded.resolve(doc["audit"]["path"]))
    for t in doc["targets"]:
        for key in ("forget", "retain"):
            src = t.get(key)
            if src and src.get("file"):
                src["file"] = str(loaded.resolve(src["file"]))
    return doc


def _load_runner(loaded: LoadedPolicy, progress: bool) -> TransformersRunner:
    """The policy's runner (this also proves the model loads)."""
    from .runner.transformers_runner import TransformersRunner

    m = loaded.policy.model
    return TransformersRunner.load(m.path, device=m.device, dtype=m.dtype, base_dir=loaded.base_dir, progress=progress)


def embedding_stats(runner: TransformersRunner) -> EmbeddingStats:
    """What the default strength needs from the runner's embedding table."""
    weight = runner.model.get_input_embeddings().weight
    return EmbeddingStats(std=float(weight.float().std()), dim=int(weight.shape[1]))


def _fit_corruptions(
    specs: Sequence[TargetSpec],
    forgets: Sequence[list[Example]],
    seed: int,
    runner: TransformersRunner | None,
    config: SearchConfig,
) -> list[tuple[FittedTarget, SearchResult | None]]:
    """Resolve every target's corruption: the policy's strength, or the searched one for ``auto``.

    The searches run together (:func:`search_strengths`), so targets with a few examples
    each share generate batches instead of answering two questions at a time.
    """
    stats = embedding_stats(runner) if runner is not None else None
    masks, seeds, jobs = [], [], {}
    for i, (spec, forget) in enumerate(zip(specs, forgets)):
        c = spec.corruption
        terms = tuple(c.terms)
        if c.scope == "entities" and not terms:
            terms = tuple(extract_terms([e.text for e in forget]))
        masks.append(MaskSpec(scope=c.scope, terms=terms))
        seeds.append(_target_seed(seed, spec.id))
        if c.strength == "auto" and spec.action == "corrupt" and c.method.startswith("rand_noise"):
            assert stats is not None, "fit_guard loads the runner whenever a strength is auto"
            start = default_strength(c.method, c.dims, stats)
            base = Corruption(method=c.method, dims=c.dims, strength=start, seed=seeds[i])
            jobs[i] = SearchJob(
                [e.text for e in forget], [e.answer for e in forget], base, masks[i], spec.objective.metric, spec.objective.target
            )
    searched = dict(zip(jobs, search_strengths(runner, list(jobs.values()), config=config, desc="searching strengths"))) if jobs else {}
    out = []
    for i, spec in enumerate(specs):
        c = spec.corruption
        search = searched.get(i)
        if search is not None:
            strength, source = search.strength, "optimized"
        elif c.strength == "auto":
            assert stats is not None, "fit_guard loads the runner whenever a strength is auto"
            strength, source = default_strength(c.method, c.dims, stats), "auto-default"
        else:
            strength, source = float(c.strength), "policy"
        corruption = Corruption(method=c.method, dims=c.dims, strength=strength, seed=seeds[i])
        out.append((FittedTarget(spec.id, corruption, masks[i], source), search))
    return out


def target_names(specs: Sequence[TargetSpec], forgets: Sequence[list[Example]]) -> list[list[str]]:
    """Each target's names: its ``aliases``, its corruption ``terms`` and the names its forget examples keep returning to.

    What a misspelt word in a prompt is read as (:mod:`eco_guard.canonical`), and what an
    answer may not say (:mod:`eco_guard.output`).
    """
    return [
        list(dict.fromkeys([*spec.aliases, *spec.corruption.terms, *extract_terms([e.text for e in forget])]))
        for spec, forget in zip(specs, forgets)
    ]


def retain_also_forget(data: list[TargetData]) -> list[str]:
    """One line per target whose retain examples are also forget examples (of any target).

    Such a prompt cannot both pass and be forgotten. The fit treats it as forget: the
    heads never learn it as a negative and calibration never counts it, so the guard flags
    it. That is the safe reading, but it contradicts what the user wrote, so ``fit`` says
    so rather than leaving them to find it in production.
    """
    owner: dict[str, str] = {}
    for t in data:
        for text in t.forget:
            owner.setdefault(text, t.id)
    lines = []
    for i, t in enumerate(data):
        both = list(dict.fromkeys(text for text in t.retain if text in owner))
        if both:
            whose = ", ".join(sorted({repr(owner[text]) for text in both}))
            lines.append(
                f"targets[{i}].retain ({t.id!r}): {len(both)} example(s) also a forget example of {whose}, so the "
                f"guard flags them rather than passing them: {both[0]!r}" + (f" and {len(both) - 1} more" if len(both) > 1 else "")
            )
    return lines


def fit_guard(
    policy_path: str | Path,
    out_dir: str | Path,
    *,
    seed: int = 0,
    progress: bool = True,
    search: SearchConfig = SearchConfig(),
) -> FitSummary:
    """Fit the policy at ``policy_path`` and write the guard into ``out_dir``.

    ``search`` is the budget of the ``strength: auto`` search (tests and benchmarks shrink it).
    """
    start = time.perf_counter()
    loaded = load_policy(policy_path)
    policy = loaded.policy
    out = Path(out_dir)

    def say(msg: str) -> None:
        if progress:
            print(f"eco-guard fit: {msg}", file=sys.stderr)

    say(f"reading examples for {len(policy.targets)} target(s)")
    forgets: list[list[Example]] = []
    retains: list[list[Example]] = []
    for i, t in enumerate(policy.targets):
        forgets.append(load_examples(t.forget, loaded=loaded, key=f"targets[{i}].forget", required=True))
        retains.append(
            load_examples(t.retain, loaded=loaded, key=f"targets[{i}].retain", required=False) if t.retain else []
        )
    # Fail early on a bad model reference, before spending time on the classifier.
    resolve_model(policy.model.path, loaded.base_dir, progress=progress)
    encoder = Encoder(
        resolve_encoder_path(policy.classifier.encoder, loaded.base_dir),
        precision=policy.classifier.precision,
        runtime=policy.classifier.runtime,
    )
    say(
        f"fitting the classifier ({encoder.name}, {encoder.precision} in {encoder.runtime}, "
        f"target FPR {policy.classifier.target_fpr})"
    )
    data = [
        TargetData(id=t.id, forget=[e.text for e in f], retain=[e.text for e in r])
        for t, f, r in zip(policy.targets, forgets, retains)
    ]
    for line in retain_also_forget(data):
        say(f"warning: {line}")
    # --- issue 3 (detection): optional held-out calibration negatives from the policy.
    calibration = (
        [e.text for e in load_examples(policy.classifier.calibration, loaded=loaded, key="classifier.calibration")]
        if policy.classifier.calibration
        else None
    )
    names = target_names(policy.targets, forgets)
    canonical = Canonicalizer.from_names(n for ns in names for n in ns)
    classifier, fits = Classifier.fit(
        encoder,
        data,
        target_fpr=policy.classifier.target_fpr,
        seed=seed,
        calibration=calibration,
        progress=progress,
        canonical=canonical,
    )
    # --- end issue 3
    if fits:
        say(f"classifier: {fits[0].view_note}")
    for fit in fits:
        if not fit.calibration.achievable:
            say(f"warning: target {fit.id!r}: {fit.calibration.note}")
    generic = [fit.id for fit, t in zip(fits, data) if fit.lacks_near_retain and any(s.strip() for s in t.retain)]
    if generic:
        say(
            f"warning: few retain examples of {', '.join(map(repr, generic))} (no more than half, and fewer than "
            f"{MIN_NEAR_RETAIN}) are nearer to the target's forget examples than {NEAR_QUANTILE:.0%} of everyday "
            "prompts, so they say little about where the target ends and are not counted as near negatives; retain "
            "examples of what must still pass that sits close to the target (other people, neighbouring topics) work best"
        )
    if lacks_near_negatives(sum(fit.n_near_retain for fit in fits), calibration):
        say(f"warning: {NO_NEAR_NEGATIVES}")
    swapped = ", ".join(f"{fit.id!r} ({fit.n_swapped_retain})" for fit in fits if fit.n_swapped_retain)
    if swapped:
        say(f"entity targets given copies of their forget examples naming made-up people, as retain examples: {swapped}")
    needs_runner = any(t.corruption.strength == "auto" for t in policy.targets)
    runner = _load_runner(loaded, progress) if needs_runner else None
    config = search if progress else search.quiet()
    if runner is not None:
        say("searching corruption strengths (zeroth-order, on the forget examples)")
    pairs = _fit_corruptions(policy.targets, forgets, seed, runner, config)
    fitted = [p[0] for p in pairs]
    data_record = [
        {
            "id": t.id,
            "n_forget": len(f),
            "forget_sha256": _digest(f),
            "n_retain": len(r),
            "retain_sha256": _digest(r),
        }
        for t, f, r in zip(policy.targets, forgets, retains)
    ]
    write_guard(
        out,
        loaded=loaded,
        resolved_policy=_resolved_policy(loaded),
        classifier=classifier,
        fitted=fitted,
        data=data_record,
        seed=seed,
        extra={"canonical": {"names": list(canonical.names)}},
    )
    # Scores on the fit data, for the report's histograms: in-sample, and labelled so.
    fit_scores = {fit.id: {"forget": list(fit.forget_scores), "retain": list(fit.retain_scores)} for fit in fits}
    summary_targets = [
        {
            "id": fit.id,
            "action": spec.action,
            "n_forget": fit.n_forget,
            "n_retain_train": fit.n_retain_train,
            "n_swapped_retain": fit.n_swapped_retain,
            "lacks_near_retain": fit.lacks_near_retain,
            "n_near_retain": fit.n_near_retain,
            "n_background_train": fit.n_background_train,
            "n_calibration": fit.calibration.n_calibration,
            "threshold": fit.calibration.threshold,
            "target_fpr": fit.calibration.target_fpr,
            "calibration_achievable": fit.calibration.achievable,
            "calibration_note": fit.calibration.note,
            "train_auc": fit.train_auc,
            "feature_view_note": fit.view_note,
            "corruption": ft.corruption.to_dict(),
            "scope": ft.mask.scope,
            "strength_source": ft.strength_source,
            "terms": list(ft.mask.terms),
            "search": search.to_dict() if search is not None else None,
        }
        for fit, spec, ft, (_, search) in zip(fits, policy.targets, fitted, pairs)
    ]
    answers, answers_report = fit_answers(
        [
            AnswerTarget(
                id=spec.id,
                names=[*spec.aliases, *spec.corruption.terms],
                forget_answers=[e.answer for e in f if e.answer],
                retain_answers=[e.answer for e in r if e.answer],
                extracted=extract_terms([e.text for e in f] + [e.answer for e in f if e.answer]),
                retain_questions=[e.text for e in r],
            )
            for spec, f, r in zip(policy.targets, forgets, retains)
        ],
        target_fpr=policy.classifier.target_fpr,
        seed=seed,
        canonical=canonical,
    )
    answers.save(out)
    say(f"output stage: threshold {answers_report.calibration.threshold:.4f}, held-out recall {answers_report.held_out_recall:.3f}")
    seconds = time.perf_counter() - start
    write_fit_report(out, summary_targets, fit_scores, seconds=seconds, seed=seed)
    add_output_section(out, output_section(answers, answers_report))
    say(f"wrote {out} in {seconds:.1f} s")
    return FitSummary(out, summary_targets, seconds)

