"""Shared machinery of the per-tensor quantizers whose parameters come from a search over observed values.

``SearchedQuantizer`` keeps, while observing, the exact running minimum and maximum plus the observed values
(``ObservedValues``: all of them up to its capacity, so quantiles and errors are those of the whole calibration
set, then a uniform sample with exact tails; post-softmax tensors hold millions of entries per batch), and hands
them to ``search`` on ``fit``.
Subclasses (log2, shift-uniform-log2, tangent, twin-uniform) store the result in buffers made in ``__init__``.
These quantizers are per tensor and static; they keep no per-timestep state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import torch
from torch import Tensor

from visq.quantizers.base import Quantizer, QuantSpec, SiteShape
from visq.quantizers.observed import ObservedValues

T = TypeVar("T")
TINY = 1e-12


def ste(x: Tensor, x_hat: Tensor) -> Tensor:
    """``x_hat`` in the forward, identity gradient to ``x`` in the backward (straight-through estimator).

    Written as ``x_hat + (x - x)`` rather than ``x + (x_hat - x)`` so the forward value is exactly ``x_hat``;
    the result has ``x``'s dtype whatever the buffers' dtype.
    """
    return x_hat.detach().to(x.dtype) + (x - x.detach())


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
        self._observed: ObservedValues | None = None
        self._lo: Tensor | None = None
        self._hi: Tensor | None = None

    def observe(self, x: Tensor) -> None:
        """Track the exact range and the observed values of ``x``."""
        x = x.detach().float()
        lo, hi = x.min(), x.max()
        self._lo = lo if self._lo is None else torch.minimum(self._lo, lo)
        self._hi = hi if self._hi is None else torch.maximum(self._hi, hi)
        if self._observed is None:
            self._observed = ObservedValues(1)
        self._observed.add(x.reshape(1, -1))

    def fit(self) -> None:
        """Run the subclass search on what was observed; raises if nothing was."""
        if self._observed is None:
            raise RuntimeError(
                f"{type(self).__name__} saw no calibration data: the calibration run never reached this quantizer"
            )
        with torch.no_grad():
            self.search(self._observed.values[0], self._lo, self._hi)
        self._observed, self._lo, self._hi = None, None, None

    def quantile(self, p: float) -> Tensor:
        """The ``p`` quantile of everything observed (valid inside ``search``)."""
        return self._observed.quantile(p)[0]

    def search(self, values: Tensor, lo: Tensor, hi: Tensor) -> None:  # pragma: no cover - interface
        """Set the buffers from the observed ``values`` (all, or a uniform sample) and the exact range [lo, hi]."""
        raise NotImplementedError
