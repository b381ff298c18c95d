"""DGQ's start-token exception for cross-attention keys (research/diffusion_methods.md 4.3: ``k[..., 1:, :]``).

The ``<start>`` token's key soaks up the attention of background pixels and sits far from the other keys, so DGQ
quantizes keys ``1:`` only and keeps token 0 float, like the start token's column of the probabilities
(``PromptLog(keep_start=True)``). ``StartFloat`` wraps any inner quantizer of a (..., tokens, channels) tensor and
leaves index 0 of the token axis (-2) untouched, in calibration and at inference alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from visq.quantizers.base import Quantizer, QuantSpec, SiteShape, build, register
from visq.quantizers.uniform import Uniform


@dataclass(frozen=True)
class StartFloat(QuantSpec):
    """``inner`` on tokens ``1:`` of axis -2; token 0 (the start token) stays float."""

    kind: ClassVar[str] = "start_float"
    inner: Uniform = Uniform()

    @property
    def per_timestep(self) -> bool:
        return self.inner.per_timestep

    def short(self) -> str:
        return f"{self.inner.short()}, start token float"


@register(StartFloat)
class StartFloatQuantizer(Quantizer):
    """Quantizes every token but the first."""

    def __init__(self, spec: StartFloat, site: SiteShape) -> None:
        super().__init__(spec, site)
        self.inner = build(spec.inner, site)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2] < 2:  # no start token to spare (self-attention over one token)
            return self.inner(x)
        return torch.cat([x[..., :1, :], self.inner(x[..., 1:, :])], dim=-2)

    def observe(self, x: Tensor) -> None:
        self.inner.observe(x[..., 1:, :] if x.shape[-2] > 1 else x)

    def fit(self) -> None:
        self.inner.fit()
