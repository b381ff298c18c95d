"""EfficientDM (He et al., ICLR 2024; research/diffusion_methods.md section 1): the PTQ initialisation and the
trainable structure that ``visq.finetune`` distils.

``visq.quantize(pipe, "w4a4", method="efficientdm", calib=prompts)`` installs:
- QALoRA on every quantized Linear / Conv2d weight (``visq.quantizers.qalora``): ``Q(W + BA, s_w)``, rank ``rank``
  (32 in the paper's code), B = 0 so the model starts as the PTQ model;
- learnable step sizes (``visq.quantizers.lsq``, the one LSQ family visq has) for the weights (signed, per output
  channel, frozen zero offset as in the code) and for the activations (unsigned with a learned offset, LSQ+);
- TALSQ (spec 1.5): with ``talsq`` every activation quantizer keeps one step / offset per calibrated timestep,
  initialised by per-step calibration on that step's calls only (the spec's [RECON] improvement over the code's
  replication of one range), each trained only by the calls at its timestep;
- the Q-Diffusion shortcut splitting of UNet decoder concat inputs (``split``), as every visq diffusion method.
Initial ranges: weights from the recipe's range rule ("minmax" is the code's naive PTQ), activations by ``act_init``
per timestep ("mse" by default, the official code's MSE range search, run here on each timestep's calls; on
shapes-sd W4A4 it starts distillation at a third of min-max's loss and ends 2.2 dB higher after 200 steps
(``eval/results/efficientdm.md``), for ~2.5 minutes of calibration on a CPU instead of ~25 s; "minmax" is the
cheap alternative).
Deviations, stated so results are comparable: visq's host keeps conv_in / conv_out / the time embedding float
(the code runs them W8A8 without LoRA), quantizes the 1x1 shortcuts and down-sampling convolutions (the code keeps
them float) and the attention q / k / v / probs like the PTQ baselines (the code does not quantize attention
matmuls); the weight zero offset is fixed at 0 (signed grid).
``visq.merge_lora`` folds the trained LoRA into the weights afterwards (``visq.finetune`` explains the training).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from visq.calibrate import CalibSet
from visq.guard import check_int
from visq.methods.base import register
from visq.methods.qdiff import ShortcutSplitting
from visq.quantizers import QuantSpec, Split, Uniform
from visq.quantizers.lsq import INITS as ACT_INITS
from visq.quantizers.lsq import LSQ
from visq.quantizers.qalora import QALoRA, QALoRAQuantizer
from visq.recipes import Rule


def learnable(spec: QuantSpec, *, weight: bool, init: str, per_timestep: bool) -> QuantSpec:
    """The LSQ spec that starts where a static ``Uniform`` spec (or a ``Split`` of one) would; others unchanged.

    Raises:
        ValueError: per-group weights (LSQ has one step per tensor or per channel).
    """
    if isinstance(spec, Split):
        return replace(spec, inner=learnable(spec.inner, weight=weight, init=init, per_timestep=per_timestep))
    if not isinstance(spec, Uniform) or getattr(spec, "dynamic", False) or spec.granularity == "token":
        return spec
    if spec.granularity == "group":
        raise ValueError("efficientdm learns one weight step per output channel; use a recipe without -g<G>")
    return LSQ(bits=spec.bits, signed=spec.symmetric, granularity=spec.granularity, offset=not spec.symmetric,
               init=init, per_timestep=per_timestep and not weight)


@register
class EfficientDM(ShortcutSplitting):
    """EfficientDM's quantized structure: QALoRA weights and (temporal) learnable activation steps.

    Args:
        rank: LoRA rank of every quantized layer (capped at the layer's smaller dimension).
        talsq: one activation step / offset per timestep (TALSQ); False learns one per layer (the ablation).
        act_init: activation range init from calibration: "minmax", "mse" (the official code's) or "lsq".
        split: shortcut splitting of UNet decoder concat inputs.
        seed: seeds the LoRA ``A`` initialisation (layers in module order), so a run is reproducible from it.
    """

    name = "efficientdm"

    def __init__(self, rank: int = 32, talsq: bool = True, act_init: str = "mse", split: bool = True,
                 seed: int = 0) -> None:
        super().__init__(split)
        check_int("efficientdm rank", rank)
        if act_init not in ACT_INITS:
            raise ValueError(f"efficientdm act_init must be one of {ACT_INITS}, got {act_init!r}")
        self.rank, self.talsq, self.act_init, self.seed = rank, talsq, act_init, check_int("seed", seed, 0)

    def refine(self, pipe: Any, model: nn.Module, calib: CalibSet) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        for module in model.modules():
            if isinstance(module, QALoRAQuantizer):
                module.reset_lora(generator)

    def rules(self, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        out = []
        for rule in super().rules(rules):
            spec, weight = rule.spec, rule.pattern.endswith("weight_quantizer")
            if spec is not None:
                init = _weight_init(spec) if weight else self.act_init
                spec = learnable(spec, weight=weight, init=init, per_timestep=self.talsq)
                if weight:
                    spec = QALoRA(inner=spec, rank=self.rank)
            out.append(replace(rule, spec=spec))
        return tuple(out)


def _weight_init(spec: QuantSpec) -> str:
    inner = spec.inner if isinstance(spec, Split) else spec
    return inner.range if getattr(inner, "range", None) in ("minmax", "mse") else "minmax"
