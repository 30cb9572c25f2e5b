"""The YAML policy: the user's contract with eco-guard (DESIGN.md section 4).

The policy is written by compliance authors, not Python programmers, so validation is
strict (an unknown key is an error, never silently ignored: a typo such as ``stength``
would otherwise quietly fall back to a default) and every error is rewritten from
pydantic's vocabulary into "FILE, key targets[0].forget.file: what was expected".
"""

from __future__ import annotations

import difflib
import math
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from .errors import PolicyError, UserError

__all__ = [
    "CORRUPTION_METHOD",
    "AuditSpec",
    "ClassifierSpec",
    "CorruptionSpec",
    "ExampleSource",
    "LoadedPolicy",
    "ModelSpec",
    "ObjectiveSpec",
    "Policy",
    "StrictModel",
    "TargetSpec",
    "load_policy",
    "parse_policy",
    "policy_to_dict",
]


class StrictModel(BaseModel):
    """Base of every policy section: unknown keys are errors and parsed values are immutable.

    Frozen because a loaded policy is shared by the guard, the fitter and the server; a
    mutation in one place must not silently change the behaviour of another.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


class ExampleSource(StrictModel):
    """Where a set of example prompts comes from: a file next to the policy, or inline.

    Inline ``examples`` keep tiny policies self-contained; files scale to real data sets.
    """

    file: str | None = None
    examples: list[str] | None = None
    field: str = Field("text", min_length=1)
    answer_field: str | None = Field(None, min_length=1)
    group_field: str | None = Field(None, min_length=1)
    """The field naming each row's group (retain examples only): the neighbourhoods calibration holds
    ``target_fpr`` in, one per neighbouring subject say (docs/topic-policies.md)."""

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ExampleSource:
        """Reject ambiguous sources: with both given, which one wins would be a guess."""
        if (self.file is None) == (self.examples is None):
            raise ValueError("give exactly one of 'file' (a path relative to the policy) or 'examples' (a list)")
        if self.file is not None and not self.file.strip():
            raise ValueError("'file' is empty; expected a path relative to the policy file")
        if self.examples is not None and self.answer_field is not None:
            raise ValueError("'answer_field' needs a 'file'; inline 'examples' carry no answers")
        if self.examples is not None and self.group_field is not None:
            raise ValueError("'group_field' needs a 'file'; inline 'examples' carry no groups")
        return self


def _no_groups(source: ExampleSource | None, what: str) -> ExampleSource | None:
    """Groups are read from retain examples only; elsewhere a ``group_field`` would be silently ignored."""
    if source is not None and source.group_field is not None:
        raise ValueError(f"'group_field' is read only on a target's retain examples, not on {what}; remove it here")
    return source


CORRUPTION_METHOD = Literal[
    "rand_noise_first_n",
    "rand_noise_rand_n",
    "rand_noise_top_k",
    "zero_out_first_n",
    "zero_out_top_k",
    "flip_sign_first_n",
    "flip_sign_top_k",
]


class CorruptionSpec(StrictModel):
    """How flagged prompts' embeddings are corrupted (the ECO method) and where."""

    method: CORRUPTION_METHOD = "rand_noise_first_n"
    dims: int = Field(1, ge=1, strict=True)
    strength: float | Literal["auto"] = "auto"
    scope: Literal["prompt", "entities", "all"] = "prompt"
    terms: list[str] = []

    @field_validator("strength", mode="before")
    @classmethod
    def _finite_strength(cls, value: object) -> object:
        """One clear message instead of pydantic's two (one per union branch).

        Numeric strings are accepted because YAML 1.1 reads ``1e3`` (no dot) as a string.
        """
        if value == "auto":
            return value
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        if number is None or not math.isfinite(number) or number < 0:
            raise ValueError(f"expected 'auto' or a finite number >= 0; got {_show(value)}")
        return number


class ObjectiveSpec(StrictModel):
    """What ``fit`` tunes the corruption strength toward on the forget set."""

    metric: Literal["answer_recall", "mc_accuracy"] = "answer_recall"
    target: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False)


_DUPLICATE_ID = "duplicate_target_id"  # error type of Policy._unique_ids, widened to targets[i].id

TARGET_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class TargetSpec(StrictModel):
    """One thing to forget: its examples, what to do when a prompt matches, and how."""

    id: str = Field(pattern=TARGET_ID_PATTERN)
    description: str = ""
    forget: ExampleSource
    retain: ExampleSource | None = None
    action: Literal["corrupt", "refuse", "flag"] = "corrupt"
    corruption: CorruptionSpec = CorruptionSpec()
    objective: ObjectiveSpec = ObjectiveSpec()
    refusal: str = "I'm sorry, but I can't help with that."
    aliases: list[str] = []
    """Other names of the target (nicknames, spellings, former names): read in disguised
    prompts (:mod:`eco_guard.canonical`) and looked for in answers (:mod:`eco_guard.output`)."""

    @field_validator("forget")
    @classmethod
    def _forget_ungrouped(cls, source: ExampleSource) -> ExampleSource:
        _no_groups(source, "forget examples")
        return source


DEVICE_PATTERN = r"^(auto|cpu|cuda|cuda:\d+)$"


class ModelSpec(StrictModel):
    """The local model that answers flagged prompts.

    ``path`` is a bundled model's short name (``default`` = ``smollm2-135m``, the
    SmolLM2-135M-Instruct; ``gemma3-270m``, Gemma 3 270M, a base model answered in a
    plain question/answer format; see docs/models.md), a ``.gguf`` file, or a Hugging
    Face model directory. Relative paths are taken from the policy file's directory.
    """

    path: str = Field("default", min_length=1)
    device: str = Field("auto", pattern=DEVICE_PATTERN)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class ClassifierSpec(StrictModel):
    """The prompt classifier; ``target_fpr`` sets its threshold on held-out negatives.

    ``calibration`` names negatives that look like the traffic the guard will see and
    that no head trains on; the shared threshold is calibrated on them (and on held-out
    background prompts). Without it, ``fit`` calibrates on the retain examples instead,
    each half of a target's list scored by a head re-fitted without it (cross-fitting),
    which with few retain examples cannot certify a small ``target_fpr`` on its own;
    split conformal needs about 1/target_fpr held-out negatives.

    ``precision`` is the encoder's compute precision, for fitting and serving alike (the
    fitted guard records it). ``bfloat16`` scores about 3x more prompts per second on
    CPUs with native bfloat16 units but costs some accuracy (D1 recall at 1% FPR: 0.955
    against 0.985), so ``float32`` is the default.

    ``runtime`` is what runs the encoder forward. ``auto`` uses ONNX Runtime for CPU
    float32 encoders (2-3x PyTorch's speed, features within 1e-6 of it; exported once and
    cached) and PyTorch elsewhere; ``torch`` or ``onnx`` force one.
    """

    encoder: str = Field("default", min_length=1)
    target_fpr: float = Field(0.01, gt=0.0, lt=0.5, allow_inf_nan=False)
    calibration: ExampleSource | None = None
    precision: Literal["float32", "bfloat16"] = "float32"
    runtime: Literal["auto", "torch", "onnx"] = "auto"

    @field_validator("calibration")
    @classmethod
    def _calibration_ungrouped(cls, source: ExampleSource | None) -> ExampleSource | None:
        return _no_groups(source, "the calibration set (fit finds its groups itself)")


class LanguageSpec(StrictModel):
    """The languages the guard is calibrated for, and what happens to prompts in others.

    ``calibrated`` are ISO 639-1 codes (the bundled encoder: English). ``other`` applies
    to prompts confidently detected (``min_confidence``) in any other language: ``refuse``
    (default: the guard cannot vouch for them, so nothing it cannot judge reaches the
    model), ``corrupt`` (answered through the top-scoring target's corruption), ``flag``
    (answered, recorded) or ``pass``. See :mod:`eco_guard.language`.
    """

    calibrated: list[str] = Field(default_factory=lambda: ["en"], min_length=1)
    other: Literal["refuse", "corrupt", "flag", "pass"] = "refuse"
    min_confidence: float = Field(0.8, ge=0.0, le=1.0, allow_inf_nan=False)


class AuditSpec(StrictModel):
    """The audit log; prompts are hashed by default so the log is not itself a leak."""

    path: str | None = Field(None, min_length=1)
    prompts: Literal["none", "hash", "full"] = "hash"


class Policy(StrictModel):
    """The whole policy file."""

    version: Literal[1]
    model: ModelSpec = ModelSpec()
    classifier: ClassifierSpec = ClassifierSpec()
    on_error: Literal["fail_closed", "fail_open"] = "fail_closed"
    audit: AuditSpec = AuditSpec()
    languages: LanguageSpec = LanguageSpec()
    targets: list[TargetSpec] = Field(min_length=1)

    @field_validator("targets")
    @classmethod
    def _unique_ids(cls, targets: list[TargetSpec]) -> list[TargetSpec]:
        """Ids name targets in decisions and audit logs, so two targets may not share one.

        The error carries the offending index so the message can point at ``targets[i].id``.
        """
        first_index: dict[str, int] = {}
        for index, target in enumerate(targets):
            if target.id in first_index:
                raise PydanticCustomError(
                    _DUPLICATE_ID,
                    "duplicate target id '{id}' (already used by targets[{first}].id)",
                    {"id": target.id, "first": first_index[target.id], "index": index},
                )
            first_index[target.id] = index
        return targets

    def target(self, target_id: str) -> TargetSpec:
        """The target called ``target_id``; an unknown id is the caller's mistake (UserError)."""
        for target in self.targets:
            if target.id == target_id:
                return target
        known = ", ".join(t.id for t in self.targets)
        raise UserError(f"unknown target {target_id!r} (known targets: {known})")


@dataclass(frozen=True)
class LoadedPolicy:
    """A validated policy plus where it came from, so relative paths can be resolved.

    ``root`` overrides the directory relative paths resolve against; it is set when the
    policy text was parsed from somewhere other than a file in that directory (e.g. a
    fitted ``guard.yaml`` whose paths still refer to the original policy's directory).
    """

    policy: Policy
    path: Path
    root: Path | None = None

    @property
    def base_dir(self) -> Path:
        """The directory that relative paths written in the policy are relative to."""
        return self.root if self.root is not None else self.path.parent

    def resolve(self, relative: str) -> Path:
        """The absolute path for a path as written in the policy (``~`` is expanded)."""
        path = Path(relative).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()


class _StrictLoader(yaml.SafeLoader):
    """A safe YAML loader that rejects duplicate keys.

    PyYAML keeps the last of two equal keys; in a policy that silently drops a setting
    (e.g. a second ``targets:`` block replacing the first), so it is an error here. Keys
    merged in with ``<<`` are not duplicates: overriding them is what merging is for.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden, by design
                continue
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            try:
                duplicate = key in seen
            except TypeError:  # unhashable key: the base class reports it properly
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_policy(path: str | os.PathLike[str]) -> LoadedPolicy:
    """Read, parse and validate a policy file; every failure is a PolicyError naming the file."""
    shown = os.fspath(path)
    resolved = Path(path).expanduser().resolve()
    try:
        raw = resolved.read_bytes()
    except FileNotFoundError:
        raise PolicyError(f"policy file not found: {resolved} does not exist", file=shown) from None
    except IsADirectoryError:
        message = f"policy file not found: {resolved} is a directory, expected a YAML file"
        raise PolicyError(message, file=shown) from None
    except OSError as exc:
        raise PolicyError(f"policy file not found or not readable: {resolved} ({exc.strerror})", file=shown) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PolicyError(
            f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at byte offset {exc.start} (line {line}); "
            "save the file as UTF-8",
            file=shown,
        ) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        raise PolicyError(_describe_yaml_error(exc), file=shown) from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"malformed YAML: {exc}", file=shown) from None
    return LoadedPolicy(policy=_validate(data, source=shown), path=resolved)


def parse_policy(data: object, *, source: str = "<policy>", base_dir: Path | None = None) -> LoadedPolicy:
    """Validate an already-parsed policy mapping.

    ``source`` names the policy in errors and, taken as a path from the working
    directory, becomes ``LoadedPolicy.path``; ``base_dir`` (default: the working
    directory) is what relative paths in the policy resolve against.
    """
    base = (base_dir if base_dir is not None else Path.cwd()).expanduser().resolve()
    return LoadedPolicy(policy=_validate(data, source=source), path=Path(source).expanduser().resolve(), root=base)


def _validate(data: object, *, source: str) -> Policy:
    """The Policy in ``data``, or a PolicyError listing every problem with its key path."""
    if data is None:
        raise PolicyError(
            "the policy is empty; expected a mapping with at least 'version: 1' and 'targets'", file=source
        )
    if not isinstance(data, dict):
        raise PolicyError(
            f"expected a mapping at the top level (keys such as version, targets); got {_show(data)}", file=source
        )
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        # The first error goes into the exception's own "FILE, key KEY:" prefix; later ones
        # repeat the prefix on their own line so each line can be read (or grepped) alone.
        (first_key, first), *rest = [_describe_pydantic_error(error) for error in exc.errors()]
        lines = [first, *(f"{source}, key {key}: {text}" if key else f"{source}: {text}" for key, text in rest)]
        raise PolicyError("\n".join(lines), file=source, key=first_key or None) from None


def policy_to_dict(policy: Policy) -> dict[str, Any]:
    """A JSON/YAML-safe dict of the policy with every default spelled out (for guard.yaml).

    Defaults are written explicitly so a fitted guard does not change meaning if a later
    version changes a default.
    """
    return policy.model_dump(mode="json", exclude_none=False)


def _describe_yaml_error(exc: yaml.MarkedYAMLError) -> str:
    """'malformed YAML at line L, column C: problem' with 1-based positions as editors show them."""
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    details = [str(exc.problem)] if exc.problem else []
    if exc.context:
        # The context names the construct left open, which is often the real mistake.
        context_mark = exc.context_mark
        started = f" started at line {context_mark.line + 1}" if context_mark and context_mark is not mark else ""
        details.append(f"{exc.context}{started}")
    return f"malformed YAML{where}: {'; '.join(details) or exc}"


def _describe_pydantic_error(error: ErrorDetails) -> tuple[str, str]:
    """One pydantic error as (key path, readable message for a YAML author)."""
    loc = tuple(error["loc"])
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == _DUPLICATE_ID:
        loc = (*loc, ctx["index"], "id")
    if kind == "invalid_key":  # the location's last item is the bad key itself, not a key path
        key = _format_key(_real_key_parts(loc[:-1], unknown_last=False)[0])
        return key, f"keys must be strings; got {_show(error['input'])}"
    parts, model = _real_key_parts(loc, unknown_last=kind == "extra_forbidden")
    key = _format_key(parts)
    value = error["input"]
    if kind == "extra_forbidden":
        names = list(model.model_fields) if model is not None else []
        guess = difflib.get_close_matches(str(parts[-1]), names, n=1)
        hint = f"did you mean {guess[0]!r}? " if guess else ""
        return key, f"unknown key {str(parts[-1])!r} ({hint}allowed: {', '.join(names)})"
    if kind == "missing":
        return key, f"required key {str(parts[-1])!r} is missing"
    if kind == "literal_error":
        message = f"expected one of {ctx['expected']}; got {_show(value)}"
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        message = f"expected a mapping of keys; got {_show(value)}"
    elif kind == "list_type":
        message = f"expected a list; got {_show(value)}"
    elif kind == "string_type":
        message = f"expected a string (quote it in YAML); got {_show(value)}"
    elif kind == "string_pattern_mismatch":
        message = f"expected a value matching {ctx['pattern']}; got {_show(value)}"
    elif kind == "too_short" and parts == ["targets"]:
        message = "expected at least one target"
    elif kind in ("value_error", "assertion_error"):
        message = str(ctx.get("error", error["msg"]))
    elif kind == _DUPLICATE_ID:
        message = error["msg"]
    else:
        message = f"{_lower_first(error['msg'])}; got {_show(value)}"
    return key, message


def _real_key_parts(
    loc: tuple[int | str, ...], *, unknown_last: bool
) -> tuple[list[int | str], type[BaseModel] | None]:
    """Drop pydantic's internal tags (union branches, validator names) from a location.

    The location is walked against the schema: a string is kept only when it is a field
    of the model reached so far (or the unknown key itself, for extra_forbidden), so a
    tag such as ``function-after[...]`` or ``literal['auto']`` can never look like a key.
    Returns the kept parts and the model that owns the last kept key.
    """
    parts: list[int | str] = []
    model: type[BaseModel] | None = Policy
    owner: type[BaseModel] | None = Policy
    for index, item in enumerate(loc):
        if isinstance(item, int):
            parts.append(item)
        elif model is not None and item in model.model_fields:
            parts.append(item)
            owner = model
            model = _model_in(model.model_fields[item].annotation)
        elif unknown_last and index == len(loc) - 1:
            parts.append(item)
            owner = model
    return parts, owner


def _model_in(annotation: object) -> type[BaseModel] | None:
    """The policy model nested in a field annotation (``list[TargetSpec]``, ``X | None``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _format_key(parts: list[int | str]) -> str:
    """``['targets', 0, 'forget', 'file']`` -> ``targets[0].forget.file``."""
    key = ""
    for part in parts:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def _lower_first(text: str) -> str:
    """Pydantic messages start capitalised; ours continue after 'key: '."""
    return text[:1].lower() + text[1:]


def _show(value: object) -> str:
    """A value as a YAML author would recognise it (``null``, ``true``, ``'text'``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
