"""Plain post-training quantization baselines: activation ranges by min-max, percentile search or MSE search.

Weights always use the recipe's weight range rule (min-max by default): their distribution is fully known, so a
search buys little. ``percentile`` follows RepQ-ViT / I&S-ViT's candidate search; ``mse`` is FQ-ViT's OMSE grid.
"""

from __future__ import annotations

from visq.methods.base import Method, register
from visq.recipes import Rule, with_activation_range


@register
class MinMax(Method):
    """Activation ranges from the observed minimum and maximum (the default method)."""

    name = "minmax"


@register
class Percentile(Method):
    """Activation ranges by the percentile candidate with the lowest quantization error."""

    name = "percentile"

    def rules(self, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        return with_activation_range(rules, "percentile")


@register
class MSE(Method):
    """Activation ranges by shrinking the min-max range to the lowest quantization error."""

    name = "mse"

    def rules(self, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        return with_activation_range(rules, "mse")
