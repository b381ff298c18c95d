"""LSQ / LSQ+: uniform quantizers with a learnable step size (and offset), for quantization-aware training.

Equations (research/vit_methods.md 1.2; Esser et al. 2020, Bhalgat et al. 2020):
    x_hat = round(clamp((x - beta) / s, -Q_N, Q_P)) * s + beta        (beta = 0 without ``offset``)
    d x_hat / d s = round(v) - v inside the grid (v = (x - beta) / s), -Q_N below it, Q_P above it
    d x_hat / d beta = 0 inside the grid, 1 outside;  d x_hat / d x = 1 inside, 0 outside (straight through)
    the step's gradient is scaled by g = 1 / sqrt(N * Q_P), N = elements sharing one step (per sample for
    activations: features of one sample; for weights: the weights of the row)
    signed grid: Q_N = 2^(b-1), Q_P = 2^(b-1) - 1; unsigned: Q_N = 0, Q_P = 2^b - 1
The step is clipped at >= 1e-5 (zero gradient below), as OFQ's code does; the offset's gradient is not scaled.
Initialisation (``init``), from calibration (``observe`` / ``fit``, before the optimizer is built):
    "lsq": s = 2 mean|x| / sqrt(Q_P) (the paper; OFQ doubles it for unsigned grids), beta = 0 (or min x with offset)
    "minmax": the observed range mapped onto the grid
    "mse": the min-max range shrunk by alpha in {1.0, 0.99, ..., 0.11}, lowest quantization MSE per row (LSQ+
    suggests an MSE init; this is the grid of the uniform quantizer's "mse" rule)
Granularity: one step per tensor, or per channel along the site's axis (weights: output channels). OFQ's code
uses per-token-position steps for activations; visq uses per tensor / per channel so token counts may vary.
``per_timestep`` keeps one step (and offset) per denoiser timestep (a temporal table, as TALSQ).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from visq.quantizers.base import Quantizer, QuantSpec, SiteShape, register, round_ste

INITS = ("lsq", "minmax", "mse")
GRANULARITIES = ("tensor", "channel")
MIN_STEP = 1e-5
MSE_ALPHAS = torch.linspace(1.0, 0.11, 90).tolist()
SAMPLE_PER_ROW = 1 << 14  # calibration values kept per row (and per call) for the MSE init


@dataclass(frozen=True)
class LSQ(QuantSpec):
    """Learnable-step quantization settings.

    Attributes:
        bits: bit width, 2-16.
        signed: grid -2^(b-1)..2^(b-1)-1 (else 0..2^b-1).
        granularity: one step per "tensor" or per "channel" (along the site's channel axis).
        offset: learn an offset beta as well (LSQ+), for asymmetric activations.
        init: how ``fit`` initialises the step from calibration: "lsq", "minmax" or "mse".
        per_timestep: one step / offset per denoiser timestep (diffusion activations).
    """

    kind: ClassVar[str] = "lsq"
    bits: int = 4
    signed: bool = True
    granularity: str = "tensor"
    offset: bool = False
    init: str = "mse"
    per_timestep: bool = False

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 16:
            raise ValueError(f"LSQ bits must be in 2..16, got {self.bits}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"LSQ granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.init not in INITS:
            raise ValueError(f"LSQ init must be one of {INITS}, got {self.init!r}")

    @property
    def qrange(self) -> tuple[int, int]:
        """(Q_N, Q_P): the grid is -Q_N..Q_P."""
        if self.signed:
            return 2 ** (self.bits - 1), 2 ** (self.bits - 1) - 1
        return 0, 2**self.bits - 1

    def short(self) -> str:
        parts = [f"int{self.bits}", "signed" if self.signed else "unsigned", self.granularity, "lsq+" if self.offset
                 else "lsq", f"init {self.init}"]
        if self.per_timestep:
            parts.append("per-timestep")
        return " ".join(parts)


def scale_grad(x: Tensor, g: float) -> Tensor:
    """``x`` in the forward, its gradient multiplied by ``g`` in the backward."""
    return (x - x * g).detach() + x * g


def lsq_quantize(x: Tensor, step: Tensor, offset: Tensor | None, q_n: int, q_p: int, g: float) -> Tensor:
    """The LSQ(+) fake-quantizer; ``step`` / ``offset`` broadcast against ``x`` (module doc for the gradients)."""
    s = scale_grad(step, g)
    s = s.clamp_min(MIN_STEP)
    shifted = x - offset if offset is not None else x
    y = round_ste(torch.clamp(shifted / s, -q_n, q_p)) * s
    return (y + offset if offset is not None else y).to(x.dtype)


@register(LSQ)
class LSQQuantizer(Quantizer):
    """Fake-quantizer for ``LSQ`` specs: parameter ``step`` (and ``offset``), one entry per row (1 or channels),
    with a leading timestep dimension when temporal. Without ``offset`` the offset is a zero buffer."""

    def __init__(self, spec: LSQ, site: SiteShape) -> None:
        super().__init__(spec, site)
        self.spec: LSQ = spec
        rows = site.channels if spec.granularity == "channel" else 1
        shape = (len(site.timesteps), rows) if spec.per_timestep else (rows,)
        self.step = nn.Parameter(torch.ones(shape))
        if spec.offset:
            self.offset = nn.Parameter(torch.zeros(shape))
        else:
            self.register_buffer("offset", torch.zeros(shape))
        self._stats: dict[int, dict[str, Tensor]] = {}

    # -- views -------------------------------------------------------------------------------------------------
    def _rows(self, x: Tensor) -> Tensor:
        if self.spec.granularity == "tensor":
            return x.reshape(1, -1)
        axis = self.site.axis % x.ndim
        if x.shape[axis] != self.site.channels:
            raise ValueError(f"expected {self.site.channels} channels on axis {axis}, got shape {tuple(x.shape)}")
        return x.movedim(axis, 0).reshape(self.site.channels, -1)

    def _broadcast(self, p: Tensor, x: Tensor) -> Tensor:
        if self.spec.granularity == "tensor":
            return p.reshape(())
        shape = [1] * x.ndim
        shape[self.site.axis % x.ndim] = self.site.channels
        return p.reshape(shape)

    def current(self) -> tuple[Tensor, Tensor]:
        """(step, offset) in use now (the current timestep's row when temporal)."""
        if self.spec.per_timestep:
            i = self.slot()
            return self.step[i], self.offset[i]
        return self.step, self.offset

    def grad_scale(self, x: Tensor) -> float:
        """LSQ's g = 1 / sqrt(N * Q_P), N = elements of ``x`` sharing one step (per sample for activations)."""
        rows = self.site.channels if self.spec.granularity == "channel" else 1
        per_step = x.numel() // rows
        if self.site.role == "activation" and x.ndim > 1:
            per_step //= x.shape[0]
        return 1.0 / (max(per_step, 1) * self.spec.qrange[1]) ** 0.5

    # -- forward -----------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        q_n, q_p = self.spec.qrange
        step, offset = self.current()
        off = self._broadcast(offset, x) if self.spec.offset else None
        return lsq_quantize(x, self._broadcast(step, x), off, q_n, q_p, self.grad_scale(x))

    @property
    def code_range(self) -> tuple[int, int]:
        """Smallest and largest integer code."""
        q_n, q_p = self.spec.qrange
        return -q_n, q_p

    def pre_round(self, x: Tensor) -> Tensor:
        """The value rounded to the integer code: ``clamp((x - beta) / s, -Q_N, Q_P)`` (no gradient)."""
        q_n, q_p = self.spec.qrange
        step, offset = self.current()
        step = self._broadcast(step.detach(), x).clamp_min(MIN_STEP)
        return torch.clamp((x.detach() - self._broadcast(offset.detach(), x)) / step, -q_n, q_p)

    def codes(self, x: Tensor) -> Tensor:
        """Integer codes of ``x`` in -Q_N..Q_P (oscillation tracking)."""
        return torch.round(self.pre_round(x))

    # -- calibration -------------------------------------------------------------------------------------------
    def observe(self, x: Tensor) -> None:
        """Accumulate the range, mean |x| and a sample of values (for the MSE init) of each row."""
        rows = self._rows(x.detach().float())
        slot = self.slot() if self.spec.per_timestep else 0
        stats = self._stats.setdefault(slot, {})
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
        stats["lo"] = torch.minimum(stats["lo"], lo) if "lo" in stats else lo
        stats["hi"] = torch.maximum(stats["hi"], hi) if "hi" in stats else hi
        stats["abs_sum"] = stats.get("abs_sum", 0) + rows.abs().sum(dim=1)
        stats["count"] = stats.get("count", 0) + rows.shape[1]
        if self.spec.init == "mse":
            keep = rows
            if rows.shape[1] > SAMPLE_PER_ROW:  # a fixed, evenly spread subsample keeps this deterministic
                keep = rows[:, torch.linspace(0, rows.shape[1] - 1, SAMPLE_PER_ROW).long()]
            stats["values"] = torch.cat([stats["values"], keep], dim=1) if "values" in stats else keep

    def fit(self) -> None:
        """Initialise ``step`` (and ``offset``) from the observed statistics; raises if nothing was observed."""
        expected = len(self.site.timesteps) if self.spec.per_timestep else 1
        if len(self._stats) != expected:
            raise RuntimeError(
                f"{expected - len(self._stats)} of {expected} calibration slots saw no data: the calibration run "
                "never reached this quantizer (a fused path bypassing it, or timesteps missing from calibration)"
            )
        with torch.no_grad():
            for slot, stats in self._stats.items():
                step, offset = self._init(stats)
                target_step = self.step[slot] if self.spec.per_timestep else self.step
                target_off = self.offset[slot] if self.spec.per_timestep else self.offset
                target_step.copy_(step.clamp_min(MIN_STEP))
                target_off.copy_(offset)
        self._stats = {}

    def _init(self, stats: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        q_n, q_p = self.spec.qrange
        lo, hi = stats["lo"], stats["hi"]
        if self.spec.init == "lsq":
            factor = 2.0 if self.spec.signed else 4.0  # OFQ's code doubles the unsigned init
            step = factor * (stats["abs_sum"] / stats["count"]) / q_p**0.5
            return step, lo.clone() if self.spec.offset else torch.zeros_like(lo)
        if self.spec.init == "minmax":
            return self._from_range(lo, hi)
        return self._lowest_error(stats["values"], lo, hi)

    def _from_range(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """(step, offset) mapping [lo, hi] onto the grid (without offset: the grid's side(s) that fit the range)."""
        q_n, q_p = self.spec.qrange
        if self.spec.offset:
            step = (hi - lo).clamp_min(MIN_STEP) / (q_n + q_p)
            return step, lo + q_n * step
        if self.spec.signed:
            return torch.maximum(-lo / q_n, hi / q_p).clamp_min(MIN_STEP), torch.zeros_like(lo)
        return (hi / q_p).clamp_min(MIN_STEP), torch.zeros_like(lo)

    def _lowest_error(self, values: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        q_n, q_p = self.spec.qrange
        best = None
        for alpha in MSE_ALPHAS:
            step, offset = self._from_range(lo * alpha, hi * alpha)
            x_hat = lsq_quantize(values, step[:, None], offset[:, None], q_n, q_p, 1.0)
            err = (x_hat - values).pow(2).mean(dim=1)
            if best is None:
                best = (err, step, offset)
                continue
            better = err < best[0]
            best = tuple(torch.where(better, new, old) for new, old in zip((err, step, offset), best))
        return best[1], best[2]
