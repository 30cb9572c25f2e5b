"""eco-guard: make an LLM application behave as if its model never learned a target.

Implements Embedding-COrrupted (ECO) prompts (Liu et al., NeurIPS 2024): a fast
classifier flags prompts that touch a forget target, and flagged prompts are answered
from corrupted input embeddings, with the model weights untouched.

Exports are resolved lazily so that light uses (validating a policy, reading an audit
log) do not pay for importing torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Corruption": "corruption",
    "Decision": "decision",
    "GuardedResult": "decision",
    "EcoGuardError": "errors",
    "GuardLoadError": "errors",
    "InputError": "errors",
    "ModelLoadError": "errors",
    "PolicyError": "errors",
    "UserError": "errors",
    "Guard": "guard",
    "LoadedPolicy": "policy",
    "Policy": "policy",
    "load_policy": "policy",
    "GenerationOptions": "runner.base",
    "MaskSpec": "runner.base",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .corruption import Corruption
    from .decision import Decision, GuardedResult
    from .errors import EcoGuardError, GuardLoadError, InputError, ModelLoadError, PolicyError, UserError
    from .guard import Guard
    from .policy import LoadedPolicy, Policy, load_policy
    from .runner.base import GenerationOptions, MaskSpec


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'eco_guard' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
