"""DGQ's prompt-specific logarithmic quantizer for attention probabilities (research/diffusion_methods.md 4.3).

    s = max(A[..., 1:])                         computed at inference, per sample and head
    code = clamp(round(-log2(A[..., 1:] / s)), 0, 2^b - 1),   A_hat[..., 1:] = s * 2^-code
    A_hat[..., 0] = A[..., 0]                   the <start> token's column stays float (``keep_start``)
Cross-attention probabilities are bimodal: the start token soaks up the background pixels' attention and sits near
1, the rest is prompt-dependent, so one calibrated range fits neither. DGQ's code takes s over the whole batch
(the CFG halves share it); visq takes it per sample and head [RECON: the improvement the spec suggests]. The
quantizer is dynamic: it has no calibrated state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from visq.quantizers.base import Quantizer, QuantSpec, register, round_ste


@dataclass(frozen=True)
class PromptLog(QuantSpec):
    """``bits``-bit log2 codes below the running maximum; ``keep_start`` leaves key 0 (the start token) float."""

    kind: ClassVar[str] = "prompt_log"
    bits: int = 8
    keep_start: bool = True

    def short(self) -> str:
        return f"log2 int{self.bits} per-prompt max" + (", start token float" if self.keep_start else "")


@register(PromptLog)
class PromptLogQuantizer(Quantizer):
    """Dynamic log2 quantizer of probabilities shaped (..., queries, keys)."""

    def forward(self, x: Tensor) -> Tensor:
        start = 1 if self.spec.keep_start and x.shape[-1] > 1 else 0
        rest = x[..., start:]
        top = rest.detach().amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
        levels = 2**self.spec.bits - 1
        # clamp before rounding: -log2(0) = inf, and inf would turn the straight-through round into NaN
        code = round_ste((-torch.log2(rest / top)).clamp(0, levels))
        quantized = top * torch.exp2(-code)
        return torch.cat([x[..., :start], quantized], dim=-1) if start else quantized

    def observe(self, x: Tensor) -> None:
        """Nothing to calibrate: the scale is taken from each input."""

    def fit(self) -> None:
        """Nothing to calibrate."""
