"""I&S-ViT (Zhong et al., arXiv 2311.10126 / TPAMI 2025; research/vit_methods.md 2): SULQ + smooth optimisation.

- Post-softmax probabilities (C): shift-uniform-log2 (``ShiftUniformLog2``, Eq. 13-14), eta by grid search.
- Three-stage smooth optimisation (SOS) with block reconstruction (``visq.reconstruct``):
    Stage 1: float weights; post-LN activations (A, F) per channel, the others per tensor; each transformer block
             is tuned on the float model's block inputs toward the float block outputs.
    Stage 2: reparameterise A / F to per tensor (RepQ's equations, ``repq.reparameterize``) with s~ = mean(s),
             z~ = mean(z); lossless up to the fractional zero point because weights are still float.
    Stage 3: fit the (per-channel, asymmetric, percentile-searched) weight quantizers and tune each block again,
             now fed by the quantized model, toward the float outputs captured before stage 1.
  Loss: squared error summed over tokens, mean elsewhere; Adam 4e-5 with cosine decay; batch 64; 1000 iterations
  per block and stage at <= 4-bit activations, 200 at higher bits; only Linear weights / biases train.
Deviations: patch embedding and head stay float (host default) and are not reconstructed; calibration size is
whatever the caller passes (the paper: 1024 images); quantizers are fitted on the whole calibration set
(the code: the first 64 images); SULQ uses 2^b codes in calibration and forward alike (the code's forward had
2^b + 1). Options ``iters`` / ``batch_size`` / ``lr`` exist so CPU runs can shorten the loop (say so in reports).
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from visq.calibrate import CalibSet, fit_weights
from visq.methods.base import Method, register
from visq.methods.repq import Aggregate, mean_target, reparam_rules, reparameterize_all
from visq.methods.vit_sites import transformer_blocks, uniform_at
from visq.quantizers import QuantSpec, ShiftUniformLog2
from visq.recipes import Rule
from visq.reconstruct import ReconConfig, capture, passthrough, reconstruct, reconstruct_block

logger = logging.getLogger(__name__)
IAS_WEIGHT_PERCENTILES = (0.97, 0.98, 0.99, 0.995, 0.9995, 0.9997, 0.9999, 0.99995, 0.99999)


def smooth_optimize(model: nn.Module, calib: CalibSet, cfg: ReconConfig, aggregate: Aggregate,
                    round_zero: bool) -> None:
    """Stages 1-3 of SOS on every transformer block of ``model`` (module doc)."""
    paths = transformer_blocks(model)
    if not paths:
        raise ValueError(f"{type(model).__name__} has no transformer blocks (norm1 / attn / norm2 / mlp) to tune")
    with passthrough(model):
        targets = capture(model, paths, calib)
    with passthrough(model, role="weight"):
        for path in paths:
            loss = reconstruct_block(model.get_submodule(path), targets[path], targets[path].output, cfg)
            logger.info("stage 1 %s: loss %.4g", path, loss)
    reparameterize_all(model, aggregate, round_zero)
    fit_weights(model)
    reconstruct(model, paths, calib, targets, cfg)


@register
class IaS(Method):
    """I&S-ViT: SULQ probabilities and three-stage smooth optimisation.

    Args:
        iters: steps per block and stage; None = 1000 at <= 4-bit activations, else 200 (the paper's settings).
        batch_size: rows per step.
        lr: Adam learning rate.
        round_zero_point: stage 2 with round(mean(z)) (exact) instead of the paper's fractional mean.
        seed: seed of the row sampling.
    """

    name = "ias"
    family = "vit"

    def __init__(self, iters: int | None = None, batch_size: int = 64, lr: float = 4e-5,
                 round_zero_point: bool = False, seed: int = 0) -> None:
        ReconConfig(iters=iters if iters is not None else 0, lr=lr, batch_size=batch_size, seed=seed)  # validates
        self.iters, self.batch_size, self.lr, self.seed = iters, batch_size, lr, seed
        self.round_zero_point = round_zero_point
        self.act_bits = 8  # set from the recipe in ``rules``; picks the default iteration count

    def probs_spec(self, bits: int) -> QuantSpec:
        """The quantizer of the post-softmax probabilities."""
        return ShiftUniformLog2(bits=bits)

    def aggregate(self) -> Aggregate:
        """The stage-2 target (s~, z~) rule."""
        return mean_target

    def rules(self, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        act = uniform_at(rules, "x.mlp.fc1.input_quantizer")
        self.act_bits = act.bits if act is not None else 16
        return reparam_rules(rules, self.probs_spec, IAS_WEIGHT_PERCENTILES)

    def config(self) -> ReconConfig:
        """The reconstruction settings for this recipe."""
        iters = self.iters if self.iters is not None else (1000 if self.act_bits <= 4 else 200)
        return ReconConfig(iters=iters, lr=self.lr, batch_size=self.batch_size, seed=self.seed)

    def refine(self, pipe: Any, model: nn.Module, calib: CalibSet) -> None:
        smooth_optimize(model, calib, self.config(), self.aggregate(), self.round_zero_point)
