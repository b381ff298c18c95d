"""Mixed precision: a bit width per quantizer site that meets a mean-bit budget and minimises summed sensitivity.

The sensitivities come from ``visq.doctor`` (the model-output error each site adds on its own, at each candidate
width). As in HAWQ-V2/V3, the errors of different sites are assumed to add up, so the choice is a multiple-choice
knapsack: pick one width per site, minimise the summed error, keep ``sum(size * bits) <= budget * sum(size)``.
It is solved exactly by dynamic programming over the (integer) extra bits above the narrowest width; when that
table would be too large the costs are rounded *up* to a coarser unit, so the budget still holds.

The result is an ordinary ``Recipe``: one exact rule per allocated site, then the base recipe's rules, so
``summary``, ``save``, ``load`` and every method work on it unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from visq.quantizers import QuantSpec
from visq.recipes import Recipe, Rule

BITS = (2, 3, 4, 6, 8)
_MAX_UNITS = 20_000  # capacity cells of the DP table (per item): exact for the zoo models, rounded up beyond


def with_bits(spec: QuantSpec, bits: int) -> QuantSpec:
    """``spec`` with its bit width (and that of every nested spec, e.g. a split's inner quantizer) set to ``bits``.

    Raises:
        ValueError: the family has no ``bits`` field anywhere (nothing to vary).
    """
    changes: dict[str, object] = {}
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if f.name == "bits":
            changes["bits"] = bits
        elif isinstance(value, QuantSpec):
            changes[f.name] = with_bits(value, bits)
    if not changes:
        raise ValueError(f"{spec.kind} quantizers have no bit width; mixed precision needs specs with a bits field")
    return dataclasses.replace(spec, **changes)


def spec_bits(spec: QuantSpec) -> int:
    """The bit width of ``spec`` (of its first nested spec for composite families)."""
    if hasattr(spec, "bits"):
        return int(spec.bits)
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if isinstance(value, QuantSpec):
            return spec_bits(value)
    raise ValueError(f"{spec.kind} quantizers have no bit width")


def is_weight_site(site: str) -> bool:
    """Weight sites end in ``weight_quantizer``; every other site quantizes an activation."""
    return site.endswith("weight_quantizer")


def at_bits(recipe: Recipe, weight_bits: int | None = None, activation_bits: int | None = None) -> Recipe:
    """``recipe`` with every weight rule at ``weight_bits`` and every activation rule at ``activation_bits``
    (None keeps that role's widths; float rules stay float)."""
    rules = []
    for rule in recipe.rules:
        bits = weight_bits if is_weight_site(rule.pattern) else activation_bits
        spec = with_bits(rule.spec, bits) if rule.spec is not None and bits is not None else rule.spec
        rules.append(dataclasses.replace(rule, spec=spec))
    return dataclasses.replace(recipe, rules=tuple(rules), name=f"{recipe.name}@w{weight_bits}a{activation_bits}")


def allocate(sizes: Sequence[int], errors: Sequence[Mapping[int, float]], budget: float) -> list[int]:
    """The width per item minimising ``sum(errors[i][bits_i])`` with ``sum(sizes[i] * bits_i) <= budget *
    sum(sizes)``.

    Args:
        sizes: positive integer size of each item (weight elements, or activation elements per call).
        errors: per item, the error at each candidate width (every item needs at least one).
        budget: the mean bits allowed, weighted by size.

    Raises:
        ValueError: empty input, a non-positive size, or a budget below the narrowest widths.
    """
    if not sizes or len(sizes) != len(errors):
        raise ValueError("allocate needs one size and one error table per item (and at least one item)")
    if any(int(s) != s or s <= 0 for s in sizes) or any(not e for e in errors):
        raise ValueError("sizes must be positive integers and every item needs at least one candidate width")
    options = [sorted(e, reverse=True) for e in errors]  # widest first: ties keep more bits
    floor = [min(o) for o in options]
    capacity = budget * sum(sizes) - sum(s * b for s, b in zip(sizes, floor))
    if capacity < -1e-9 * sum(sizes):
        least = sum(s * b for s, b in zip(sizes, floor)) / sum(sizes)
        raise ValueError(f"budget {budget:g} mean bits is below the narrowest allocation ({least:.3f} bits)")
    extra = [[int(s) * (b - f) for b in o] for s, o, f in zip(sizes, options, floor)]
    unit = math.gcd(*[c for row in extra for c in row if c]) or 1
    if capacity / unit > _MAX_UNITS:
        unit = capacity / _MAX_UNITS
    cells = int(math.floor(capacity / unit + 1e-9))
    costs = [[math.ceil(c / unit - 1e-9) for c in row] for row in extra]
    choice = _knapsack(costs, [[errors[i][b] for b in o] for i, o in enumerate(options)], cells)
    return [options[i][k] for i, k in enumerate(choice)]


def _knapsack(costs: list[list[int]], values: list[list[float]], cells: int) -> list[int]:
    """Multiple-choice knapsack by DP: ``best[c]`` = least summed value with total cost <= c."""
    best = np.zeros(cells + 1)
    picks = np.zeros((len(costs), cells + 1), dtype=np.int16)
    for i, (row_cost, row_value) in enumerate(zip(costs, values)):
        new = np.full(cells + 1, np.inf)
        for k, (cost, value) in enumerate(zip(row_cost, row_value)):
            if cost > cells:
                continue
            shifted = np.full(cells + 1, np.inf)
            shifted[cost:] = best[: cells + 1 - cost] + value
            better = shifted < new
            new[better], picks[i, better] = shifted[better], k
        best = new
    choice, c = [], cells
    for i in reversed(range(len(costs))):
        k = int(picks[i, c])
        choice.append(k)
        c -= costs[i][k]
    return choice[::-1]


def mixed_recipe(base: Recipe, bits: Mapping[str, int], name: str) -> Recipe:
    """``base`` with one exact rule per site of ``bits`` first (the site's base spec at the chosen width)."""
    rules = []
    for site, b in bits.items():
        hit = base.spec_for(site)
        if hit is None or hit[1] is None:
            raise ValueError(f"{site}: the base recipe {base.name!r} keeps it float, so it has no width to choose")
        rules.append(Rule(site, with_bits(hit[1], b)))
    return dataclasses.replace(base, rules=tuple(rules) + base.rules, name=name)


def mean_bits(sizes: Sequence[int], bits: Sequence[int]) -> float:
    """Size-weighted mean of ``bits``."""
    return sum(s * b for s, b in zip(sizes, bits)) / sum(sizes)
