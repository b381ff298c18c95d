"""Weight oscillation during quantization-aware training: tracking, CGA freezing, and a plot.

Oscillation tracking (research/vit_methods.md 5.2; Nagel et al. 2022, OFQ's ``TrackOscillation``), per weight,
after every optimizer update t:
    delta_t = round(q_{t-1} - q_t) in {-1, 0, 1}          (integer code change)
    osc_t   = 1[sign(delta_t) * last_nonzero_sign = -1]    (the code switched back)
    f_t     = m * osc_t + (1 - m) * f_{t-1},  m = 0.01     (EMA oscillation frequency)
A weight counts as oscillating when f_t > threshold. [RECON] The paper's threshold was not found; the official
code says a threshold "should be at least 2-3x the momentum", so visq uses 0.02 by default.
CGA (confidence-guided annealing, spec 5.3): a weight is low-confidence when its pre-round value b lies within
``boundary_range`` (integer units) of a rounding threshold i + 0.5 between two codes of the grid; every other
weight is frozen: its gradient is zeroed before the optimizer step and its value restored after it (AdamW's decay
and momentum would move it otherwise), so frozen weights stay bit-identical.
Weights without a leaf parameter (QKR's q-k product) are tracked but not frozen; OFQ's code does not freeze them
either (its attempt is a no-op).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

DEFAULT_MOMENTUM = 0.01
DEFAULT_THRESHOLD = 0.02  # [RECON]


def quantized_weights(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, layer) of every layer whose weight quantizer exposes integer codes (LSQ, StatsQ)."""
    return [
        (path, m) for path, m in model.named_modules()
        if hasattr(getattr(m, "weight_quantizer", None), "codes")
    ]


class OscillationTracker(nn.Module):
    """Per-weight oscillation statistics of ``model``'s quantized weights; its buffers hold the whole state.

    The model's layers are referenced, not owned: the tracker's ``state_dict`` holds only its statistics.
    """

    def __init__(self, model: nn.Module, momentum: float = DEFAULT_MOMENTUM,
                 threshold: float = DEFAULT_THRESHOLD) -> None:
        super().__init__()
        layers = quantized_weights(model)
        if not layers:
            raise ValueError("the model has no LSQ / StatsQ weight quantizers to track (quantize it with method "
                             "'lsq' or 'ofq' first)")
        self.names = [name for name, _ in layers]
        self._layers = [layer for _, layer in layers]  # a plain list: not submodules
        self.momentum, self.threshold = momentum, threshold
        with torch.no_grad():
            for i, layer in enumerate(self._layers):
                code = layer.weight_quantizer.codes(layer.weight)
                self.register_buffer(f"code_{i}", code.clone())
                self.register_buffer(f"direction_{i}", torch.zeros_like(code))
                self.register_buffer(f"ema_{i}", torch.zeros_like(code))

    def _state(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        return getattr(self, f"code_{i}"), getattr(self, f"direction_{i}"), getattr(self, f"ema_{i}")

    @torch.no_grad()
    def update(self) -> dict[str, float]:
        """Record one optimizer update; returns ``osc_frac`` (EMA above threshold), ``osc_ema`` (mean EMA) and
        ``flip_frac`` (codes that changed in this update), over all tracked weights."""
        total = oscillating = flipped = ema_sum = 0.0
        for i, layer in enumerate(self._layers):
            code, direction, ema = self._state(i)
            new = layer.weight_quantizer.codes(layer.weight)
            step_dir = torch.sign(torch.round(code - new))
            switched = step_dir != 0
            reversed_ = (direction * step_dir) == -1
            ema.mul_(1 - self.momentum).add_(self.momentum * reversed_.to(ema.dtype))
            direction.copy_(torch.where(switched, step_dir, direction))
            code.copy_(new)
            total += code.numel()
            oscillating += float((ema > self.threshold).sum())
            flipped += float(switched.sum())
            ema_sum += float(ema.sum())
        return {"osc_frac": oscillating / total, "osc_ema": ema_sum / total, "flip_frac": flipped / total}

    def per_layer(self) -> dict[str, float]:
        """Fraction of oscillating weights per tracked layer."""
        return {name: float((self._state(i)[2] > self.threshold).float().mean()) for i, name in enumerate(self.names)}


def low_confidence(quantizer: nn.Module, weight: Tensor, boundary_range: float) -> Tensor:
    """Mask of weights whose pre-round value lies within ``boundary_range`` of an interior rounding threshold."""
    b = quantizer.pre_round(weight)
    lo, hi = quantizer.code_range
    below = torch.floor(b)  # the nearest threshold is below + 0.5, between codes ``below`` and ``below + 1``
    return ((b - below - 0.5).abs() <= boundary_range) & (below >= lo) & (below <= hi - 1)


class CGA:
    """Confidence-guided annealing over ``model``'s quantized leaf weights (module doc).

    Call ``mask_gradients`` after the backward pass and before the optimizer step, ``restore`` after it.
    """

    def __init__(self, model: nn.Module, boundary_range: float = 0.005) -> None:
        if boundary_range <= 0:
            raise ValueError(f"boundary_range must be positive, got {boundary_range}")
        self.boundary_range = boundary_range
        self.layers = [
            (name, layer) for name, layer in quantized_weights(model)
            if hasattr(layer.weight_quantizer, "pre_round") and isinstance(layer.weight, nn.Parameter)
            and layer.weight.requires_grad
        ]
        if not self.layers:
            raise ValueError("CGA found no trainable quantized weights (LSQ / StatsQ on a weight parameter)")
        self._frozen: list[tuple[nn.Parameter, Tensor, Tensor]] = []

    @torch.no_grad()
    def mask_gradients(self) -> dict[str, float]:
        """Zero the gradients of the confident weights and remember their values; returns ``frozen_frac``."""
        self._frozen, frozen, total = [], 0, 0
        for _, layer in self.layers:
            weight = layer.weight
            mask = ~low_confidence(layer.weight_quantizer, weight, self.boundary_range)
            if weight.grad is not None:
                weight.grad.masked_fill_(mask, 0.0)
            self._frozen.append((weight, mask, weight.detach().clone()))
            frozen += int(mask.sum())
            total += mask.numel()
        return {"frozen_frac": frozen / total}

    @torch.no_grad()
    def restore(self) -> None:
        """Put the frozen weights back to their values before the optimizer step."""
        for weight, mask, before in self._frozen:
            weight.copy_(torch.where(mask, before, weight))
        self._frozen = []


def write_plot(path: str | Path, series: dict[str, list[tuple[float, float]]], title: str, ylabel: str,
               xlabel: str = "step", width: int = 640, height: int = 360) -> Path:
    """A self-contained SVG line chart of ``series`` (label -> [(x, y)]); returns its path."""
    points = [p for values in series.values() for p in values]
    if not points:
        raise ValueError("nothing to plot")
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y1 = max(max(p[1] for p in points), 1e-12)
    left, right, top, bottom = 60, 20, 30, 40
    sx = (width - left - right) / max(x1 - x0, 1e-12)
    sy = (height - top - bottom) / y1
    colours = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="12">',
        f'<text x="{width / 2}" y="18" text-anchor="middle">{title}</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>',
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{y1:.3g}</text>',
        f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end">0</text>',
        f'<text x="{left}" y="{height - bottom + 16}">{x0:g}</text>',
        f'<text x="{width - right}" y="{height - bottom + 16}" text-anchor="end">{x1:g}</text>',
        f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle">{xlabel}</text>',
        f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" text-anchor="middle">{ylabel}</text>',
    ]
    for k, (label, values) in enumerate(series.items()):
        colour = colours[k % len(colours)]
        xy = " ".join(f"{left + (x - x0) * sx:.1f},{height - bottom - y * sy:.1f}" for x, y in values)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{xy}"/>')
        parts.append(f'<text x="{width - right - 4}" y="{top + 14 * (k + 1)}" text-anchor="end" '
                     f'fill="{colour}">{label}</text>')
    path = Path(path)
    path.write_text("\n".join(parts + ["</svg>"]) + "\n")
    return path
