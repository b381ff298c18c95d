"""Quantizer set-ups for quantization-aware training: the LSQ-QAT baseline and OFQ (research/vit_methods.md 1.2, 5).

Both are ordinary methods: ``visq.quantize(model, "w2a2", method="ofq", calib=images)`` installs the quantizers and
initialises every learnable step from calibration; ``visq.qat.train`` then trains them (and the weights).

- ``lsq`` (Esser et al. 2020): weights LSQ per output channel (signed, learnable step); activations LSQ+ per tensor
  (learnable step and offset); softmax probabilities LSQ unsigned. Steps start from an MSE search on calibration.
- ``ofq`` (Liu, Liu, Cheng, ICML 2023): weights StatsQ (``statsq=True``; scale from the weights at every step, no
  learnable scale), activations as ``lsq``, and QKR (``qkr=True``): attention q / k reparameterised so that the
  per-head product W_q^T W_k is quantized as one weight (``visq.methods.qkr``). CGA (confidence-guided annealing)
  and the oscillation metrics are training-time parts of OFQ and live in ``visq.qat``.
Deviations from OFQ's code: activations per tensor, not per token position (token counts may vary); the offset is
one LSQ+ shift instead of OFQ's two LearnableBias vectors per channel; patch embedding and head follow the host
default (float for timm; OFQ uses 8-bit LSQ) so the table compares with the PTQ methods on equal terms.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from visq.methods.base import Method, register
from visq.quantizers import LSQ, QuantSpec, StatsQ, Uniform
from visq.recipes import Rule

PROBS_PATTERN = "*.probs_quantizer"
KX_PATTERN = "*.kx_quantizer"


def _bits(spec: QuantSpec | None) -> int | None:
    return spec.bits if isinstance(spec, (Uniform, LSQ, StatsQ)) else None


def _qat_rules(rules: tuple[Rule, ...], weight: type[QuantSpec]) -> tuple[Rule, ...]:
    """The recipe's uniform specs turned into trainable ones: weights -> ``weight`` family, activations -> LSQ."""
    out = []
    act_bits = None
    for rule in rules:
        bits = _bits(rule.spec)
        if bits is None or not isinstance(rule.spec, Uniform):
            out.append(rule)
            continue
        if rule.pattern.endswith("weight_quantizer"):
            spec = StatsQ(bits=bits) if weight is StatsQ else LSQ(bits=bits, signed=True, granularity="channel")
        elif rule.pattern == PROBS_PATTERN:
            spec = LSQ(bits=bits, signed=False)
        else:
            spec, act_bits = LSQ(bits=bits, signed=True, offset=True), act_bits or bits
        out.append(Rule(rule.pattern, spec, rule.optional))
    if act_bits is not None:  # the QKR key-side product is an activation like the others
        out.insert(0, Rule(KX_PATTERN, LSQ(bits=act_bits, signed=True, offset=True), optional=True))
    return tuple(out)


@register
class LSQQAT(Method):
    """LSQ-QAT baseline: learnable-step quantizers everywhere (module doc); train with ``visq.qat.train``."""

    name = "lsq"

    def rules(self, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        return _qat_rules(rules, LSQ)


@register
class OFQ(Method):
    """OFQ's quantizers: StatsQ weights, LSQ+ activations, QKR attention.

    Args:
        statsq: StatsQ weights (False: LSQ weights, the "no StatsQ" ablation).
        qkr: query-key reparameterisation (False: q and k quantized separately, the "no QKR" ablation).
        cga: confidence-guided annealing in the final phase of training (read by ``visq.qat``; no effect on the
            quantizers).
        boundary_range: CGA's BR: weights within BR (integer units) of a rounding threshold keep training.
    """

    name = "ofq"
    family = "vit"

    def __init__(self, statsq: bool = True, qkr: bool = True, cga: bool = True, boundary_range: float = 0.005) -> None:
        if boundary_range <= 0:
            raise ValueError(f"boundary_range must be positive, got {boundary_range}")
        self.statsq, self.qkr, self.cga, self.boundary_range = statsq, qkr, cga, boundary_range

    def rules(self, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        return _qat_rules(rules, StatsQ if self.statsq else LSQ)

    def prepare(self, model: nn.Module) -> Callable[[], None] | None:
        if not self.qkr:
            return None
        from visq.methods.qkr import reparameterize

        return reparameterize(model)
