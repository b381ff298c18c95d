"""Recipes: which quantizer goes at which site, and which method refines it.

A recipe is an ordered tuple of ``Rule(pattern, spec)``: the pattern is an ``fnmatch`` glob over site names
(the quantizer's module path, e.g. ``blocks.0.attn.qkv.weight_quantizer``), the first matching rule wins and a
``None`` spec keeps the site float. Strings are sugar: ``"w<W>a<A>[-g<G>][-sym|-asym][-dyn]"`` (W weight bits 2-8,
A activation bits 2-8 or 16 for float activations, G weight group size, ``-asym`` asymmetric weights: an unsigned
grid with a zero point per channel / group, ``-sym`` signed symmetric weights, ``-dyn`` dynamic per-token
activations). Defaults of the grammar: weights per output channel (per group with ``-g``; a convolution's groups
run along its input channels), asymmetric at <= 4 bits and symmetric above (a symmetric 4-bit grid spends its
levels on both signs up to max |w| although a channel's weights rarely reach that far on both sides, and leaves
level -8 unused; at 8 bits the levels are fine enough that symmetric weights cost little and keep the int8
kernels free of weight zero points; measured effect in the README's results: gains at 4 bits in most tables, a
1.4-1.8 point loss at W3A3 on the zoo ViT; ``-sym`` keeps the symmetric grid), min-max ranges
(``Uniform(range="mse")`` searches the clipping range instead; measured on shapes-sd it lowered w4a16 PSNR to
float, so it is not the default); activations
asymmetric per tensor, static and calibrated (with ``-dyn``: asymmetric per token, ranges taken at run time, nothing
calibrated); attention q, k, v and softmax probabilities quantized like the other activations.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from visq.quantizers import QuantSpec, Uniform

GRAMMAR = ("w<W>a<A>[-g<G>][-sym|-asym][-dyn] with W in 2..8, A in 2..8 or 16 (float activations), G > 0, "
           "-sym / -asym = symmetric / asymmetric weights (default: asymmetric at W <= 4, symmetric above), "
           "-dyn = dynamic per-token activations")
PRESETS = ("w8a8", "w6a6", "w4a8", "w4a4", "w3a3", "w8a16", "w4a16", "w4a16-g32", "w4a8-g32", "w4a16-sym",
           "w4a8-sym", "w8a8-dyn")
ASYMMETRIC_MAX_BITS = 4  # weight widths up to this one default to the asymmetric grid
_PATTERN = re.compile(r"w(\d+)a(\d+)(?:-g(\d+))?(?:-(sym|asym))?(-dyn)?")
ACTIVATION_SITES = ("*.input_quantizer", "*.q_quantizer", "*.k_quantizer", "*.v_quantizer", "*.probs_quantizer")


@dataclass(frozen=True)
class Rule:
    """One recipe entry. ``optional`` rules may match no site (grammar rules for attention, say)."""

    pattern: str
    spec: QuantSpec | None
    optional: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise TypeError(f"Rule pattern must be a glob string over site names such as '*.weight_quantizer', got "
                            f"{self.pattern!r}")
        if self.spec is not None and not isinstance(self.spec, QuantSpec):
            raise TypeError(f"Rule spec must be a quantizer spec (e.g. visq.Uniform(bits=8)) or None to keep the site "
                            f"float, got {type(self.spec).__name__} {self.spec!r}")

    def matches(self, site: str) -> bool:
        return fnmatch.fnmatchcase(site, self.pattern)


@dataclass(frozen=True)
class Recipe:
    """Ordered rules plus the method that calibrates and refines them.

    Attributes:
        rules: first match wins; a ``None`` spec keeps the site float.
        name: label shown by ``summary`` and stored in ``quant.json``.
        method: registered method name (``visq.methods.names()``).
        method_kwargs: keyword arguments for the method.
        keep_host_defaults: apply the host's float-keep rules (time embeddings, patch embedding...) before
            these rules. Set False to quantize everything the rules match.
    """

    rules: tuple[Rule, ...]
    name: str = "custom"
    method: str = "minmax"
    method_kwargs: dict[str, Any] = field(default_factory=dict)
    keep_host_defaults: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.rules, (tuple, list)) or not all(isinstance(r, Rule) for r in self.rules):
            raise TypeError("Recipe rules must be a tuple of visq.Rule(pattern, spec); for a recipe string such as "
                            "'w8a8' pass the string itself, or visq.recipes.parse('w8a8')")
        object.__setattr__(self, "rules", tuple(self.rules))
        if not isinstance(self.method, str):
            raise TypeError(f"Recipe method must be a method name (str), got {self.method!r}")
        if not isinstance(self.method_kwargs, dict):
            raise TypeError(f"Recipe method_kwargs must be a dict, got {type(self.method_kwargs).__name__}")

    def spec_for(self, site: str) -> tuple[int, QuantSpec | None] | None:
        """(rule index, spec) of the first rule matching ``site``, or None when no rule matches."""
        for i, rule in enumerate(self.rules):
            if rule.matches(site):
                return i, rule.spec
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored in ``quant.json``)."""
        return {
            "name": self.name,
            "method": self.method,
            "method_kwargs": self.method_kwargs,
            "keep_host_defaults": self.keep_host_defaults,
            "rules": [
                {"pattern": r.pattern, "spec": r.spec.to_dict() if r.spec else None, "optional": r.optional}
                for r in self.rules
            ],
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Recipe:
        rules = tuple(
            Rule(r["pattern"], QuantSpec.from_dict(r["spec"]) if r["spec"] else None, r.get("optional", False))
            for r in data["rules"]
        )
        return Recipe(
            rules,
            name=data.get("name", "custom"),
            method=data.get("method", "minmax"),
            method_kwargs=dict(data.get("method_kwargs", {})),
            keep_host_defaults=data.get("keep_host_defaults", True),
        )


def _invalid(text: str, why: str) -> ValueError:
    return ValueError(f"invalid recipe {text!r}: {why}. Valid forms: {GRAMMAR}; presets: {', '.join(PRESETS)}")


def parse(text: str) -> Recipe:
    """Build the recipe a ``"w<W>a<A>[-g<G>][-sym|-asym][-dyn]"`` string stands for; anything else raises
    ValueError."""
    match = _PATTERN.fullmatch(text.strip().lower()) if isinstance(text, str) else None
    if match is None:
        raise _invalid(text, "not of the form w<W>a<A>[-g<G>][-sym|-asym][-dyn]")
    w, a = int(match[1]), int(match[2])
    g = int(match[3]) if match[3] is not None else None
    if not 2 <= w <= 8:
        raise _invalid(text, f"weight bits {w} outside 2..8")
    if not (2 <= a <= 8 or a == 16):
        raise _invalid(text, f"activation bits {a} outside 2..8 (or 16 for float activations)")
    if g is not None and g <= 0:
        raise _invalid(text, f"group size {g} must be positive")
    dynamic = match[5] is not None
    if dynamic and a == 16:
        raise _invalid(text, "-dyn needs quantized activations (A in 2..8)")
    symmetric = w > ASYMMETRIC_MAX_BITS if match[4] is None else match[4] == "sym"
    weight = Uniform(bits=w, symmetric=symmetric, granularity="group" if g else "channel", group_size=g or 0)
    rules = [Rule("*.weight_quantizer", weight)]
    activation = None
    if a != 16:
        activation = Uniform(bits=a, dynamic=True, granularity="token") if dynamic else Uniform(bits=a)
    rules += [Rule(p, activation, optional=p != "*.input_quantizer") for p in ACTIVATION_SITES]
    return Recipe(tuple(rules), name=text.strip().lower())


def resolve(recipe: str | Recipe, method: str | None = None, **method_kwargs: Any) -> Recipe:
    """A ``Recipe`` from a string or recipe, with ``method`` / kwargs (when given) taking precedence."""
    if isinstance(recipe, str):
        recipe = parse(recipe)
    elif not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a string ({GRAMMAR}) or a visq.Recipe, got {type(recipe).__name__}")
    if method is not None:
        recipe = replace(recipe, method=method)
    if method_kwargs:
        recipe = replace(recipe, method_kwargs={**recipe.method_kwargs, **method_kwargs})
    return recipe


def map_activation_specs(rules: Iterable[Rule], change: Callable[[Uniform], Uniform]) -> tuple[Rule, ...]:
    """The same rules with ``change`` applied to every static (not per-token) uniform activation spec."""
    out = []
    for rule in rules:
        spec = rule.spec
        is_activation = not rule.pattern.endswith("weight_quantizer")
        if is_activation and isinstance(spec, Uniform) and not spec.dynamic:
            spec = change(spec)
        out.append(replace(rule, spec=spec))
    return tuple(out)


def with_activation_range(rules: Iterable[Rule], range_rule: str) -> tuple[Rule, ...]:
    """The same rules with every static uniform activation spec switched to ``range_rule``."""
    return map_activation_specs(rules, lambda spec: replace(spec, range=range_rule))
