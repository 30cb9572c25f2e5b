"""Embedding corruptions: the "CO" in ECO (Liu et al., NeurIPS 2024, arXiv 2406.07933).

When the guard decides a prompt touches forgotten knowledge, the runner corrupts
the input embeddings of the flagged tokens before the model sees them. This module
holds the paper's full set of corruption functions and :class:`Corruption`, the
small frozen record that a ``Decision`` stores so that any corrupted generation can
be replayed exactly.

Every corruption is built from two independent choices:

* *which* embedding dims of a token are touched: the first ``n`` dims, ``n``
  random dims, or the ``k`` dims with the largest magnitude;
* *what* happens to them: add Gaussian noise, set to zero, or flip the sign.

Guarantees every registered function keeps, because audit replay and batching
depend on them:

* **Pure**: the input tensor is never modified; a new tensor is returned.
* **Seeded**: randomness comes only from the ``torch.Generator`` passed in, which is
  a CPU generator and draws float32, so a seed gives bit-identical corruption on
  any device the embeddings live on.
* **Local**: positions outside the mask, and dims that were not selected, are
  bit-identical to the input.
* **Mask-independent randomness**: the number of values drawn depends only on the
  tensor's shape and the params, never on the mask. The corruption of one token
  therefore does not change when a different token is (or is not) masked, which
  keeps a request's output stable when it is batched with others.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from eco_guard.errors import UserError

__all__ = [
    "CORRUPTION_METHODS",
    "Corruption",
    "CorruptionFn",
    "CorruptionParams",
    "get_method",
    "register",
]


def _is_int(value: object) -> bool:
    """True for real ints; ``bool`` is excluded because ``dims=True`` is a config typo, not 1."""
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class CorruptionParams:
    """The knobs a corruption function needs, validated once so functions can trust them.

    ``dims`` is ``n`` for the ``*_first_n`` / ``*_rand_n`` methods and ``k`` for the
    ``*_top_k`` methods; values above the embedding width are clamped to it, so one
    setting can be shared across models of different widths. ``strength`` is the
    noise standard deviation for the ``rand_noise_*`` methods; the others ignore it,
    but it is still validated so that a bad config never sits unnoticed in a record.
    """

    dims: int
    strength: float

    def __post_init__(self) -> None:
        if not _is_int(self.dims) or self.dims < 1:
            raise UserError(f"corruption dims must be an integer >= 1, got {self.dims!r}")
        if (
            isinstance(self.strength, bool)
            or not isinstance(self.strength, (int, float))
            or not math.isfinite(self.strength)
            or self.strength < 0
        ):
            raise UserError(
                f"corruption strength must be a finite number >= 0, got {self.strength!r}"
            )


CorruptionFn = Callable[
    [torch.Tensor, torch.Tensor, CorruptionParams, torch.Generator], torch.Tensor
]
"""``fn(embeds (B,T,D) float, mask (B,T) bool, params, cpu_generator) -> new (B,T,D) tensor``."""

_REGISTRY: dict[str, CorruptionFn] = {}

CORRUPTION_METHODS: tuple[str, ...] = ()
"""Names of all registered methods in registration order; :func:`register` keeps it current."""


def register(name: str) -> Callable[[CorruptionFn], CorruptionFn]:
    """Decorator adding a corruption function under ``name``.

    Duplicates raise ``ValueError`` rather than silently replacing a method, because
    a replaced method would make previously recorded ``Corruption`` s replay
    differently.
    """

    def decorator(fn: CorruptionFn) -> CorruptionFn:
        global CORRUPTION_METHODS
        if name in _REGISTRY:
            raise ValueError(f"corruption method {name!r} is already registered")
        _REGISTRY[name] = fn
        CORRUPTION_METHODS = tuple(_REGISTRY)
        return fn

    return decorator


def get_method(name: str) -> CorruptionFn:
    """Look up a corruption function; unknown names are a user (config) error."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):  # TypeError: an unhashable name from a parsed config
        valid = ", ".join(_REGISTRY)
        raise UserError(f"unknown corruption method {name!r}; valid methods: {valid}") from None


def _check_inputs(embeds: torch.Tensor, mask: torch.Tensor) -> None:
    """Reject malformed tensors loudly: they come from our own code, so it is a bug."""
    if embeds.dim() != 3 or not embeds.is_floating_point():
        raise ValueError(
            f"embeds must be a floating-point (B, T, D) tensor, got dtype {embeds.dtype} "
            f"with shape {tuple(embeds.shape)}"
        )
    if mask.dtype != torch.bool or mask.shape != embeds.shape[:2]:
        raise ValueError(
            f"mask must be a bool tensor of shape {tuple(embeds.shape[:2])} (B, T) matching "
            f"embeds, got dtype {mask.dtype} with shape {tuple(mask.shape)}"
        )


# --- which dims: each selector returns a (B, T, k) int64 index tensor on embeds' device ---

_Selector = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]


def _select_first_n(embeds: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Dims ``[0, k)`` of every token; draws nothing from the generator."""
    batch, tokens, _ = embeds.shape
    return torch.arange(k, device=embeds.device).expand(batch, tokens, k)


def _select_top_k(embeds: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """The ``k`` dims of largest magnitude per token, largest first; draws nothing.

    Among exactly tied magnitudes the pick is up to ``torch.topk``, so only there
    may the result differ between devices.
    """
    return embeds.abs().topk(k, dim=-1).indices


def _select_rand_n(embeds: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` distinct uniformly random dims per token, by Floyd's sampling algorithm.

    Floyd's algorithm needs only ``k`` draws per token (ranking ``D`` random keys
    per token would need ``D``, the dominant cost for the usual small ``k``) and
    loops over ``k``, never over tokens. It runs on the CPU, where the generator
    lives, and only the small ``(B, T, k)`` result is moved to the embeddings'
    device. Every token gets its draws whether masked or not, so the stream ignores
    the mask.
    """
    batch, tokens, width = embeds.shape
    taken = torch.zeros((batch, tokens, width), dtype=torch.bool, device="cpu")
    index = torch.empty((batch, tokens, k), dtype=torch.int64, device="cpu")
    for slot, top in enumerate(range(width - k, width)):
        candidate = torch.randint(
            0, top + 1, (batch, tokens, 1), generator=generator, device="cpu"
        )
        pick = torch.where(taken.gather(-1, candidate), top, candidate)
        taken.scatter_(-1, pick, True)
        index[..., slot : slot + 1] = pick
    return index.to(embeds.device)


# --- what happens: each op maps the selected (B, T, k) values to new values, same dtype ---

_Op = Callable[[torch.Tensor, CorruptionParams, torch.Generator], torch.Tensor]


def _op_rand_noise(
    values: torch.Tensor, params: CorruptionParams, generator: torch.Generator
) -> torch.Tensor:
    """Add N(0, strength^2) noise.

    Noise is drawn as float32 on the CPU generator (device-independent), and the sum
    is formed in at least float32 and rounded once, so half-precision embeddings
    lose no more precision than the final cast.
    """
    noise = torch.randn(values.shape, generator=generator, dtype=torch.float32, device="cpu")
    noise = noise * params.strength
    compute = torch.promote_types(values.dtype, torch.float32)
    return (values.to(compute) + noise.to(device=values.device, dtype=compute)).to(values.dtype)


def _op_zero_out(
    values: torch.Tensor, params: CorruptionParams, generator: torch.Generator
) -> torch.Tensor:
    """Set to zero; deterministic, so the seed plays no part."""
    return torch.zeros_like(values)


def _op_flip_sign(
    values: torch.Tensor, params: CorruptionParams, generator: torch.Generator
) -> torch.Tensor:
    """Negate; deterministic, so the seed plays no part."""
    return values.neg()


def _corrupt(
    embeds: torch.Tensor,
    mask: torch.Tensor,
    params: CorruptionParams,
    generator: torch.Generator,
    select: _Selector,
    op: _Op,
) -> torch.Tensor:
    """Apply ``op`` to the ``select`` -ed dims of the masked tokens, out of place.

    Works on the gathered ``(B, T, k)`` slice rather than the full tensor so the
    cost of the op and of any noise scales with ``k``, not with the embedding width.
    Unmasked tokens get their own values scattered back, which keeps them bit-identical.
    """
    _check_inputs(embeds, mask)
    mask = mask.to(embeds.device)  # tolerate a CPU-built mask; a no-op when devices match
    k = min(params.dims, embeds.shape[-1])
    index = select(embeds, k, generator)
    values = embeds.gather(-1, index)
    new_values = torch.where(mask.unsqueeze(-1), op(values, params, generator), values)
    return embeds.scatter(-1, index, new_values)


@register("rand_noise_first_n")
def rand_noise_first_n(
    embeds: torch.Tensor, mask: torch.Tensor, params: CorruptionParams, generator: torch.Generator
) -> torch.Tensor:
    """Add N(0, strength^2) noise to dims ``[0, dims)`` of each masked token."""
    return _corrupt(embeds, mask, params, generator, _select_first_n, _op_rand_noise)


@register("rand_noise_rand_n")
def rand_noise_rand_n(
    embeds: torch.Tensor, mask: torch.Tensor, params: CorruptionParams, generator: torch.Generator
) -> torch.Tensor:
    """Add N(0, strength^2) noise to ``dims`` random distinct dims of each masked token."""
    return _corrupt(embeds, mask, params, generator, _select_rand_n, _op_rand_noise)


@register("rand_noise_top_k")
def rand_noise_top_k(
    embeds: torch.Tensor, mask: torch.Tensor, params: CorruptionParams, generator: torch.Generator
) -> torch.Tensor:
    """Add N(0, strength^2) noise to the ``dims`` largest-magnitude dims of each masked token."""
    return _corrupt(embeds, mask, params, generator, _select_top_k, _op_rand_noise)


@register("zero_out_first_n")
def zero_out_first_n(
    embeds: torch.Tensor, mask: torch.Tensor, params: CorruptionParams, generator: torch.Generator
) -> torch.Tensor:
    """Set dims ``[0, dims)`` of each masked token to zero."""
    return _corrupt(embeds, mask, params, generator, _select_first_n, _op_zero_out)


@register("zero_out_top_k")
def zero_out_top_k(
    embeds: torch.Tensor, mask: torch.Tensor, params: CorruptionParams, generator: torch.Generator
) -> torch.Tensor:
    """Set the ``dims`` largest-magnitude dims of each masked token to zero."""
    return _corrupt(embeds, mask, params, generator, _select_top_k, _op_zero_out)


@register("flip_sign_first_n")
def flip_sign_first_n(
    embeds: torch.Tensor, mask: torch.Tensor, params: CorruptionParams, generator: torch.Generator
) -> torch.Tensor:
    """Negate dims ``[0, dims)`` of each masked token."""
    return _corrupt(embeds, mask, params, generator, _select_first_n, _op_flip_sign)


@register("flip_sign_top_k")
def flip_sign_top_k(
    embeds: torch.Tensor, mask: torch.Tensor, params: CorruptionParams, generator: torch.Generator
) -> torch.Tensor:
    """Negate the ``dims`` largest-magnitude dims of each masked token."""
    return _corrupt(embeds, mask, params, generator, _select_top_k, _op_flip_sign)


_SEED_LIMIT = 2**64  # torch.Generator.manual_seed accepts seeds in [0, 2**64)


@dataclass(frozen=True)
class Corruption:
    """A fully specified, reproducible corruption: what the Decision records.

    Validated on construction so that a bad config fails when the policy is loaded,
    not in the middle of serving a request; ``strength`` is normalised to ``float``
    so equal records compare, hash and serialise identically.
    """

    method: str
    dims: int = 1
    strength: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        get_method(self.method)
        CorruptionParams(self.dims, self.strength)  # raises UserError on bad dims/strength
        if not _is_int(self.seed) or not 0 <= self.seed < _SEED_LIMIT:
            raise UserError(
                f"corruption seed must be an integer in [0, 2**64), got {self.seed!r}"
            )
        object.__setattr__(self, "strength", float(self.strength))

    @property
    def params(self) -> CorruptionParams:
        """The method-facing view of this record."""
        return CorruptionParams(self.dims, self.strength)

    def apply(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Corrupt the masked tokens of ``embeds`` (B, T, D); returns a new tensor.

        A fresh CPU generator per call makes the result a function of this record and
        the inputs only, whatever ran before and whichever device ``embeds`` is on.
        """
        generator = torch.Generator(device="cpu")
        generator.manual_seed(self.seed)
        return get_method(self.method)(embeds, mask, self.params, generator)

    def with_seed(self, seed: int) -> Corruption:
        """Same corruption with another seed, e.g. one derived per request."""
        return Corruption(self.method, self.dims, self.strength, seed)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form for Decision records and audit logs."""
        return {
            "method": self.method,
            "dims": self.dims,
            "strength": self.strength,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> Corruption:
        """Inverse of :meth:`to_dict`; also parses policy config, so typos are rejected.

        Unknown keys raise instead of being ignored: a misspelt ``strenght`` would
        otherwise silently fall back to the default.
        """
        known = ("method", "dims", "strength", "seed")
        unknown = sorted(str(key) for key in d if key not in known)
        if unknown:
            raise UserError(
                f"unknown corruption key(s) {', '.join(unknown)}; valid keys: {', '.join(known)}"
            )
        if "method" not in d:
            raise UserError("corruption needs a 'method'")
        return cls(**{key: d[key] for key in known if key in d})  # type: ignore[arg-type]
