"""[RECON] Tangent companding quantizer for post-softmax probabilities, standing in for DopQ-ViT's TanQ.

DopQ-ViT (Yang et al., arXiv 2408.03291) describes TanQ as a tangent-based quantizer that keeps precision for
the dense values near 0 *and* for the rare, important values near 1. Its equation was not available
(research/vit_methods.md 3.2), so this file implements the reconstruction proposed there, registered under its
own spec type (``tanq_recon``) so the paper's formula can replace it in this one file:
    t = clamp(x / hi, 0, 1),  u = tan(theta * (2t - 1)) / tan(theta)            (u in [-1, 1])
    q = clamp(round((u + 1) / 2 * (2^b - 1)), 0, 2^b - 1)
    x_hat = hi * (arctan((2q / (2^b - 1) - 1) * tan(theta)) / theta + 1) / 2
The compressor is steep near t = 0 and t = 1, so codes are dense there and sparse in the middle; theta -> 0 gives
a uniform quantizer. theta is chosen per tensor from a grid by quantization MSE [RECON]; hi is the observed
maximum. Unknowns: whether the paper works in the log domain, and whether it is symmetric about 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from visq.quantizers.base import QuantSpec, SiteShape, register
from visq.quantizers.searched import TINY, SearchedQuantizer, lowest_error, ste

THETAS = tuple(round(0.05 * i, 2) for i in range(1, 31))  # 0.05 .. 1.5 (< pi / 2)


@dataclass(frozen=True)
class TanQRecon(QuantSpec):
    """[RECON] tangent companding quantizer on [0, hi] (not the paper's verified TanQ formula).

    Attributes:
        bits: code width (2^b levels).
        thetas: candidate curvatures in (0, pi/2); larger means denser codes near 0 and near hi.
    """

    kind: ClassVar[str] = "tanq_recon"
    bits: int = 4
    thetas: tuple[float, ...] = THETAS

    def __post_init__(self) -> None:
        if not all(0 < t < math.pi / 2 for t in self.thetas):
            raise ValueError(f"thetas must lie in (0, pi/2), got {self.thetas}")

    def short(self) -> str:
        return f"tangent-companding {self.bits}b [RECON TanQ]"


def compress(x: Tensor, theta: Tensor, hi: Tensor) -> Tensor:
    """Map [0, hi] onto [-1, 1] through the tangent curve."""
    t = (x / hi.clamp_min(TINY)).clamp(0, 1)
    return torch.tan(theta * (2 * t - 1)) / torch.tan(theta)


def expand(u: Tensor, theta: Tensor, hi: Tensor) -> Tensor:
    """Inverse of ``compress``: [-1, 1] back onto [0, hi]."""
    return hi * (torch.atan(u * torch.tan(theta)) / theta + 1) / 2


def tan_quantize(x: Tensor, theta: Tensor, hi: Tensor, bits: int) -> Tensor:
    """Quantize-dequantize ``x`` with 2^b codes uniform in the companded domain."""
    n = 2**bits - 1
    q = torch.clamp(torch.round((compress(x.detach(), theta, hi) + 1) / 2 * n), 0, n)
    return ste(x, expand(2 * q / n - 1, theta, hi))


@register(TanQRecon)
class TanQReconQuantizer(SearchedQuantizer):
    """Fake-quantizer for ``TanQRecon``; buffers ``theta`` (curvature) and ``hi`` (upper end of the range)."""

    def __init__(self, spec: TanQRecon, site: SiteShape) -> None:
        super().__init__(spec, site)
        self.spec: TanQRecon = spec
        self.register_buffer("theta", torch.tensor(spec.thetas[0]))
        self.register_buffer("hi", torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        return tan_quantize(x, self.theta, self.hi, self.spec.bits)

    def search(self, values: Tensor, lo: Tensor, hi: Tensor) -> None:
        thetas = [torch.tensor(theta, device=values.device) for theta in self.spec.thetas]
        self.theta.copy_(lowest_error(values, thetas, lambda t: tan_quantize(values, t, hi, self.spec.bits)))
        self.hi.copy_(hi.clamp_min(TINY))
