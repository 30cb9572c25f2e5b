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
from .output.answers import AnswerClassifier, AnswerTarget, NothingToCheck, fit_answers
from .output.report import add_output_section, output_section
from .classifier import Classifier, Encoder, TargetData, resolve_encoder_path
from .corruption import Corruption
from .entities import extract_terms
from .examples import Example, load_examples
from .fit_cache import FitCache, model_key
from .fit_result import FitResult, TargetResult
from .fit_warnings import FitWarning, classifier_warnings, fpr_warnings
from .optimize import SearchConfig, SearchJob, SearchResult, search_strengths
from .policy import LoadedPolicy, TargetSpec, load_policy, policy_to_dict
from .report import write_fit_report
from .runner.base import MaskSpec
from .runner.store import BUNDLED, resolve_model

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
    if doc["model"]["path"] not in BUNDLED:
        doc["model"]["path"] = str(loaded.resolve(doc["model"]["path"]))
    if doc["classifier"]["encoder"] != "default":
        doc["classifier"]["encoder"] = str(loaded.resolve(doc["classifier"]["encoder"]))
    calibration = doc["classifier"].get("calibration")  # calibration negatives may be a file
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
    """What the default strength needs: the statistics of the embeddings the model
    consumes (Gemma 3 scales its table by sqrt(hidden) on lookup), not of the raw table."""
    std, dim = runner.embedding_stats()
    return EmbeddingStats(std=std, dim=dim)


def _fit_corruptions(
    specs: Sequence[TargetSpec],
    forgets: Sequence[list[Example]],
    seed: int,
    runner: TransformersRunner | None,
    config: SearchConfig,
    cache: FitCache | None,
) -> list[tuple[FittedTarget, SearchResult | None, bool]]:
    """Resolve every target's corruption: the policy's strength, or the searched one for ``auto``.

    A target whose search inputs are unchanged since an earlier fit (same model, questions,
    answers, corruption, objective and budget) takes its result from ``cache``; the rest
    search together (:func:`search_strengths`), sharing generate and scoring batches.
    Each tuple's bool says whether the search result was reused.
    """
    stats = embedding_stats(runner) if runner is not None else None
    masks, seeds, jobs = [], [], {}
    searched: dict[int, SearchResult] = {}
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
            job = SearchJob(
                [e.text for e in forget], [e.answer for e in forget], base, masks[i], spec.objective.metric, spec.objective.target, spec.id
            )
            hit = cache.get("search", job.key(config)) if cache is not None else None
            if hit is not None:
                searched[i] = SearchResult.from_dict(hit)
            else:
                jobs[i] = job
    reused = set(searched)
    if jobs:
        assert runner is not None
        found = search_strengths(runner, list(jobs.values()), config=config, desc="searching strengths", cache=cache)
        for (i, job), result in zip(jobs.items(), found):
            searched[i] = result
            if cache is not None:
                cache.put("search", job.key(config), result.to_dict())
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
        out.append((FittedTarget(spec.id, corruption, masks[i], source), search, i in reused))
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


def _fit_cache(loaded: LoadedPolicy, runner: TransformersRunner, progress: bool) -> FitCache:
    """The fit cache of the policy's model as loaded (files, device and dtype)."""
    directory = resolve_model(loaded.policy.model.path, loaded.base_dir, progress=progress).directory
    return FitCache(model_key(directory, str(runner.device), str(runner.model.dtype)), source=directory)


def _reuse_line(cache: FitCache | None) -> str | None:
    """What this fit took from earlier fits, in words; None when nothing was looked up."""
    if cache is None:
        return None
    parts = []
    for kind, what in (("search", "target searches"), ("clean_answers", "clean answers")):
        found, asked = cache.reused(kind)
        if asked:
            parts.append(f"{found} of {asked} {what}")
    return ("reused from earlier fits: " + ", ".join(parts)) if parts else None


def fit_guard(
    policy: str | Path | LoadedPolicy,
    out_dir: str | Path,
    *,
    seed: int = 0,
    progress: bool = True,
    search: SearchConfig = SearchConfig(),
    use_cache: bool = True,
) -> FitResult:
    """Fit ``policy`` (a path, or a policy already loaded) and write the guard into ``out_dir``.

    ``search`` is the budget of the ``strength: auto`` search (tests and benchmarks shrink it);
    ``use_cache=False`` recomputes clean answers and searches instead of reusing earlier fits'.
    Every warning is printed on stderr (when ``progress``) and returned.
    """
    start = time.perf_counter()
    loaded = policy if isinstance(policy, LoadedPolicy) else load_policy(policy)
    spec = loaded.policy
    out = Path(out_dir)

    def say(msg: str) -> None:
        if progress:
            print(f"eco-guard fit: {msg}", file=sys.stderr)

    say(f"reading examples for {len(spec.targets)} target(s)")
    forgets: list[list[Example]] = []
    retains: list[list[Example]] = []
    for i, t in enumerate(spec.targets):
        forgets.append(load_examples(t.forget, loaded=loaded, key=f"targets[{i}].forget", required=True))
        retains.append(
            load_examples(t.retain, loaded=loaded, key=f"targets[{i}].retain", required=False) if t.retain else []
        )
    # Fail early on a bad model reference, before spending time on the classifier.
    resolve_model(spec.model.path, loaded.base_dir, progress=progress)
    encoder = Encoder(
        resolve_encoder_path(spec.classifier.encoder, loaded.base_dir),
        precision=spec.classifier.precision,
        runtime=spec.classifier.runtime,
    )
    say(
        f"fitting the classifier ({encoder.name}, {encoder.precision} in {encoder.runtime}, "
        f"target FPR {spec.classifier.target_fpr})"
    )
    data = [
        TargetData(id=t.id, forget=[e.text for e in f], retain=[e.text for e in r], retain_groups=tuple(e.group for e in r))
        for t, f, r in zip(spec.targets, forgets, retains)
    ]
    # optional held-out calibration negatives from the policy
    calibration = (
        [e.text for e in load_examples(spec.classifier.calibration, loaded=loaded, key="classifier.calibration")]
        if spec.classifier.calibration
        else None
    )
    names = target_names(spec.targets, forgets)
    canonical = Canonicalizer.for_policy((n for ns in names for n in ns), (e.text for f in forgets for e in f))
    classifier, fits = Classifier.fit(
        encoder,
        data,
        target_fpr=spec.classifier.target_fpr,
        seed=seed,
        calibration_set=calibration,
        progress=progress,
        canonical=canonical,
    )
    if fits:
        say(f"classifier: {fits[0].view_note}")
    warnings = [FitWarning("retain_also_forget", line) for line in retain_also_forget(data)]
    warnings += classifier_warnings(fits, data, calibration)
    swapped = ", ".join(f"{fit.id!r} ({fit.n_swapped_retain})" for fit in fits if fit.n_swapped_retain)
    if swapped:
        say(f"entity targets given copies of their forget examples naming made-up people, as retain examples: {swapped}")
    needs_runner = any(t.corruption.strength == "auto" for t in spec.targets)
    runner = _load_runner(loaded, progress) if needs_runner else None
    cache = _fit_cache(loaded, runner, progress) if runner is not None and use_cache else None
    config = search if progress else search.quiet()
    if runner is not None:
        say("searching corruption strengths (teacher-forced scores on a grid, generation to confirm)")
    triples = _fit_corruptions(spec.targets, forgets, seed, runner, config, cache)
    reuse = _reuse_line(cache)
    if reuse:
        say(reuse)
    results = [
        TargetResult(t, fit, ft, result, reused) for t, fit, (ft, result, reused) in zip(spec.targets, fits, triples)
    ]
    for r in results:
        if r.search is not None:
            warnings += r.search.warnings
    warnings += fpr_warnings([r.classifier for r in results])
    for w in warnings:
        say(f"warning: {w.line()}")
    data_record = [
        {
            "id": t.id,
            "n_forget": len(f),
            "forget_sha256": _digest(f),
            "n_retain": len(r),
            "retain_sha256": _digest(r),
        }
        for t, f, r in zip(spec.targets, forgets, retains)
    ]
    write_guard(
        out,
        loaded=loaded,
        resolved_policy=_resolved_policy(loaded),
        classifier=classifier,
        fitted=[r.fitted for r in results],
        data=data_record,
        seed=seed,
        extra={"canonical": {"names": list(canonical.names), "words": list(canonical.words)}},
    )
    # Scores on the fit data, for the report's histograms: in-sample, and labelled so.
    fit_scores = {fit.id: {"forget": list(fit.forget_scores), "retain": list(fit.retain_scores)} for fit in fits}
    answer_targets = [
        AnswerTarget(
            id=t.id,
            names=[*t.aliases, *t.corruption.terms],
            forget_answers=[e.answer for e in f if e.answer],
            retain_answers=[e.answer for e in r if e.answer],
            extracted=extract_terms([e.text for e in f] + [e.answer for e in f if e.answer]),
            retain_questions=[e.text for e in r],
            forget_examples=[f"{e.text} {e.answer or ''}".strip() for e in f],
        )
        for t, f, r in zip(spec.targets, forgets, retains)
    ]
    try:
        output = fit_answers(answer_targets, target_fpr=spec.classifier.target_fpr, seed=seed, canonical=canonical)
    except NothingToCheck:
        output = None
    answers = output[0] if output is not None else None
    for i, t in enumerate(answer_targets):  # a target the output stage cannot recognise is guarded on its prompts only
        if not t.forget_answers and (answers is None or not (answers.names[i] or answers.context[i])):
            w = FitWarning(
                "no_output_check",
                "answers are not checked for this target: it has no forget answers, and no name that only its examples use",
                "give its forget answers (answer_field) or the names it goes by (aliases)",
                t.id,
            )
            warnings.append(w)
            say(f"warning: {w.line()}")
    if output is not None:
        stage, stage_report = output
        stage.save(out)
        say(f"output stage: threshold {stage_report.calibration.threshold:.4f}, held-out recall {stage_report.held_out_recall:.3f}")
    else:
        AnswerClassifier.discard(out)
    reused = {k: cache.reused(k) for k in ("search", "clean_answers")} if cache is not None else {}
    result = FitResult(out, results, warnings, time.perf_counter() - start, reused)
    write_fit_report(out, result, fit_scores, seed=seed)
    if output is not None:
        add_output_section(out, output_section(*output))
    say(result.summary_line())
    return result
