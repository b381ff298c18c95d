"""What a searched quantizer keeps of the values it observes: exact order statistics in the tails plus a sample.

Range searches (percentile candidates, MSE grids) need two things from calibration data: high quantiles such as
0.9999 / 0.99999, and values to measure quantization error on. A fixed random sample per call cannot resolve the
first: 16,384 values hold no information about the 0.99999 quantile. ``ObservedValues`` therefore keeps, per row:
  - every value while the row has seen at most ``capacity`` values (quantiles and errors are then exact: the same
    as computing them on the concatenated calibration tensors, as the official RepQ-ViT / I&S-ViT code does);
  - beyond that, a uniform random sample of ``capacity`` values (random keys, the smallest kept: every value seen
    has the same chance whatever call it came in) for the error, plus the exact ``tail`` largest and smallest
    values, so a quantile whose rank falls within the tails stays exact.
Quantiles interpolate linearly between order statistics (``torch.quantile``'s definition, with the rank computed
in double precision, so they can differ from float32 ``torch.quantile`` by about 1e-5 relative).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

logger = logging.getLogger(__name__)
CAPACITY = 1 << 21  # values kept in all rows together before sampling starts (8 MiB of float32, plus keys)
MIN_PER_ROW = 1024
TAIL_FRACTION = 8  # tails keep capacity / 8 values per row and side


class ObservedValues:
    """Observed values of ``rows`` rows (each ``add`` brings the same number of values to every row).

    Args:
        rows: number of rows (1 for per-tensor quantizers).
        capacity: values kept in all rows together before a row is sampled (at least ``MIN_PER_ROW`` per row).
        seed: seed of the sampling keys.
    """

    def __init__(self, rows: int, capacity: int = CAPACITY, seed: int = 0) -> None:
        self.per_row = max(capacity // max(rows, 1), MIN_PER_ROW)
        self.tail = max(self.per_row // TAIL_FRACTION, 1)
        self.count = 0
        self.seed = seed
        self._values: Tensor | None = None
        self._keys: Tensor | None = None
        self._top: Tensor | None = None  # descending, exact once sampling started
        self._bottom: Tensor | None = None  # ascending
        self._gen: torch.Generator | None = None

    @property
    def exact(self) -> bool:
        """Whether every observed value is kept."""
        return self.count <= self.per_row

    @property
    def values(self) -> Tensor:
        """(rows, k) observed values: all of them while ``exact``, else a uniform random sample."""
        if self._values is None:
            raise RuntimeError("no values observed")
        return self._values

    def add(self, rows: Tensor) -> None:
        """Observe ``rows`` (rows, m)."""
        rows = rows.detach().float()
        if self._values is not None and rows.shape[0] != self._values.shape[0]:
            raise ValueError(f"expected {self._values.shape[0]} rows, got {rows.shape[0]}")
        was_exact = self.exact
        self.count += rows.shape[1]
        if self._values is None:
            self._values = rows
        elif self.exact or was_exact:
            self._values = torch.cat([self._values, rows], dim=1)
        if self.exact:
            return
        if was_exact:  # first overflow: everything seen is in _values, so tails and keys start exact
            self._top = self._bottom = None
            self._tails(self._values)
            self._keys = self._random(self._values)
            self._thin()
            return
        self._tails(rows)
        self._values = torch.cat([self._values, rows], dim=1)
        self._keys = torch.cat([self._keys, self._random(rows)], dim=1)
        self._thin()

    def _random(self, like: Tensor) -> Tensor:
        if self._gen is None or self._gen.device != like.device:
            self._gen = torch.Generator(device=like.device).manual_seed(self.seed)
        return torch.rand(like.shape, generator=self._gen, device=like.device)

    def _thin(self) -> None:
        """Keep the ``per_row`` values with the smallest keys (a uniform sample of everything seen)."""
        if self._values.shape[1] > self.per_row:
            keep = self._keys.topk(self.per_row, dim=1, largest=False).indices
            self._values, self._keys = self._values.gather(1, keep), self._keys.gather(1, keep)

    def _tails(self, rows: Tensor) -> None:
        top = rows if self._top is None else torch.cat([self._top, rows], dim=1)
        bottom = rows if self._bottom is None else torch.cat([self._bottom, rows], dim=1)
        k = min(self.tail, top.shape[1])
        self._top = top.topk(k, dim=1).values
        self._bottom = bottom.topk(k, dim=1, largest=False).values

    def _at(self, rank: int) -> Tensor | None:
        """The exact order statistic of ascending ``rank`` (0-based) per row, or None when it was not kept."""
        if self.exact:
            return self._values.kthvalue(rank + 1, dim=1).values
        if self.count - 1 - rank < self._top.shape[1]:
            return self._top[:, self.count - 1 - rank]
        if rank < self._bottom.shape[1]:
            return self._bottom[:, rank]
        return None

    def quantile(self, p: float) -> Tensor:
        """Per row, the ``p`` quantile of everything observed (linear interpolation, like ``torch.quantile``).

        Exact while every value is kept or the rank lies in the kept tails; otherwise the sample's quantile.
        """
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {p}")
        pos = p * (self.count - 1)
        below = int(pos)
        above = min(below + 1, self.count - 1) if pos > below else below
        lo, hi = self._at(below), self._at(above)
        if lo is None or hi is None:
            logger.debug("quantile %g of %d values estimated from a %d-value sample", p, self.count, self.per_row)
            return torch.quantile(self._values, p, dim=1)
        return (lo.double() + (pos - below) * (hi.double() - lo.double())).to(lo.dtype)
