"""Temporal activation scales: one activation range per denoiser timestep, initialised by per-step calibration.

EfficientDM's TALSQ (research/diffusion_methods.md 1.5) learns a step size per timestep; this method is its
calibration half: every static activation quantizer keeps a table of ranges indexed by the timestep the denoiser
is called with (the diffusers host's forward pre-hook), each fitted on that step's calls only. Learning the table is
part of the EfficientDM work. Inference must use the calibrated ``num_inference_steps`` (other timesteps raise).
Built on the baseline: the Q-Diffusion shortcut splitting (``split``) stays on, so the comparison with ``qdiff``
measures the per-timestep ranges alone.
"""

from __future__ import annotations

from dataclasses import replace

from visq.methods.base import register
from visq.methods.qdiff import ShortcutSplitting
from visq.recipes import Rule, map_activation_specs


@register
class Temporal(ShortcutSplitting):
    """Per-timestep activation ranges calibrated on each step's calls.

    Args:
        split: Q-Diffusion shortcut splitting of UNet decoder concat inputs (each side keeps its own table).
    """

    name = "temporal"

    def rules(self, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        return super().rules(map_activation_specs(rules, lambda spec: replace(spec, per_timestep=True)))
