import itertools
import random

import pytest

from visq.mixed import allocate, at_bits, mean_bits, mixed_recipe, with_bits
from visq.quantizers import Uniform
from visq.quantizers.split import Split
from visq.recipes import parse

WIDTHS = (2, 3, 4, 6, 8)


def _brute_force(sizes, errors, budget):
    best = None
    for combo in itertools.product(WIDTHS, repeat=len(sizes)):
        if sum(s * b for s, b in zip(sizes, combo)) <= budget * sum(sizes) + 1e-9:
            total = sum(e[b] for e, b in zip(errors, combo))
            best = total if best is None else min(best, total)
    return best


def _errors(rng, n):
    # decreasing in bits, roughly 4x per extra bit (as quantization noise), with a random per-item scale
    return [{b: rng.uniform(0.1, 10) * 4.0 ** -b * rng.uniform(0.8, 1.2) for b in WIDTHS} for _ in range(n)]


@pytest.mark.parametrize("seed", range(6))
def test_allocation_is_optimal_and_meets_budget(seed):
    rng = random.Random(seed)
    sizes = [rng.randint(1, 9) for _ in range(5)]
    errors = _errors(rng, 5)
    budget = rng.choice([2.5, 3.0, 3.5, 4.0, 5.0, 6.5])
    bits = allocate(sizes, errors, budget)
    assert mean_bits(sizes, bits) <= budget + 1e-12
    assert sum(e[b] for e, b in zip(errors, bits)) == pytest.approx(_brute_force(sizes, errors, budget), rel=1e-12)


def test_allocation_spends_the_budget_exactly_when_more_bits_always_help():
    sizes = [100, 100, 100, 100]
    errors = [{b: (i + 1) * 2.0 ** -b for b in WIDTHS} for i in range(4)]
    bits = allocate(sizes, errors, 4.0)
    assert mean_bits(sizes, bits) == 4.0
    assert bits[-1] >= bits[0]  # the most sensitive item gets at least as many bits


def test_allocation_on_large_sizes_rounds_costs_up_and_keeps_the_budget():
    rng = random.Random(7)
    sizes = [rng.randint(10_000, 3_000_000) for _ in range(60)]
    bits = allocate(sizes, _errors(rng, 60), 3.5)
    assert 3.45 < mean_bits(sizes, bits) <= 3.5


def test_allocation_errors():
    with pytest.raises(ValueError, match="below the narrowest"):
        allocate([1, 2], [{2: 1.0, 4: 0.5}] * 2, 1.5)
    with pytest.raises(ValueError, match="positive integers"):
        allocate([0], [{2: 1.0}], 4)
    with pytest.raises(ValueError, match="one size"):
        allocate([], [], 4)


def test_with_bits_reaches_nested_specs_and_rejects_specs_without_bits():
    split = Split(inner=Uniform(bits=8), split=2, channels=4)
    assert with_bits(split, 3).inner.bits == 3
    assert with_bits(Uniform(bits=8, symmetric=True), 2) == Uniform(bits=2, symmetric=True)
    recipe = at_bits(parse("w4a8"), 6, 3)
    assert recipe.spec_for("x.weight_quantizer")[1].bits == 6 and recipe.spec_for("x.input_quantizer")[1].bits == 3

    from dataclasses import dataclass

    from visq.quantizers import QuantSpec

    @dataclass(frozen=True)
    class NoBits(QuantSpec):
        kind = "test-nobits"

    with pytest.raises(ValueError, match="no bit width"):
        with_bits(NoBits(), 4)


def test_mixed_recipe_puts_site_rules_first_and_refuses_float_sites():
    base = parse("w4a16")
    recipe = mixed_recipe(base, {"blocks.0.fc.weight_quantizer": 8}, "m")
    assert recipe.spec_for("blocks.0.fc.weight_quantizer")[1].bits == 8
    assert recipe.spec_for("blocks.1.fc.weight_quantizer")[1].bits == 4
    with pytest.raises(ValueError, match="keeps it float"):
        mixed_recipe(base, {"blocks.0.fc.input_quantizer": 8}, "m")
