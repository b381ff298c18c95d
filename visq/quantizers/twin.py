"""PTQ4ViT twin-uniform quantizers (Yuan et al., ECCV 2022; research/vit_methods.md 1.3).

Each value is coded with one region flag plus a (b - 1)-bit unsigned code, k = 2^(b-1):
  region "softmax" (post-softmax probabilities, values in [0, hi]):
      R2 covers [0, hi] with step delta2 = hi / (k - 1); R1 covers small values with delta1 = delta2 / 2^m.
      x_hat = clamp(round(x / delta1), 0, k - 1) * delta1   if x < (k - 1/2) * delta1   (R1)
              clamp(round(x / delta2), 0, k - 1) * delta2   otherwise                  (R2)
      m (so that delta2 / delta1 is a power of two: a shift in hardware) is searched in 0..max_shift.
  region "gelu" (post-GELU activations):
      x_hat = clamp(round(x / delta1), 0, k - 1) * delta1 for x >= 0, clamp(round(x / delta2), -k, 0) * delta2
      for x < 0, with delta2 = 0.16997 / k fixed (|min GELU|) and delta1 searched.
Deviation: PTQ4ViT ranks candidates with its Hessian-guided layer-output metric; here candidates are ranked by
the quantization MSE of the tensor itself (no backward pass needed). Gradients are straight-through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from visq.quantizers.base import QuantSpec, SiteShape, register
from visq.quantizers.searched import TINY, SearchedQuantizer, lowest_error, ste

REGIONS = ("softmax", "gelu")
GELU_MIN = 0.16997


@dataclass(frozen=True)
class TwinUniform(QuantSpec):
    """Twin-uniform settings.

    Attributes:
        bits: total width: 1 region bit plus b - 1 code bits per region.
        region: "softmax" (two positive ranges) or "gelu" (positive range plus a fixed negative one).
        max_shift: largest m tried for the softmax ratio delta2 / delta1 = 2^m.
        candidates: number of delta1 candidates tried for the gelu region.
    """

    kind: ClassVar[str] = "twin_uniform"
    bits: int = 4
    region: str = "softmax"
    max_shift: int = 12
    candidates: int = 50

    def __post_init__(self) -> None:
        if self.region not in REGIONS:
            raise ValueError(f"region must be one of {REGIONS}, got {self.region!r}")
        if self.bits < 2:
            raise ValueError("twin-uniform needs at least 2 bits (region flag + code)")

    def short(self) -> str:
        return f"twin-uniform {self.bits}b {self.region}"


def _grid(x: Tensor, delta: Tensor, qmin: int, qmax: int) -> Tensor:
    return torch.clamp(torch.round(x / delta), qmin, qmax) * delta


def twin_quantize(x: Tensor, delta1: Tensor, delta2: Tensor, bits: int, region: str) -> Tensor:
    """Quantize-dequantize ``x`` on the two grids of ``region``."""
    k = 2 ** (bits - 1)
    v = x.detach()
    if region == "softmax":
        in_r1 = v < (k - 0.5) * delta1
        x_hat = torch.where(in_r1, _grid(v, delta1, 0, k - 1), _grid(v, delta2, 0, k - 1))
    else:
        x_hat = torch.where(v >= 0, _grid(v, delta1, 0, k - 1), _grid(v, delta2, -k, 0))
    return ste(x, x_hat)


@register(TwinUniform)
class TwinUniformQuantizer(SearchedQuantizer):
    """Fake-quantizer for ``TwinUniform``; buffers ``delta1`` / ``delta2`` (the two steps, see module doc)."""

    def __init__(self, spec: TwinUniform, site: SiteShape) -> None:
        super().__init__(spec, site)
        self.spec: TwinUniform = spec
        self.register_buffer("delta1", torch.ones(()))
        self.register_buffer("delta2", torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        return twin_quantize(x, self.delta1, self.delta2, self.spec.bits, self.spec.region)

    def _candidates(self, hi: Tensor) -> list[tuple[Tensor, Tensor]]:
        k = 2 ** (self.spec.bits - 1)
        top = hi.clamp_min(TINY)
        if self.spec.region == "softmax":
            delta2 = top / (k - 1)
            return [(delta2 / 2**m, delta2) for m in range(self.spec.max_shift + 1)]
        delta2 = torch.tensor(GELU_MIN / k, device=hi.device)
        alphas = torch.linspace(1.0, 1.0 / self.spec.candidates, self.spec.candidates).tolist()
        return [(top * a / (k - 1), delta2) for a in alphas]

    def search(self, values: Tensor, lo: Tensor, hi: Tensor) -> None:
        quantize = lambda d: twin_quantize(values, *d, self.spec.bits, self.spec.region)  # noqa: E731
        delta1, delta2 = lowest_error(values, self._candidates(hi), quantize)
        self.delta1.copy_(delta1)
        self.delta2.copy_(delta2)
