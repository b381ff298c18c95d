"""NoisyQuant's noisy-bias wrapper around any activation quantizer (Liu et al., CVPR 2023; vit_methods.md 4).

    forward(x) = Q_inner(x + N)        N: a fixed per-channel noise vector (buffer ``noise``), zero until set
The denoising bias ``-W_q N`` is *not* subtracted here: it belongs to the following linear layer's bias (the
paper's deployment form, B' = B - q_W(W) N), which the ``noisyquant`` method folds when it sets ``noise``. A
wrapper whose noise is non-zero is therefore only correct in front of a layer whose bias was corrected.

Calibration (``observing``) drives only outermost quantizers, so the wrapper forwards ``observe`` / ``fit`` to its
inner quantizer, which therefore sees ``x + noise`` and is fitted exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from visq.quantizers.base import Quantizer, QuantSpec, SiteShape, build, register
from visq.quantizers.uniform import Uniform


@dataclass(frozen=True)
class Noisy(QuantSpec):
    """A fixed per-channel noisy bias in front of ``inner``.

    Attributes:
        inner: the activation quantizer spec applied to ``x + noise``.
    """

    kind: ClassVar[str] = "noisy"
    inner: QuantSpec = Uniform()

    def __post_init__(self) -> None:
        if isinstance(self.inner, Noisy):
            raise ValueError("a Noisy spec cannot wrap another Noisy spec")

    def short(self) -> str:
        return f"noisy-bias({self.inner.short()})"


@register(Noisy)
class NoisyQuantizer(Quantizer):
    """Fake-quantizer for ``Noisy`` specs: submodule ``inner`` and buffer ``noise`` (one value per channel)."""

    def __init__(self, spec: Noisy, site: SiteShape) -> None:
        super().__init__(spec, site)
        if site.role != "activation":
            raise ValueError("the noisy bias applies to activations only")
        self.spec: Noisy = spec
        self.inner = build(spec.inner, site)
        self.register_buffer("noise", torch.zeros(site.channels))

    def _noise(self, x: Tensor) -> Tensor:
        shape = [1] * x.ndim
        shape[self.site.axis % x.ndim] = self.site.channels
        return self.noise.reshape(shape).to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x + self._noise(x))

    def observe(self, x: Tensor) -> None:
        """Calibrate the inner quantizer on what it will see: ``x + noise``."""
        self.inner.observe(x + self._noise(x))

    def fit(self) -> None:
        """Fit the inner quantizer."""
        self.inner.fit()
