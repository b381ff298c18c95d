"""QALoRA weight quantizer (EfficientDM, research/diffusion_methods.md 1.2): a low-rank update merged, then quantized.

    W_hat = Q(W + B A, s_w)        B: (C_out, r) zeros, A: (r, C_in * kh * kw) Kaiming-uniform(a = sqrt(5))

The LoRA pair lives *inside* the weight quantizer, so the layer classes stay ``QuantLinear`` / ``QuantConv2d`` and
the integers absorb the update: ``Q(W + BA)`` lies on the inner quantizer's grid, and ``merged`` folds it into the
weight, after which the inner quantizer alone reproduces the training forward bit for bit. Training starts at the
PTQ model exactly (B = 0). A convolution's pair is EfficientDM's ``k x k`` conv A followed by a ``1 x 1`` conv B,
written as the dense product ``(B @ A)`` reshaped to the kernel (valid for groups = 1, which diffusers uses).
The dense ``BA`` is formed once per forward; a denoiser runs each layer once per optimizer step in distillation,
so this is also once per step (spec 1.8). With the quantizer bypassed (a forward hook returning its input, as
calibration does) the layer sees its float weight: that is the float teacher of ``visq.finetune``.
Why not ``peft``: its LoRA layers add ``B(A(x))`` to the base layer's *output* (the QLoRA structure), whereas QALoRA
needs the update added to the weight before the weight quantizer and sharing its step; a peft custom layer would
hold only this file's math, and peft's wrapping renames state-dict keys that ``visq.save`` / ``load`` rebuild.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from visq.quantizers.base import Quantizer, QuantSpec, SiteShape, build, register
from visq.quantizers.uniform import Uniform


@dataclass(frozen=True)
class QALoRA(QuantSpec):
    """A rank-``rank`` LoRA update added to the weight before the ``inner`` weight quantizer."""

    kind: ClassVar[str] = "qalora"
    inner: QuantSpec = Uniform(bits=4, symmetric=True, granularity="channel")
    rank: int = 32

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if isinstance(self.inner, QALoRA):
            raise ValueError("QALoRA cannot wrap another QALoRA")

    @property
    def bits(self) -> int | None:
        return getattr(self.inner, "bits", None)

    def short(self) -> str:
        return f"qalora r{self.rank} [{self.inner.short()}]"


@register(QALoRA)
class QALoRAQuantizer(Quantizer):
    """``forward(w) = inner(w + B A)``; parameters ``lora_A`` (r, K) and ``lora_B`` (C_out, r)."""

    def __init__(self, spec: QALoRA, site: SiteShape) -> None:
        super().__init__(spec, site)
        if site.role != "weight":
            raise ValueError("QALoRA applies to weight quantizer sites only")
        self.inner = build(spec.inner, site)
        rank = min(spec.rank, site.channels, site.numel_per_channel)
        self.lora_A = nn.Parameter(torch.empty(rank, site.numel_per_channel))
        self.lora_B = nn.Parameter(torch.zeros(site.channels, rank))
        self.reset_lora()

    def reset_lora(self, generator: torch.Generator | None = None) -> None:
        """``A`` drawn as nn.Linear's init (EfficientDM's loraA) from ``generator``, ``B = 0`` (so ``B A = 0``)."""
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)
            self.lora_B.zero_()

    def delta(self, like: Tensor) -> Tensor:
        """The dense update ``B A`` in the weight's shape and dtype."""
        return (self.lora_B @ self.lora_A).reshape(like.shape).to(like.dtype)

    def forward(self, w: Tensor) -> Tensor:
        return self.inner(w + self.delta(w))

    def observe(self, w: Tensor) -> None:
        with torch.no_grad():
            self.inner.observe(w + self.delta(w))

    def fit(self) -> None:
        self.inner.fit()

    def merged(self, w: Tensor) -> Tensor:
        """The fake-quantized merged weight ``Q(W + BA)``: on the inner grid, so ``inner(merged) == merged``."""
        with torch.no_grad():
            return self.forward(w).detach().clone()
