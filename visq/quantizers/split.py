"""Shortcut splitting (Q-Diffusion, research/diffusion_methods.md 8.1): separate ranges on either side of a concat.

A UNet decoder ResNet block sees ``cat([h, skip], dim=1)``; the two halves have very different ranges, so one range
for both wastes levels (CIFAR W4A8 FID 188 -> 4.9 with the split). ``Split`` quantizes channels ``[:split]`` and
``[split:]`` of axis 1 with two independent inner quantizers, for activations (N, C, H, W) and for weights
(C_out, C_in, kh, kw) alike; the split layer equals two GEMMs summed, Q(X1) Q(W1) + Q(X2) Q(W2).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor

from visq.quantizers.base import Quantizer, QuantSpec, SiteShape, build, register
from visq.quantizers.uniform import Uniform


@dataclass(frozen=True)
class Split(QuantSpec):
    """Two ``inner`` quantizers on channels ``[:split]`` and ``[split:]`` of axis 1 (``channels`` in all)."""

    kind: ClassVar[str] = "split"
    inner: Uniform = Uniform()
    split: int = 1
    channels: int = 2

    def __post_init__(self) -> None:
        if not 0 < self.split < self.channels:
            raise ValueError(f"split {self.split} must lie strictly inside the {self.channels} concatenated channels")

    @property
    def per_timestep(self) -> bool:
        return self.inner.per_timestep

    def short(self) -> str:
        return f"split@{self.split}/{self.channels} [{self.inner.short()}]"


def _part(site: SiteShape, channels: int, total: int) -> SiteShape:
    if site.role == "weight":  # split along input channels; per-output-channel scales stay
        return replace(site, numel_per_channel=site.numel_per_channel * channels // total)
    return replace(site, channels=channels)


@register(Split)
class SplitQuantizer(Quantizer):
    """Quantizes the two sides of a channel concatenation with their own ranges."""

    def __init__(self, spec: Split, site: SiteShape) -> None:
        super().__init__(spec, site)
        self.split = spec.split
        self.head = build(spec.inner, _part(site, spec.split, spec.channels))
        self.tail = build(spec.inner, _part(site, spec.channels - spec.split, spec.channels))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.head(x[:, : self.split]), self.tail(x[:, self.split :])], dim=1)

    def observe(self, x: Tensor) -> None:
        self.head.observe(x[:, : self.split])
        self.tail.observe(x[:, self.split :])

    def fit(self) -> None:
        self.head.fit()
        self.tail.fit()
