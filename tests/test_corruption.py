"""Tests for eco_guard.corruption: the guarantees audit replay and batching rely on.

Every behavioural test is parametrised over ``CORRUPTION_METHODS`` so a newly
registered method is held to the same contract; ``_selection`` fails loudly for a
method whose dim-selection rule these tests do not know yet.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from eco_guard import corruption as corruption_module
from eco_guard.corruption import (
    CORRUPTION_METHODS,
    Corruption,
    CorruptionParams,
    get_method,
    register,
)
from eco_guard.errors import UserError

SHAPE = (3, 7, 16)
DIMS = 4
NOISE_METHODS = tuple(m for m in CORRUPTION_METHODS if m.startswith("rand_noise_"))


def _embeds(
    dtype: torch.dtype = torch.float32, shape: tuple[int, int, int] = SHAPE
) -> torch.Tensor:
    """Gaussian embeddings: continuous values make ties and exact zeros practically impossible."""
    generator = torch.Generator().manual_seed(1234)
    return torch.randn(shape, generator=generator).to(dtype)


def _mask(shape: tuple[int, int] = SHAPE[:2]) -> torch.Tensor:
    """A fixed mask with masked and unmasked tokens in every row."""
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[:, ::2] = True
    mask[1, 3] = True
    return mask


def _selection(method: str, embeds: torch.Tensor, dims: int) -> torch.Tensor | None:
    """Expected (B, T, D) bool map of the dims ``method`` touches; None for random dims."""
    width = embeds.shape[-1]
    n = min(dims, width)
    if method.endswith("_first_n"):
        selected = torch.zeros(embeds.shape, dtype=torch.bool)
        selected[..., :n] = True
        return selected
    if method.endswith("_top_k"):
        # argsort, not topk, so the expectation does not reuse the implementation's call.
        order = embeds.float().abs().argsort(dim=-1, descending=True)[..., :n]
        return torch.zeros(embeds.shape, dtype=torch.bool).scatter(-1, order, True)
    if method.endswith("_rand_n"):
        return None
    raise AssertionError(f"test does not know the dim-selection rule of {method!r}")


def test_registry_holds_the_papers_methods_in_order() -> None:
    assert CORRUPTION_METHODS == (
        "rand_noise_first_n",
        "rand_noise_rand_n",
        "rand_noise_top_k",
        "zero_out_first_n",
        "zero_out_top_k",
        "flip_sign_first_n",
        "flip_sign_top_k",
    )


@pytest.mark.parametrize("method", CORRUPTION_METHODS)
def test_positions_outside_mask_are_bit_identical(method: str) -> None:
    embeds, mask = _embeds(), _mask()
    out = Corruption(method, dims=DIMS, strength=3.0, seed=7).apply(embeds, mask)
    assert out.shape == embeds.shape
    assert torch.equal(out[~mask], embeds[~mask])
    assert not torch.equal(out[mask], embeds[mask])


@pytest.mark.parametrize("method", CORRUPTION_METHODS)
def test_exactly_the_selected_dims_change(method: str) -> None:
    embeds, mask = _embeds(), _mask()
    out = Corruption(method, dims=DIMS, strength=1.0, seed=3).apply(embeds, mask)
    changed = out != embeds
    selected = _selection(method, embeds, DIMS)
    if selected is None:
        per_token = changed.sum(dim=-1)
        assert torch.equal(per_token[mask], torch.full_like(per_token[mask], DIMS))
        assert not changed[~mask].any()
    else:
        assert torch.equal(changed, selected & mask.unsqueeze(-1))


@pytest.mark.parametrize("method", CORRUPTION_METHODS)
def test_selected_dims_get_the_methods_value(method: str) -> None:
    embeds, mask = _embeds(), _mask()
    out = Corruption(method, dims=DIMS, strength=1.0, seed=3).apply(embeds, mask)
    changed = out != embeds
    if method.startswith("zero_out_"):
        assert torch.equal(out[changed], torch.zeros_like(out[changed]))
    elif method.startswith("flip_sign_"):
        assert torch.equal(out[changed], -embeds[changed])
    elif method.startswith("rand_noise_"):
        assert changed.any()  # noise values are checked statistically below
    else:
        raise AssertionError(f"test does not know the operation of {method!r}")


@pytest.mark.parametrize("method", CORRUPTION_METHODS)
def test_dims_above_width_are_clamped(method: str) -> None:
    embeds, mask = _embeds(), _mask()
    out = Corruption(method, dims=SHAPE[-1] + 5, strength=1.0).apply(embeds, mask)
    changed = out != embeds
    assert torch.equal(changed, mask.unsqueeze(-1).expand_as(changed))


@pytest.mark.parametrize("method", CORRUPTION_METHODS)
def test_same_seed_is_bit_identical_and_seed_matters_only_for_noise(method: str) -> None:
    embeds, mask = _embeds(), _mask()
    corruption = Corruption(method, dims=DIMS, strength=1.0, seed=11)
    first = corruption.apply(embeds, mask)
    assert torch.equal(first, corruption.apply(embeds, mask))
    other_seed = corruption.with_seed(12).apply(embeds, mask)
    if method in NOISE_METHODS:
        assert not torch.equal(first, other_seed)
    else:
        assert torch.equal(first, other_seed)


@pytest.mark.parametrize("method", CORRUPTION_METHODS)
def test_input_is_not_modified(method: str) -> None:
    embeds, mask = _embeds(), _mask()
    embeds_before, mask_before = embeds.clone(), mask.clone()
    out = Corruption(method, dims=DIMS, strength=1.0).apply(embeds, mask)
    assert torch.equal(embeds, embeds_before)
    assert torch.equal(mask, mask_before)
    assert out.data_ptr() != embeds.data_ptr()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", CORRUPTION_METHODS)
def test_half_precision_dtype_is_kept(method: str, dtype: torch.dtype) -> None:
    embeds, mask = _embeds(dtype), _mask()
    out = Corruption(method, dims=DIMS, strength=1.0, seed=5).apply(embeds, mask)
    assert out.dtype == dtype
    assert torch.equal(out[~mask], embeds[~mask])
    assert not torch.equal(out[mask], embeds[mask])
    assert torch.equal(out, Corruption(method, dims=DIMS, strength=1.0, seed=5).apply(embeds, mask))


@pytest.mark.parametrize("method", CORRUPTION_METHODS)
def test_corruption_of_a_token_ignores_which_other_tokens_are_masked(method: str) -> None:
    embeds = _embeds()
    small = torch.zeros(SHAPE[:2], dtype=torch.bool)
    small[0, 1] = small[2, 4] = True
    large = small.clone()
    large[:, 5:] = True
    corruption = Corruption(method, dims=DIMS, strength=1.0, seed=9)
    alone, together = corruption.apply(embeds, small), corruption.apply(embeds, large)
    assert torch.equal(alone[small], together[small])


@pytest.mark.parametrize("method", CORRUPTION_METHODS)
def test_empty_mask_returns_an_equal_new_tensor(method: str) -> None:
    embeds = _embeds()
    out = Corruption(method, dims=DIMS).apply(embeds, torch.zeros(SHAPE[:2], dtype=torch.bool))
    assert torch.equal(out, embeds)
    assert out.data_ptr() != embeds.data_ptr()


@pytest.mark.parametrize("method", CORRUPTION_METHODS)
def test_apply_is_the_registered_function_with_a_cpu_generator_seeded_by_seed(method: str) -> None:
    embeds, mask = _embeds(), _mask()
    direct = get_method(method)(
        embeds, mask, CorruptionParams(DIMS, 2.0), torch.Generator().manual_seed(21)
    )
    assert torch.equal(Corruption(method, DIMS, 2.0, 21).apply(embeds, mask), direct)


@pytest.mark.parametrize("method", tuple(m for m in CORRUPTION_METHODS if m not in NOISE_METHODS))
def test_strength_does_not_affect_deterministic_methods(method: str) -> None:
    embeds, mask = _embeds(), _mask()
    assert torch.equal(
        Corruption(method, DIMS, 0.0).apply(embeds, mask),
        Corruption(method, DIMS, 5.0).apply(embeds, mask),
    )


@pytest.mark.parametrize("method", NOISE_METHODS)
def test_noise_std_is_about_strength(method: str) -> None:
    shape = (4, 256, 64)
    embeds = _embeds(shape=shape)
    mask = torch.ones(shape[:2], dtype=torch.bool)
    out = Corruption(method, dims=16, strength=2.0, seed=1).apply(embeds, mask)
    selected = out != embeds
    noise = (out - embeds)[selected]
    assert noise.numel() == 4 * 256 * 16
    assert abs(noise.std().item() - 2.0) < 0.05 * 2.0
    assert abs(noise.mean().item()) < 0.05


@pytest.mark.parametrize("method", NOISE_METHODS)
def test_zero_strength_noise_leaves_embeddings_unchanged(method: str) -> None:
    embeds, mask = _embeds(), _mask()
    assert torch.equal(Corruption(method, DIMS, 0.0).apply(embeds, mask), embeds)


def test_rand_n_picks_every_dim_about_equally_often() -> None:
    width, dims, tokens = 10, 3, 4000
    embeds = _embeds(shape=(1, tokens, width))
    out = Corruption("rand_noise_rand_n", dims=dims, seed=2).apply(
        embeds, torch.ones((1, tokens), dtype=torch.bool)
    )
    counts = (out != embeds).sum(dim=(0, 1)).float()
    expected = tokens * dims / width
    assert torch.all((counts - expected).abs() < 0.1 * expected), counts


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"method": "no_such_method"}, "no_such_method"),
        ({"method": "rand_noise_first_n", "dims": 0}, "dims"),
        ({"method": "rand_noise_first_n", "dims": -2}, "dims"),
        ({"method": "rand_noise_first_n", "dims": 1.5}, "dims"),
        ({"method": "rand_noise_first_n", "dims": True}, "dims"),
        ({"method": "rand_noise_first_n", "strength": -0.1}, "strength"),
        ({"method": "rand_noise_first_n", "strength": math.nan}, "strength"),
        ({"method": "rand_noise_first_n", "strength": math.inf}, "strength"),
        ({"method": "zero_out_first_n", "strength": -1.0}, "strength"),
        ({"method": "rand_noise_first_n", "strength": "1"}, "strength"),
        ({"method": "rand_noise_first_n", "seed": -1}, "seed"),
        ({"method": "rand_noise_first_n", "seed": 2**64}, "seed"),
    ],
)
def test_invalid_corruption_raises_user_error(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(UserError, match=fragment):
        Corruption(**kwargs)  # type: ignore[arg-type]


def test_unknown_method_error_lists_valid_methods() -> None:
    with pytest.raises(UserError) as excinfo:
        get_method("gaussian_blur")
    message = str(excinfo.value)
    assert "gaussian_blur" in message
    assert all(name in message for name in CORRUPTION_METHODS)


def test_with_seed_changes_only_the_seed_and_validates() -> None:
    original = Corruption("rand_noise_top_k", dims=3, strength=0.5, seed=1)
    reseeded = original.with_seed(99)
    assert reseeded == Corruption("rand_noise_top_k", dims=3, strength=0.5, seed=99)
    assert original.seed == 1
    with pytest.raises(UserError, match="seed"):
        original.with_seed(-5)


@pytest.mark.parametrize("method", CORRUPTION_METHODS)
def test_to_dict_from_dict_round_trip(method: str) -> None:
    corruption = Corruption(method, dims=5, strength=0.25, seed=2**40)
    data = json.loads(json.dumps(corruption.to_dict()))
    assert data == {"method": method, "dims": 5, "strength": 0.25, "seed": 2**40}
    assert Corruption.from_dict(data) == corruption


def test_from_dict_applies_defaults_and_normalises_strength() -> None:
    corruption = Corruption.from_dict({"method": "flip_sign_top_k", "strength": 2})
    assert corruption == Corruption("flip_sign_top_k", dims=1, strength=2.0, seed=0)
    assert isinstance(corruption.strength, float)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"method": "rand_noise_first_n", "strenght": 2.0}, "strenght"),
        ({"dims": 2}, "method"),
        ({"method": "rand_noise_first_n", "dims": "3"}, "dims"),
    ],
)
def test_from_dict_rejects_bad_data(data: dict[str, object], fragment: str) -> None:
    with pytest.raises(UserError, match=fragment):
        Corruption.from_dict(data)


def test_register_refuses_duplicate_names() -> None:
    original = get_method("zero_out_first_n")
    with pytest.raises(ValueError, match="zero_out_first_n"):
        register("zero_out_first_n")(original)
    assert get_method("zero_out_first_n") is original
    assert corruption_module.CORRUPTION_METHODS == CORRUPTION_METHODS


@pytest.mark.parametrize(
    ("embeds", "mask", "fragment"),
    [
        (torch.zeros(SHAPE), torch.zeros(SHAPE[:2]), "mask"),
        (torch.zeros(SHAPE), torch.zeros((SHAPE[0], SHAPE[1] + 1), dtype=torch.bool), "mask"),
        (torch.zeros(SHAPE[1:]), torch.zeros(SHAPE[1:2], dtype=torch.bool), "embeds"),
        (torch.zeros(SHAPE, dtype=torch.int64), torch.zeros(SHAPE[:2], dtype=torch.bool), "embeds"),
    ],
)
@pytest.mark.parametrize("method", CORRUPTION_METHODS)
def test_malformed_tensors_raise_value_error(
    method: str, embeds: torch.Tensor, mask: torch.Tensor, fragment: str
) -> None:
    with pytest.raises(ValueError, match=fragment):
        Corruption(method).apply(embeds, mask)
