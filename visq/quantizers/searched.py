"""Shared machinery of the per-tensor quantizers whose parameters come from a search over observed values.

``SearchedQuantizer`` keeps, while observing, the exact running minimum and maximum plus a bounded random sample
of the values (post-softmax tensors hold millions of entries per batch), and hands them to ``search`` on ``fit``.
Subclasses (log2, shift-uniform-log2, tangent, twin-uniform) store the result in buffers made in ``__init__``.
These quantizers are per tensor and static; they keep no per-timestep state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import torch
from torch import Tensor

from visq.quantizers.base import Quantizer, QuantSpec, SiteShape

T = TypeVar("T")
SAMPLES_PER_CALL = 16384
TINY = 1e-12


def ste(x: Tensor, x_hat: Tensor) -> Tensor:
    """``x_hat`` in the forward, identity gradient to ``x`` in the backward (straight-through estimator).

    Written as ``x_hat + (x - x)`` rather than ``x + (x_hat - x)`` so the forward value is exactly ``x_hat``;
    the result has ``x``'s dtype whatever the buffers' dtype.
    """
    return x_hat.detach().to(x.dtype) + (x - x.detach())


def bounded_sample(x: Tensor, limit: int, seed: int) -> Tensor:
    """At most ``limit`` values of ``x`` (flattened, float), a seeded random subset when there are more."""
    flat = x.detach().float().reshape(-1)
    if flat.numel() <= limit:
        return flat
    gen = torch.Generator().manual_seed(seed)
    # randint instead of randperm: a permutation of millions of indices per call is the slow part
    return flat[torch.randint(flat.numel(), (limit,), generator=gen).to(flat.device)]


def mse(a: Tensor, b: Tensor) -> float:
    """Mean squared difference as a Python float."""
    return float((a - b).pow(2).mean())


def lowest_error(values: Tensor, candidates: Iterable[T], quantize: Callable[[T], Tensor]) -> T:
    """The candidate whose ``quantize(candidate)`` (values quantized with it) has the lowest MSE to ``values``."""
    best, best_err = None, float("inf")
    for candidate in candidates:
        err = mse(quantize(candidate), values)
        if best is None or err < best_err:
            best, best_err = candidate, err
    return best


class SearchedQuantizer(Quantizer):
    """Per-tensor quantizer fitted by a search over observed values; subclasses implement ``search``."""

    def __init__(self, spec: QuantSpec, site: SiteShape) -> None:
        super().__init__(spec, site)
        if site.timesteps:
            raise ValueError(f"{type(spec).__name__} has no per-timestep state; use it on non-temporal sites")
        self._samples: list[Tensor] = []
        self._lo: Tensor | None = None
        self._hi: Tensor | None = None

    def observe(self, x: Tensor) -> None:
        """Track the exact range and keep a bounded sample of ``x``."""
        x = x.detach().float()
        lo, hi = x.min(), x.max()
        self._lo = lo if self._lo is None else torch.minimum(self._lo, lo)
        self._hi = hi if self._hi is None else torch.maximum(self._hi, hi)
        self._samples.append(bounded_sample(x, SAMPLES_PER_CALL, seed=len(self._samples)))

    def fit(self) -> None:
        """Run the subclass search on what was observed; raises if nothing was."""
        if not self._samples:
            raise RuntimeError(
                f"{type(self).__name__} saw no calibration data: the calibration run never reached this quantizer"
            )
        with torch.no_grad():
            self.search(torch.cat(self._samples), self._lo, self._hi)
        self._samples, self._lo, self._hi = [], None, None

    def search(self, values: Tensor, lo: Tensor, hi: Tensor) -> None:  # pragma: no cover - interface
        """Set the buffers from a sample of ``values`` and the exact observed range [lo, hi]."""
        raise NotImplementedError
