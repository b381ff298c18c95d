"""PTQ4ViT (Yuan et al., ECCV 2022; research/vit_methods.md 1.3): twin-uniform quantization.

- Post-softmax probabilities (C): ``TwinUniform(region="softmax")``: two ranges, delta2 / delta1 = 2^m.
- Post-GELU activations (G, the input of ``mlp.fc2``): ``TwinUniform(region="gelu")``, a fixed negative step.
- Other activations and the weights: uniform with the scale searched over shrunken min-max ranges.
Deviations: candidates are ranked by each tensor's own quantization MSE, not by PTQ4ViT's Hessian-guided
layer-output metric (no backward pass); weights keep the recipe's per-output-channel symmetric grid (the paper:
one interval per layer, qkv split in three); patch embedding and head follow the host default (float).
"""

from __future__ import annotations

from dataclasses import replace

from visq.methods.base import Method, register
from visq.methods.vit_sites import POST_GELU_SITE, PROBS_SITE, map_weight_specs, prepend, uniform_at
from visq.quantizers import QuantSpec, TwinUniform
from visq.recipes import Rule, with_activation_range


@register
class PTQ4ViT(Method):
    """Twin-uniform probabilities and post-GELU activations; MSE-searched uniform ranges elsewhere."""

    name = "ptq4vit"
    family = "vit"

    def rules(self, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        gelu = uniform_at(rules, "x.mlp.fc2.input_quantizer")
        probs = uniform_at(rules, "x.attn.probs_quantizer")
        rules = map_weight_specs(with_activation_range(rules, "mse"), lambda w: replace(w, range="mse"))
        specs: dict[str, QuantSpec] = {}
        if gelu is not None:
            specs[POST_GELU_SITE] = TwinUniform(bits=gelu.bits, region="gelu")
        if probs is not None:
            specs[PROBS_SITE] = TwinUniform(bits=probs.bits, region="softmax")
        return prepend(rules, specs)
