"""RepQ-ViT (Li et al., ICCV 2023; research/vit_methods.md 1.5): scale reparameterisation + log-sqrt2 softmax.

1. Post-LayerNorm activations (tensors A, F: inputs of ``attn.qkv`` and ``mlp.fc1``) are calibrated per channel
   (asymmetric, percentile search, the searched range used as is: ``include_zero=False``, as the official
   quantizer does, so an all-positive outlier channel keeps a fine step), then reparameterised to one per-tensor
   (s~, z~):
       r = s / s~,   x' = x / r + s~ (z - z~)          (the per-tensor grid on x' is channel c's grid on x)
       LayerNorm:  gamma <- gamma / r,   beta <- beta / r + s~ (z - z~)
       next linear: W <- W diag(r) (input columns),   bias <- bias - W_old (s (z - z~))
   then the weight quantizer of that linear is fitted again. RepQ uses s~ = mean(s), z~ = mean(z) (fractional,
   so not exactly lossless); ``round_zero_point=True`` makes z~ an integer, and then the transition is exact.
2. Post-softmax probabilities (C): log-sqrt2 quantizer (``Log2(sqrt2=True)``), scale by percentile search over
   the official candidates {0.999, 0.9999, 0.99999} (quantiles of the whole calibration set).
3. Other activations: per-tensor asymmetric, percentile search; weights per output channel, asymmetric,
   percentile search; none of them forced to contain 0 (one quantizer class in the official code).
   One calibration pass (32 images in the paper), no reconstruction.
Deviations: patch embedding and head follow the host default (float); Swin ``PatchMerging`` norm -> reduction is
not reparameterised (it stays per tensor, as in I&S-ViT), so no bias has to be created there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from visq.calibrate import CalibSet, fit_weights
from visq.methods.base import Method, register
from visq.methods.vit_sites import (
    POST_LN_SITES,
    PROBS_SITE,
    map_weight_specs,
    post_norm_pairs,
    prepend,
    uniform_at,
)
from visq.quantizers import Log2, QuantSpec, UniformQuantizer, build
from visq.recipes import Rule, map_activation_specs

logger = logging.getLogger(__name__)
Aggregate = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
REPQ_WEIGHT_PERCENTILES = (0.999, 0.9999, 0.99999)
REPQ_PROB_PERCENTILES = (0.999, 0.9999, 0.99999)


def mean_target(scale: Tensor, zero: Tensor) -> tuple[Tensor, Tensor]:
    """RepQ-ViT / I&S-ViT target: s~ = mean(s), z~ = mean(z)."""
    return scale.mean(), zero.mean()


def reparam_rules(
    rules: tuple[Rule, ...], probs: Callable[[int], QuantSpec], weight_percentiles: tuple[float, ...]
) -> tuple[Rule, ...]:
    """Rules of the reparameterising methods: A / F per channel, probabilities from ``probs(bits)``, other
    activations and the weights (per channel, asymmetric) by percentile search; no range is widened to contain 0."""
    act = uniform_at(rules, "x.mlp.fc1.input_quantizer")
    prob = uniform_at(rules, "x.attn.probs_quantizer")
    rules = map_activation_specs(rules, lambda a: replace(a, range="percentile", include_zero=False))
    rules = map_weight_specs(rules, lambda w: replace(
        w, symmetric=False, range="percentile", percentiles=weight_percentiles, include_zero=False))
    specs: dict[str, QuantSpec] = {}
    if act is not None:
        post_ln = replace(act, granularity="channel", range="percentile", include_zero=False)
        specs.update({p: post_ln for p in POST_LN_SITES})
    if prob is not None:
        specs[PROBS_SITE] = probs(prob.bits)
    return prepend(rules, specs)


@torch.no_grad()
def reparameterize(norm: nn.LayerNorm, linear: nn.Module, aggregate: Aggregate, round_zero: bool = False) -> None:
    """Move ``linear``'s per-channel input quantization into ``norm`` and ``linear`` (module doc, step 1).

    Args:
        norm: the LayerNorm feeding ``linear`` only.
        linear: a QuantLinear whose ``input_quantizer`` is a per-channel ``UniformQuantizer``.
        aggregate: (scales, zero points) -> target (s~, z~).
        round_zero: round z~ to an integer (exact transition).
    """
    quant = linear.input_quantizer
    if not isinstance(quant, UniformQuantizer) or quant.spec.granularity != "channel":
        raise ValueError(f"reparameterisation needs a per-channel uniform input quantizer, got {quant}")
    if linear.bias is None:
        raise ValueError("reparameterisation folds an offset into the linear bias, but the layer has none")
    scale, zero = quant.scale.clone(), quant.zero_point.clone()
    s_t, z_t = aggregate(scale, zero)
    if round_zero:
        z_t = torch.round(z_t)
    r, shift = scale / s_t, s_t * (zero - z_t)
    norm.weight.div_(r)
    norm.bias.div_(r).add_(shift)
    linear.bias.sub_(linear.weight @ (scale * (zero - z_t)))
    linear.weight.mul_(r)
    new = build(replace(quant.spec, granularity="tensor"), quant.site).to(scale.device)
    new.scale.fill_(float(s_t))
    new.zero_point.fill_(float(z_t))
    linear.input_quantizer = new
    fit_weights(linear)


def reparameterize_all(model: nn.Module, aggregate: Aggregate, round_zero: bool) -> int:
    """Reparameterise every post-LayerNorm pair whose linear has a per-channel input quantizer; returns the count."""
    count = 0
    for norm, linear in post_norm_pairs(model):
        quant = getattr(linear, "input_quantizer", None)
        if isinstance(quant, UniformQuantizer) and quant.spec.granularity == "channel":
            reparameterize(norm, linear, aggregate, round_zero)
            count += 1
    logger.info("reparameterised %d post-LayerNorm activations to per-tensor", count)
    return count


@register
class RepQ(Method):
    """RepQ-ViT: per-channel post-LN calibration reparameterised to per-tensor, log-sqrt2 probabilities.

    Args:
        round_zero_point: use round(mean(z)) instead of RepQ's fractional mean (exact transition).
    """

    name = "repq"
    family = "vit"

    def __init__(self, round_zero_point: bool = False) -> None:
        self.round_zero_point = round_zero_point

    def rules(self, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        probs = lambda bits: Log2(bits=bits, sqrt2=True, percentiles=REPQ_PROB_PERCENTILES)  # noqa: E731
        return reparam_rules(rules, probs, REPQ_WEIGHT_PERCENTILES)

    def refine(self, pipe: Any, model: nn.Module, calib: CalibSet) -> None:
        reparameterize_all(model, mean_target, self.round_zero_point)
