"""StatsQ: OFQ's statistical weight quantizer (Liu et al., ICML 2023; research/vit_methods.md 5.1).

No learnable scale: the step comes from the weight statistics at every forward, per output row i (axis 0):
    s_i = factor * mean_j |W_ij|              (factor 2, OFQ's clip_val; detached: no gradient through s)
    w_c = clamp(W / s, -1, 1 - 1e-6)
    q   = round(w_c * n - 0.5) in {-n, ..., n - 1},  n = 2^(b-1)       (the integer code)
    W_hat = s * (q + 0.5) / n                  levels +-(k + 0.5) / n * s: 2^b levels, no zero level
    gradient: identity everywhere (W_hat = W + (W_hat - W).detach()), no clipping mask, as the official code.
An integer export must store the +0.5 offset (pitfall 9). OFQ's code shares the scale of its q-k product over
heads; visq takes one scale per row of whatever 2-D (or N-D, rows on axis 0) tensor it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from visq.quantizers.base import Quantizer, QuantSpec, SiteShape, register

CLIP_MARGIN = 1e-6


@dataclass(frozen=True)
class StatsQ(QuantSpec):
    """StatsQ settings.

    Attributes:
        bits: bit width, 2-8.
        factor: the row scale is ``factor * mean|W_row|`` (OFQ: 2).
    """

    kind: ClassVar[str] = "statsq"
    bits: int = 2
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 8:
            raise ValueError(f"StatsQ bits must be in 2..8, got {self.bits}")
        if self.factor <= 0:
            raise ValueError(f"StatsQ factor must be positive, got {self.factor}")

    def short(self) -> str:
        return f"int{self.bits} statsq per-row (scale {self.factor:g} mean|w|, no zero level)"


def row_scale(w: Tensor, factor: float) -> Tensor:
    """``factor * mean|w|`` over every axis but the first, shaped to broadcast against ``w`` (detached)."""
    dims = tuple(range(1, w.ndim))
    return (factor * w.detach().abs().mean(dim=dims, keepdim=True)).clamp_min(torch.finfo(w.dtype).tiny)


def pre_round(w: Tensor, bits: int, factor: float = 2.0) -> Tensor:
    """The value StatsQ rounds: ``clamp(w / s, -1, 1 - 1e-6) * n - 0.5`` (codes are its nearest integers)."""
    n = 2 ** (bits - 1)
    return torch.clamp(w.detach() / row_scale(w, factor), -1.0, 1.0 - CLIP_MARGIN) * n - 0.5


def codes(w: Tensor, bits: int, factor: float = 2.0) -> Tensor:
    """StatsQ's integer codes of ``w``, in {-2^(b-1), ..., 2^(b-1) - 1}."""
    return torch.round(pre_round(w, bits, factor))


def statsq(w: Tensor, bits: int, factor: float = 2.0) -> Tensor:
    """Fake-quantize ``w`` with StatsQ (identity gradient)."""
    n = 2 ** (bits - 1)
    w_hat = row_scale(w, factor) * (codes(w, bits, factor) + 0.5) / n
    return w + (w_hat - w).detach()


@register(StatsQ)
class StatsQQuantizer(Quantizer):
    """Fake-quantizer for ``StatsQ`` specs (weights). Stateless: nothing to calibrate, nothing to learn."""

    def __init__(self, spec: StatsQ, site: SiteShape) -> None:
        super().__init__(spec, site)
        if site.role != "weight":
            raise ValueError("StatsQ quantizes weights (its scale comes from weight statistics); use LSQ for "
                             "activations")
        self.spec: StatsQ = spec

    def forward(self, w: Tensor) -> Tensor:
        return statsq(w, self.spec.bits, self.spec.factor)

    @property
    def code_range(self) -> tuple[int, int]:
        """Smallest and largest integer code."""
        n = 2 ** (self.spec.bits - 1)
        return -n, n - 1

    def pre_round(self, w: Tensor) -> Tensor:
        """The value rounded to the integer code (CGA's confidence is its distance to a rounding threshold)."""
        return pre_round(w, self.spec.bits, self.spec.factor)

    def codes(self, w: Tensor) -> Tensor:
        """Integer codes of ``w`` (oscillation tracking)."""
        return codes(w, self.spec.bits, self.spec.factor)

    def observe(self, x: Tensor) -> None:
        """Nothing to observe: the scale follows the weights at every call."""

    def fit(self) -> None:
        """Nothing to fit."""
