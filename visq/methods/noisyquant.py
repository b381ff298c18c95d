"""NoisyQuant (Liu et al., CVPR 2023; research/vit_methods.md 4): a fixed noisy bias before activation quantizers.

Every linear layer's input quantizer becomes ``Noisy(inner)`` with ``inner`` the recipe's uniform spec
(percentile search). After calibration, per layer, on its captured inputs x and with its weights already
quantized (W_q), three searches minimise the layer-output error ``mean((W_q Q(x) - W_q x)^2)`` (``fast_quant.py``):
  1. clip: the calibrated range [lo, hi] scaled by alpha in linspace(1, 0.2, 41) (the code's ``--percentile``
     search); alpha = 1 is exactly the calibrated scale and zero point;
  2. mean (the code's ``--search_mean``, "shifted noisy bias"): a constant m = step * k / 20, k in -20..19;
  3. noise: N = m + alpha * step * u, u ~ U(-1, 1) per input channel (fixed, seeded), alpha in linspace(0, 0.5, 26)
     (h <= step / 2, the spec's safe range; alpha = 0 keeps the layer as it was), output y = W_q (Q(x + N) - N).
Then N is stored in the quantizer and the denoising bias is folded: bias <- bias - W_q N (the paper's B').
Deviations from the official code:
- activations keep the recipe's asymmetric per-tensor grid (the code is symmetric; asymmetric gave 2-3x lower
  layer-output error on the zoo ViT's layers);
- the noise is U(-1, 1) * alpha * step (the code's ``randn`` is a bug, spec 4.3), alpha on a 26-point grid up to
  0.5 (the code: 2000 points up to 2), the mean on a 40-point grid over [-step, step) (the code: 400 points);
- the clip candidates scale the calibrated range (the code scales absmax by i / 1000);
- inputs are captured in one pass before any layer's search (the code searches layer by layer during the forward);
- attention q / k / v / probabilities stay as the recipe says (percentile search) instead of float; Conv2d inputs
  get no noise.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visq.calibrate import CalibSet
from visq.guard import check_int
from visq.methods.base import Method, register
from visq.quantizers import Noisy, NoisyQuantizer, Uniform, UniformQuantizer
from visq.quantizers.uniform import params_to_range, range_to_params
from visq.recipes import Rule, with_activation_range

logger = logging.getLogger(__name__)
CLIP_ALPHAS = torch.linspace(1.0, 0.2, 41).tolist()
NOISE_ALPHAS = torch.linspace(0.0, 0.5, 26).tolist()
MEAN_SHIFTS = [k / 20 for k in range(-20, 20)]  # noise means in steps


def noisy_rules(rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
    """Percentile search everywhere; every static uniform layer-input spec wrapped in ``Noisy``."""
    out = []
    for rule in with_activation_range(rules, "percentile"):
        spec = rule.spec
        if rule.pattern.endswith("input_quantizer") and isinstance(spec, Uniform) and not spec.dynamic:
            rule = Rule(rule.pattern, Noisy(inner=spec), rule.optional)
        out.append(rule)
    return tuple(out)


def capture_linear_inputs(model: nn.Module, layers: dict[str, nn.Linear], calib: CalibSet,
                          max_rows: int, seed: int) -> dict[str, Tensor]:
    """Up to ``max_rows`` input rows (tokens) of each layer over the calibration set, seeded subsample."""
    per_call = max(1, max_rows // len(calib))
    rows: dict[str, list[Tensor]] = {name: [] for name in layers}
    gen = torch.Generator().manual_seed(seed)

    def hook(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            pick = torch.randperm(x.shape[0], generator=gen)[:per_call].to(x.device)
            rows[name].append(x[pick])

        return record

    handles = [layer.register_forward_pre_hook(hook(name)) for name, layer in layers.items()]
    try:
        with torch.no_grad():
            for call in calib:
                model(*call.args, **call.kwargs)
    finally:
        for h in handles:
            h.remove()
    return {name: torch.cat(r) for name, r in rows.items()}


def _output_error(layer: nn.Linear, x: Tensor, ref: Tensor, weight: Tensor) -> float:
    quant: NoisyQuantizer = layer.input_quantizer
    y = F.linear(quant(x) - quant.noise, weight, layer.bias)
    return float((y - ref).pow(2).mean())


def search_clip(layer: nn.Linear, x: Tensor, ref: Tensor, weight: Tensor) -> float:
    """Shrink a per-tensor uniform inner quantizer's range to the lowest layer-output error; returns the alpha."""
    inner = layer.input_quantizer.inner
    if not isinstance(inner, UniformQuantizer) or inner.spec.granularity != "tensor":
        return 1.0
    scale, zero = inner.scale.clone(), inner.zero_point.clone()
    lo, hi = params_to_range(scale, zero, inner.spec)
    best = (float("inf"), 1.0, scale, zero)
    for alpha in CLIP_ALPHAS:
        s, z = range_to_params(lo * alpha, hi * alpha, inner.spec)
        inner.scale.copy_(s)
        inner.zero_point.copy_(z)
        err = _output_error(layer, x, ref, weight)
        if err < best[0]:
            best = (err, alpha, s, z)
    inner.scale.copy_(best[2])
    inner.zero_point.copy_(best[3])
    return best[1]


def _step(quant: NoisyQuantizer) -> Tensor:
    return getattr(quant.inner, "scale", torch.ones(())).reshape(-1)[0]


def search_mean(layer: nn.Linear, x: Tensor, ref: Tensor, weight: Tensor) -> float:
    """Set the noise to the constant shift with the lowest layer-output error; returns it in steps."""
    quant: NoisyQuantizer = layer.input_quantizer
    step = _step(quant)
    best = (float("inf"), 0.0)
    for k in MEAN_SHIFTS:
        quant.noise.fill_(float(k * step))
        err = _output_error(layer, x, ref, weight)
        if err < best[0]:
            best = (err, k)
    quant.noise.fill_(float(best[1] * step))
    return best[1]


def search_noise(layer: nn.Linear, x: Tensor, ref: Tensor, weight: Tensor, gen: torch.Generator) -> float:
    """Pick the noise amplitude (around the mean already in ``noise``) with the lowest layer-output error and set
    the noise; returns the alpha."""
    quant: NoisyQuantizer = layer.input_quantizer
    step = _step(quant)
    mean = quant.noise.clone()
    unit = (torch.rand(quant.noise.shape, generator=gen) * 2 - 1).to(quant.noise.device)
    best = (float("inf"), 0.0)
    for alpha in NOISE_ALPHAS:
        quant.noise.copy_(mean + alpha * step * unit)
        err = _output_error(layer, x, ref, weight)
        if err < best[0]:
            best = (err, alpha)
    quant.noise.copy_(mean + best[1] * step * unit)
    return best[1]


@torch.no_grad()
def denoise_layer(layer: nn.Linear, x: Tensor, gen: torch.Generator) -> tuple[float, float, float]:
    """Clip, mean and noise searches for one layer, then fold ``-W_q N`` into its bias; returns the clip alpha,
    the mean (in steps) and the noise alpha."""
    weight = layer.quantized_weight().detach()
    ref = F.linear(x, weight, layer.bias)
    clip = search_clip(layer, x, ref, weight)
    mean = search_mean(layer, x, ref, weight)
    noise = search_noise(layer, x, ref, weight, gen)
    layer.bias.sub_(weight @ layer.input_quantizer.noise)
    return clip, mean, noise


@register
class NoisyQuant(Method):
    """NoisyQuant-Linear: output-error clip and mean searches plus a fixed, searched noisy bias per linear layer.

    Args:
        max_rows: input rows (tokens) per layer kept for the searches.
        seed: seed of the noise and of the row subsample.
    """

    name = "noisyquant"
    family = "vit"

    def __init__(self, max_rows: int = 4096, seed: int = 0) -> None:
        self.max_rows, self.seed = check_int("noisyquant max_rows", max_rows), check_int("seed", seed, 0)

    def rules(self, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        return noisy_rules(rules)

    def refine(self, pipe: Any, model: nn.Module, calib: CalibSet) -> None:
        layers = {
            name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and isinstance(getattr(m, "input_quantizer", None), NoisyQuantizer)
            and m.bias is not None
        }
        if not layers:
            logger.warning("noisyquant: no linear layer with a noisy input quantizer and a bias; nothing to do")
            return
        inputs = capture_linear_inputs(model, layers, calib, self.max_rows, self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        for name, layer in layers.items():
            clip, mean, noise = denoise_layer(layer, inputs[name], gen)
            logger.info("noisyquant %s: clip alpha %.3f, mean %.2f steps, noise alpha %.3f", name, clip, mean, noise)
