"""Logarithmic quantizers for post-softmax probabilities: log2, log-sqrt2 (RepQ-ViT) and shift-uniform-log2 (I&S-ViT).

``Log2`` (research/vit_methods.md 1.4-1.5), with k = 1 (log2) or k = 2 (log-sqrt2):
    q = round(-k * log2(x / Delta));  zero where q >= 2^b;  q = clamp(q, 0, 2^b - 1)
    x_hat = Delta * 2^(-q / k)   (0 where zero)          -> 2^b levels plus an exact zero ("Sqrt2_17" at 4 bit)
    Delta = the candidate quantile of the observed values with the lowest quantization MSE (RepQ-ViT).

``ShiftUniformLog2`` (SULQ, I&S-ViT Eq. 13-14, research/vit_methods.md 2.1), in the code's sign convention:
    y = log2(x + eta),  step = (hi - lo) / (2^b - 1),  q = clamp(round((y - lo) / step), 0, 2^b - 1)
    x_hat = 2^round(q * step + lo) - eta             (the exponent is rounded: a bit shift at inference)
    eta from the grid {0.001 ... 1.0} with the lowest MSE; lo / hi = log2 of the observed min / max plus eta.
Deviations from the official code: calibration and forward use the same level count (2^b codes, step over
2^b - 1; the code's forward used 2^b and 2^b + 1 codes), and eta, lo, hi are buffers (the code kept lo / hi out of
the state dict). Gradients are straight-through (identity) in all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from visq.quantizers.base import QuantSpec, SiteShape, register
from visq.quantizers.searched import TINY, SearchedQuantizer, lowest_error, ste

SULQ_ETAS = (0.001, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass(frozen=True)
class Log2(QuantSpec):
    """Power-of-two (or power-of-sqrt2) quantization of non-negative activations.

    Attributes:
        bits: code width; 2^b levels below the scale plus an exact zero.
        sqrt2: levels are powers of sqrt(2) (RepQ-ViT) instead of powers of 2.
        percentiles: candidate quantiles for the scale Delta (1.0 = the maximum).
    """

    kind: ClassVar[str] = "log2"
    bits: int = 4
    sqrt2: bool = False
    percentiles: tuple[float, ...] = (0.999, 0.9999, 0.99999, 1.0)

    def short(self) -> str:
        return f"log{'sqrt2' if self.sqrt2 else '2'} {self.bits}b"


def log_quantize(x: Tensor, scale: Tensor, bits: int, sqrt2: bool) -> Tensor:
    """Quantize-dequantize ``x`` on the levels ``scale * 2^(-q/k)``, q in [0, 2^b - 1], plus zero."""
    k = 2.0 if sqrt2 else 1.0
    levels = 2**bits
    q = torch.round(-k * torch.log2(x.detach().clamp_min(TINY) / scale))
    x_hat = scale * torch.pow(2.0, -q.clamp(0, levels - 1) / k)
    return ste(x, torch.where(q >= levels, torch.zeros_like(x_hat), x_hat))


@register(Log2)
class Log2Quantizer(SearchedQuantizer):
    """Fake-quantizer for ``Log2`` specs; buffer ``scale`` is Delta, the largest level."""

    def __init__(self, spec: Log2, site: SiteShape) -> None:
        super().__init__(spec, site)
        self.spec: Log2 = spec
        self.register_buffer("scale", torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        return log_quantize(x, self.scale, self.spec.bits, self.spec.sqrt2)

    def search(self, values: Tensor, lo: Tensor, hi: Tensor) -> None:
        scales = [(hi if p >= 1.0 else self.quantile(p)).clamp_min(TINY) for p in self.spec.percentiles]
        spec = self.spec
        self.scale.copy_(lowest_error(values, scales, lambda s: log_quantize(values, s, spec.bits, spec.sqrt2)))


@dataclass(frozen=True)
class ShiftUniformLog2(QuantSpec):
    """I&S-ViT's SULQ: uniform codes over log2(x + eta), decoded to a rounded power of two minus eta.

    Attributes:
        bits: code width (2^b codes).
        etas: candidate shifts; the one with the lowest quantization MSE on calibration data is kept.
    """

    kind: ClassVar[str] = "sulq"
    bits: int = 4
    etas: tuple[float, ...] = SULQ_ETAS

    def short(self) -> str:
        return f"shift-uniform-log2 {self.bits}b"


def sulq(x: Tensor, eta: Tensor, lo: Tensor, hi: Tensor, bits: int) -> Tensor:
    """Quantize-dequantize ``x`` with SULQ: codes uniform on [lo, hi] in the log2(x + eta) domain."""
    n = 2**bits - 1
    step = (hi - lo).clamp_min(TINY) / n
    y = torch.log2(x.detach().clamp_min(0) + eta)
    q = torch.clamp(torch.round((y - lo) / step), 0, n)
    return ste(x, torch.pow(2.0, torch.round(q * step + lo)) - eta)


@register(ShiftUniformLog2)
class ShiftUniformLog2Quantizer(SearchedQuantizer):
    """Fake-quantizer for ``ShiftUniformLog2``; buffers ``eta`` (shift), ``lo`` / ``hi`` (log-domain range)."""

    def __init__(self, spec: ShiftUniformLog2, site: SiteShape) -> None:
        super().__init__(spec, site)
        self.spec: ShiftUniformLog2 = spec
        self.register_buffer("eta", torch.ones(()))
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        return sulq(x, self.eta, self.lo, self.hi, self.spec.bits)

    def search(self, values: Tensor, lo: Tensor, hi: Tensor) -> None:
        etas = [torch.tensor(eta, device=values.device) for eta in self.spec.etas]
        # (eta, lo, hi): the log-domain range follows the observed range for each shift
        candidates = [(eta, torch.log2(lo.clamp_min(0) + eta), torch.log2(hi.clamp_min(0) + eta)) for eta in etas]
        best = lowest_error(values, candidates, lambda c: sulq(values, *c, self.spec.bits))
        for buffer, value in zip((self.eta, self.lo, self.hi), best):
            buffer.copy_(value)
