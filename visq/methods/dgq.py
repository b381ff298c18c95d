"""DGQ: distribution-aware group quantization for text-to-image diffusion (Ryu, Park, Shim, ICLR 2025).

research/diffusion_methods.md section 4. Activations of every quantized Linear / Conv2d input get outlier-aware
group ranges (``OutlierGroups``: K-means groups along the channel or token axis, whichever spreads more, ranges per
timestep); attention probabilities get the prompt-specific log2 quantizer (``PromptLog``), with the start token's
column kept float in cross-attention (``attn2``), and so is its key (``StartFloat`` around the k quantizer).
Weights are left to the recipe (DGQ changes activations only). Defaults from spec 4.4: K = 2 groups at 8-bit
activations, 16 below. Deviations: see the quantizer files. As in the DGQ code
(spec 0.1) the UNet decoder's concat layers are split: their weights get two ranges (``split``); their inputs keep
the group quantizer, whose K-means groups already separate channels of different range.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from visq.calibrate import CalibSet, Call
from visq.guard import check_int
from visq.methods.base import register
from visq.methods.qdiff import ShortcutSplitting
from visq.quantizers import Uniform
from visq.quantizers.outlier_groups import OutlierGroups
from visq.quantizers.prompt_log import PromptLog
from visq.quantizers.start_float import StartFloat
from visq.recipes import Recipe, Rule


def token_counts(model: nn.Module, call: Call) -> dict[str, int]:
    """Layer path -> tokens per sample of its input (pixels for convs, 0 for 2-D inputs), from one float call."""
    counts: dict[str, int] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0]
            counts[name] = x.shape[2] * x.shape[3] if isinstance(module, nn.Conv2d) else (
                x.shape[-2] if x.ndim >= 3 else 0)
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules()
               if type(m) in (nn.Linear, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(*call.args, **call.kwargs)
    finally:
        for h in handles:
            h.remove()
    return counts


@register
class DGQ(ShortcutSplitting):
    """Outlier-aware activation groups and prompt-specific log2 attention probabilities.

    Args:
        groups: ranges per activation (None: 2 at >= 8 bits, 16 below).
        log_probs: use the log2 quantizer for attention probabilities.
        per_timestep: keep group ranges per timestep (DGQ's time-aware calibration).
        split: Q-Diffusion shortcut splitting of the UNet decoder's concat-layer weights.
    """

    name = "dgq"

    def __init__(self, groups: int | None = None, log_probs: bool = True, per_timestep: bool = True,
                 split: bool = True) -> None:
        super().__init__(split)
        if groups is not None:  # 0 must not fall back to the default silently
            check_int("dgq groups", groups)
        self.groups, self.log_probs, self.per_timestep = groups, log_probs, per_timestep
        self.tokens: dict[str, int] = {}

    def collect(self, pipe: Any, calib: Any, options: dict[str, Any]) -> CalibSet | None:
        from visq.hosts import detect

        host = detect(pipe)
        calib_set = host.collect(pipe, calib, options)
        self.tokens = token_counts(host.target(pipe), calib_set[0])
        return calib_set

    def rules(self, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        base = Recipe(rules)
        extra = []
        for layer, tokens in self.tokens.items():
            site = f"{layer}.input_quantizer"
            hit = base.spec_for(site)
            spec = hit[1] if hit else None
            if isinstance(spec, Uniform) and not spec.dynamic:
                groups = self.groups or (2 if spec.bits >= 8 else 16)
                extra.append(Rule(site, OutlierGroups(spec.bits, groups, tokens, self.per_timestep), optional=True))
        probs = base.spec_for("x.probs_quantizer")
        if self.log_probs and probs is not None and isinstance(probs[1], Uniform):
            bits = probs[1].bits
            extra += [Rule("*attn2.processor.probs_quantizer", PromptLog(bits, keep_start=True), optional=True),
                      Rule("*.probs_quantizer", PromptLog(bits, keep_start=False), optional=True)]
            keys = base.spec_for("x.attn2.processor.k_quantizer")
            if keys is not None and isinstance(keys[1], Uniform):
                extra.append(Rule("*attn2.processor.k_quantizer", StartFloat(keys[1]), optional=True))
        return super().rules(tuple(extra) + rules)
