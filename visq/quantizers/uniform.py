"""Uniform affine quantizer: per tensor, channel, token or group; symmetric or asymmetric; minmax, percentile or MSE.

Equations (research/vit_methods.md 1.1):
    q = clamp(round(x / s) + z, qmin, qmax),   x_hat = (q - z) * s
    asymmetric: s = (u - l) / (2^b - 1), z = round(-l / s), q in [0, 2^b - 1]
    symmetric:  s = max(|l|, |u|) / (2^(b-1) - 1), z = 0, q in [-2^(b-1), 2^(b-1) - 1]
``include_zero`` (the default) widens an asymmetric range to contain 0 (l <= 0 <= u), so 0 is exact and z lies on
the grid. Without it the searched [l, u] is used as is, as the official RepQ-ViT / I&S-ViT quantizers do: an
all-positive channel such as [16.6, 39.9] then gets the step (u - l) / (2^b - 1), and z = round(-l / s) may fall
outside [qmin, qmax] (it is not clamped; only the codes are).
Range rules for (l, u): ``minmax``; ``percentile`` picks, per row, the candidate percentile with the lowest
quantization MSE (RepQ-ViT / I&S-ViT ``quant/quantizer.py``); ``mse`` shrinks the min-max range by
alpha in {1.0, 0.99, ..., 0.11} and keeps the lowest MSE per row (FQ-ViT's OMSE grid; on weights, the clipping
search of the PTQ literature). Quantiles and errors are computed on ``ObservedValues`` (exact for calibration sets
up to its capacity, exact tails beyond).
``dynamic`` specs (granularity "token" or "tensor") take the min / max of each token (or of the whole tensor) at
run time and keep no calibrated state (torchao's dynamic activation scheme; ``symmetric=True`` gives its
absmax / 127 form).
Weight groups (granularity "group") hold ``group_size`` consecutive input elements of one output channel; for a
convolution weight (out, in, kh, kw) a group is ``group_size`` input channels at one kernel position (the K
order of a channels-last im2col), so ``group_size`` must divide ``in``. ``flat_groups`` keeps the layout of
visq <= 0.1 (groups of consecutive elements of the flattened (in, kh, kw) kernel); quant.json files written
before the option existed load with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from visq.guard import check_int
from visq.quantizers.base import Quantizer, QuantSpec, SiteShape, register, round_ste
from visq.quantizers.observed import ObservedValues

GRANULARITIES = ("tensor", "channel", "token", "group")
RANGES = ("minmax", "percentile", "mse")
_EPS = 1e-8
MSE_ALPHAS = torch.linspace(1.0, 0.11, 90).tolist()  # shrink factors of the "mse" rule


@dataclass(frozen=True)
class Uniform(QuantSpec):
    """Uniform affine quantization settings.

    Attributes:
        bits: bit width, 1-16.
        symmetric: signed grid with zero point 0, else unsigned grid with an integer zero point.
        granularity: one scale per "tensor", per "channel", per "token" (dynamic only) or per "group" of weights.
        group_size: elements per group along the input dimension (granularity "group" only).
        range: how a static clipping range is chosen: "minmax", "percentile" or "mse".
        percentiles: candidates tried by the "percentile" rule.
        per_timestep: keep one range per denoiser timestep (diffusion activations).
        include_zero: widen asymmetric ranges to contain 0 (False: use the searched range as is, RepQ-ViT style).
        dynamic: ranges from each input at run time (per "token" or per "tensor"); nothing is calibrated.
        flat_groups: legacy convolution weight groups over the flattened kernel (see the module doc).
    """

    kind: ClassVar[str] = "uniform"
    bits: int = 8
    symmetric: bool = False
    granularity: str = "tensor"
    group_size: int = 0
    range: str = "minmax"
    percentiles: tuple[float, ...] = (0.999, 0.9999, 0.99999)
    per_timestep: bool = False
    include_zero: bool = True
    dynamic: bool = False
    flat_groups: bool = False

    def __post_init__(self) -> None:
        check_int("bits", self.bits, 1, 16)
        if self.symmetric and self.bits < 2:  # a signed 1-bit grid has no positive level: scale max|x| / 0
            raise ValueError("symmetric grids need bits >= 2 (1 bit leaves no positive level); use bits >= 2 or "
                             "symmetric=False")
        check_int("group_size", self.group_size, 0)
        if not self.percentiles or not all(0.5 < p <= 1 for p in self.percentiles):
            raise ValueError(f"percentiles must be upper-tail fractions in (0.5, 1], e.g. (0.999, 0.9999), got "
                             f"{self.percentiles!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.range not in RANGES:
            raise ValueError(f"range must be one of {RANGES}, got {self.range!r}")
        if (self.granularity == "group") != (self.group_size > 0):
            raise ValueError("group_size > 0 goes with granularity='group' and only with it")
        if self.granularity == "token" and not self.dynamic:
            raise ValueError(
                "per-token ranges are only known at run time: use Uniform(dynamic=True, granularity='token')"
            )
        if self.dynamic:
            self._check_dynamic()

    def _check_dynamic(self) -> None:
        if self.granularity not in ("token", "tensor"):
            raise ValueError(f"dynamic ranges are per 'token' or per 'tensor', not per {self.granularity!r}")
        if self.per_timestep:
            raise ValueError("dynamic ranges are taken at run time; per_timestep does not apply")
        if self.range != "minmax":
            raise ValueError(f"dynamic ranges are the run-time min / max; range={self.range!r} does not apply")

    @classmethod
    def upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Fields of a spec written before ``dynamic`` existed: per-token meant dynamic, conv groups were flat."""
        if "dynamic" in data:
            return data
        granularity = data.get("granularity")
        return {**data, "dynamic": granularity == "token", "flat_groups": granularity == "group"}

    @property
    def qrange(self) -> tuple[int, int]:
        """Integer grid limits (qmin, qmax)."""
        if self.symmetric:
            return -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        return 0, 2**self.bits - 1

    def short(self) -> str:
        parts = [f"int{self.bits}", "sym" if self.symmetric else "asym", self.granularity]
        if self.group_size:
            parts[-1] = f"group{self.group_size}"
        if self.dynamic:
            parts.append("dynamic")
        else:
            parts.append(self.range)
        if not self.include_zero and not self.symmetric:
            parts.append("free-range")
        if self.per_timestep:
            parts.append("per-timestep")
        return " ".join(parts)


def fake_quantize(x: Tensor, scale: Tensor, zero: Tensor, qmin: int, qmax: int) -> Tensor:
    """Quantize-dequantize with a straight-through gradient inside the grid (zero outside: clamp).

    The result has ``x``'s dtype whatever the buffers' dtype (a bf16 model keeps bf16 activations).
    """
    q = torch.clamp(round_ste(x / scale) + zero, qmin, qmax)
    return ((q - zero) * scale).to(x.dtype)


def range_to_params(lo: Tensor, hi: Tensor, spec: Uniform) -> tuple[Tensor, Tensor]:
    """Scale and zero point that map the range [lo, hi] onto the spec's integer grid."""
    qmin, qmax = spec.qrange
    if spec.symmetric:
        amax = torch.maximum(-lo, hi).clamp_min(_EPS)
        return amax / qmax, torch.zeros_like(amax)
    if spec.include_zero:
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    scale = (hi - lo).clamp_min(_EPS) / (qmax - qmin)
    zero = torch.round(-lo / scale)  # on the grid when 0 is in range; free otherwise (official RepQ / I&S code)
    return scale, zero


def params_to_range(scale: Tensor, zero: Tensor, spec: Uniform) -> tuple[Tensor, Tensor]:
    """The range [lo, hi] that ``range_to_params`` maps back onto (scale, zero): the grid's represented span."""
    qmin, qmax = spec.qrange
    if spec.symmetric:
        return -qmax * scale, qmax * scale
    return (qmin - zero) * scale, (qmax - zero) * scale


@register(Uniform)
class UniformQuantizer(Quantizer):
    """Fake-quantizer for ``Uniform`` specs. Buffers ``scale`` / ``zero_point`` have one entry per row
    (tensor: 1, channel: C, group: C * groups), with a leading timestep dimension when temporal."""

    def __init__(self, spec: Uniform, site: SiteShape) -> None:
        super().__init__(spec, site)
        self.spec: Uniform = spec
        rows = self._num_rows()
        shape = (len(site.timesteps), rows) if spec.per_timestep else (rows,)
        self.register_buffer("scale", torch.ones(shape))
        self.register_buffer("zero_point", torch.zeros(shape))
        self._stats: dict[int, dict[str, object]] = {}

    def _num_rows(self) -> int:
        spec, site = self.spec, self.site
        if spec.dynamic:
            return 0
        if spec.granularity == "channel":
            return site.channels
        if spec.granularity == "group":
            return site.channels * (site.numel_per_channel // self._check_groups())
        return 1

    def _check_groups(self) -> int:
        spec, site = self.spec, self.site
        if site.role != "weight":
            raise ValueError("group granularity applies to weights only")
        if self._conv_groups():
            inputs = site.numel_per_channel // site.kernel
            if inputs % spec.group_size:
                raise ValueError(
                    f"group_size {spec.group_size} does not divide the {inputs} input channels of this convolution "
                    "(groups run along input channels at each kernel position); pick a divisor or use per-channel "
                    "weights"
                )
        elif site.numel_per_channel % spec.group_size:
            raise ValueError(
                f"group_size {spec.group_size} does not divide the {site.numel_per_channel} input elements "
                "per output channel; pick a divisor or use per-channel weights"
            )
        return spec.group_size

    def _conv_groups(self) -> bool:
        """Whether groups run along the input channels of a convolution kernel (not the flattened kernel)."""
        return self.site.kernel > 1 and not self.spec.flat_groups

    # -- views -------------------------------------------------------------------------------------------------
    def _rows(self, x: Tensor) -> Tensor:
        """View ``x`` as (rows, elements) where each row shares one scale."""
        g = self.spec.granularity
        if g == "tensor":
            return x.reshape(1, -1)
        if g == "group":
            if self._conv_groups():  # (out, in, kh, kw) -> (out, kh, kw, in): groups of input channels
                x = x.permute(0, *range(2, x.ndim), 1)
            return x.reshape(-1, self.spec.group_size)
        axis = self.site.axis % x.ndim
        if x.shape[axis] != self.site.channels:
            raise ValueError(f"expected {self.site.channels} channels on axis {axis}, got shape {tuple(x.shape)}")
        return x.movedim(axis, 0).reshape(self.site.channels, -1)

    def _current(self) -> tuple[Tensor, Tensor]:
        if self.spec.per_timestep:
            i = self.slot()
            return self.scale[i], self.zero_point[i]
        return self.scale, self.zero_point

    # -- forward -----------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        qmin, qmax = self.spec.qrange
        g = self.spec.granularity
        if self.spec.dynamic:
            dims = -1 if g == "token" else tuple(range(x.ndim))
            lo = x.detach().amin(dim=dims, keepdim=True)
            hi = x.detach().amax(dim=dims, keepdim=True)
            return fake_quantize(x, *range_to_params(lo, hi, self.spec), qmin, qmax)
        scale, zero = self._current()
        if g == "tensor":
            return fake_quantize(x, scale.reshape(()), zero.reshape(()), qmin, qmax)
        if g == "group":
            rows = self._rows(x)
            y = fake_quantize(rows, scale[:, None], zero[:, None], qmin, qmax)
            if not self._conv_groups():
                return y.reshape(x.shape)
            permuted = (x.shape[0], *x.shape[2:], x.shape[1])
            return y.reshape(permuted).permute(0, x.ndim - 1, *range(1, x.ndim - 1))
        shape = [1] * x.ndim
        shape[self.site.axis % x.ndim] = self.site.channels
        return fake_quantize(x, scale.reshape(shape), zero.reshape(shape), qmin, qmax)

    # -- calibration -------------------------------------------------------------------------------------------
    def observe(self, x: Tensor) -> None:
        """Accumulate the exact running range (and the observed values for percentile / MSE search)."""
        if self.spec.dynamic:
            return
        rows = self._rows(x.detach().float())
        slot = self.slot() if self.spec.per_timestep else 0
        stats = self._stats.setdefault(slot, {"lo": None, "hi": None, "values": None})
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
        stats["lo"] = lo if stats["lo"] is None else torch.minimum(stats["lo"], lo)
        stats["hi"] = hi if stats["hi"] is None else torch.maximum(stats["hi"], hi)
        if self.spec.range != "minmax":
            if stats["values"] is None:
                stats["values"] = ObservedValues(rows.shape[0], seed=slot)
            stats["values"].add(rows)

    def fit(self) -> None:
        """Turn observed statistics into ``scale`` / ``zero_point``; raises if nothing was observed."""
        if self.spec.dynamic:
            return
        expected = len(self.site.timesteps) if self.spec.per_timestep else 1
        missing = expected - len(self._stats)
        if missing:
            raise RuntimeError(
                f"{missing} of {expected} calibration slots saw no data: the calibration run never reached this "
                "quantizer (a fused path bypassing it, or timesteps missing from the calibration set)"
            )
        for slot, stats in self._stats.items():
            scale, zero = self._search(stats)
            target = (self.scale[slot], self.zero_point[slot]) if self.spec.per_timestep else (
                self.scale, self.zero_point)
            target[0].copy_(scale)
            target[1].copy_(zero)
        self._stats = {}

    def _search(self, stats: dict[str, object]) -> tuple[Tensor, Tensor]:
        lo, hi = stats["lo"], stats["hi"]
        if self.spec.range == "minmax":
            return range_to_params(lo, hi, self.spec)
        observed: ObservedValues = stats["values"]
        if self.spec.range == "percentile":
            candidates = [(observed.quantile(1 - p), observed.quantile(p)) for p in self.spec.percentiles]
        else:
            candidates = [(lo * a, hi * a) for a in MSE_ALPHAS]
        return self._lowest_error(observed.values, candidates)

    def _lowest_error(self, samples: Tensor, candidates: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """Per row, the (scale, zero) of the candidate range with the lowest quantization MSE."""
        qmin, qmax = self.spec.qrange
        best_err = best_scale = best_zero = None
        for lo, hi in candidates:
            scale, zero = range_to_params(lo, hi, self.spec)
            err = (fake_quantize(samples, scale[:, None], zero[:, None], qmin, qmax) - samples).pow(2).mean(dim=1)
            if best_err is None:
                best_err, best_scale, best_zero = err, scale, zero
                continue
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_scale = torch.where(better, scale, best_scale)
            best_zero = torch.where(better, zero, best_zero)
        return best_scale, best_zero
