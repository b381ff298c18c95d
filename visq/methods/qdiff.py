"""Q-Diffusion baseline (Li et al., ICCV 2023; research/diffusion_methods.md 8.1, 0.3).

- Time step-aware calibration: calls at ``calib_steps`` timesteps spread uniformly over the float trajectory
  (``qdiff/utils.py::get_train_samples``: ``range(0, nsteps, nsteps // cali_st)``), both CFG halves kept.
- Shortcut splitting: in UNet decoder blocks the ResNet input is ``cat([h, skip], dim=1)``; ``conv1`` and the
  1x1 ``conv_shortcut`` get separate ranges for the ``h`` and ``skip`` channels (input and weight), via ``Split``.
  The split index is the channel count of the upsampled ``h`` [RECON: the diffusers mapping, spec 0.1].
- Optional block reconstruction (``recon_iters`` > 0): ``visq.methods.fbr`` with no layer terms.
Deviation: activation ranges are min-max over the selected calls (Q-Diffusion's SD script uses an EMA of min/max);
the reconstruction trains weights rather than AdaRound rounding variables (see ``fbr``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from visq.calibrate import CalibSet
from visq.guard import check_int
from visq.methods.base import Method, register
from visq.methods.fbr import reconstruct_denoiser
from visq.quantizers import Split, Uniform
from visq.recipes import Recipe, Rule
from visq.reconstruct import ReconConfig
from visq.trajectory import uniform_steps


def skip_concat_splits(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Layer path -> (split, channels) for every UNet decoder layer whose input is ``cat([h, skip])``."""
    if not hasattr(model, "up_blocks"):
        return {}
    mid = getattr(model, "mid_block", None)
    prev = mid.resnets[-1].out_channels if mid is not None else model.config.block_out_channels[-1]
    splits: dict[str, tuple[int, int]] = {}
    for b, block in enumerate(model.up_blocks):
        for i, resnet in enumerate(block.resnets):
            h_channels = prev if i == 0 else block.resnets[i - 1].out_channels
            total = resnet.conv1.in_channels
            if total > h_channels:
                splits[f"up_blocks.{b}.resnets.{i}.conv1"] = (h_channels, total)
                if resnet.conv_shortcut is not None:
                    splits[f"up_blocks.{b}.resnets.{i}.conv_shortcut"] = (h_channels, total)
        prev = block.resnets[-1].out_channels
    return splits


def split_rules(rules: tuple[Rule, ...], splits: dict[str, tuple[int, int]]) -> tuple[Rule, ...]:
    """Exact-site ``Split`` rules wrapping what ``rules`` would give each concat layer, ahead of ``rules``."""
    base = Recipe(rules)
    extra = []
    for layer, (split, channels) in splits.items():
        for slot in ("input_quantizer", "weight_quantizer"):
            hit = base.spec_for(f"{layer}.{slot}")
            spec = hit[1] if hit else None
            if isinstance(spec, Uniform) and spec.granularity in ("tensor", "channel"):
                extra.append(Rule(f"{layer}.{slot}", Split(inner=spec, split=split, channels=channels), optional=True))
    return tuple(extra) + rules


class ShortcutSplitting(Method):
    """Base of the diffusion methods built on the Q-Diffusion code (spec 0.1: EDA-DM and DGQ split too): shortcut
    splitting of UNet decoder concat inputs when ``split`` (a no-op on models without ``up_blocks``, e.g. DiT)."""

    family = "diffusion"

    def __init__(self, split: bool = True) -> None:
        self.split = split
        self.splits: dict[str, tuple[int, int]] = {}

    def prepare(self, model: nn.Module) -> None:
        self.splits = skip_concat_splits(model) if self.split else {}
        return None

    def rules(self, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        return split_rules(rules, self.splits)


@register
class QDiffusion(ShortcutSplitting):
    """Uniform-over-trajectory calibration and shortcut splitting.

    Args:
        calib_steps: timesteps kept for calibration (None keeps every captured step).
        split: apply shortcut splitting to UNet decoder concat inputs.
        recon_iters: block reconstruction steps per block (0: none, the default).
    """

    name = "qdiff"

    def __init__(self, calib_steps: int | None = None, split: bool = True, recon_iters: int = 0) -> None:
        super().__init__(split)
        self.calib_steps = check_int("qdiff calib_steps", calib_steps) if calib_steps is not None else None
        self.recon = ReconConfig(iters=recon_iters, lr=1e-5, batch_size=32)

    def collect(self, pipe: Any, calib: Any, options: dict[str, Any]) -> CalibSet | None:
        from visq.hosts import detect

        full = detect(pipe).collect(pipe, calib, options)
        return uniform_steps(full, self.calib_steps) if self.calib_steps else full

    def refine(self, pipe: Any, model: nn.Module, calib: CalibSet) -> None:
        if self.recon.iters > 0:
            reconstruct_denoiser(model, calib, 0.0, self.recon)
