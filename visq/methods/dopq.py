"""DopQ-ViT (Yang et al., arXiv 2408.03291; research/vit_methods.md 3): TanQ probabilities + MOSF, on I&S-ViT.

No official code exists and the method section was not retrievable, so this is a reconstruction built on the
I&S-ViT pipeline (``ias.smooth_optimize``, an inference from DopQ's tables and its "Opt." label) with two swaps:
- [RECON] post-softmax probabilities use ``TanQRecon``, the tangent companding quantizer of the spec (not the
  paper's verified TanQ equation; replace ``visq/quantizers/tangent.py`` when it is known).
- MOSF, the stage-2 target (s~, z~) of the post-LN reparameterisation, with an integer zero point:
    ``median`` (v2, "Median as the Optimal Scaling Factor"): s~ = median(s), z~ = median(z);
    ``mad`` [RECON] (v3, "MAD-guided"): inliers |s - median(s)| <= k * median(|s - median(s)|) (k = 3),
    s~ = mean(s[inliers]), z~ = median(z[inliers]).
  z~ is always rounded: with float weights the transition is then exact (tested), and s~ cancels
  (research/vit_methods.md 3.3).
"""

from __future__ import annotations

import torch
from torch import Tensor

from visq.methods.base import register
from visq.methods.ias import IaS
from visq.methods.repq import Aggregate
from visq.quantizers import QuantSpec, TanQRecon

MOSF_RULES = ("median", "mad")
MAD_K = 3.0  # [RECON] the paper's threshold is unknown


def median_target(scale: Tensor, zero: Tensor) -> tuple[Tensor, Tensor]:
    """MOSF v2: the medians of the per-channel scales and zero points."""
    return scale.median(), zero.median()


def mad_target(scale: Tensor, zero: Tensor) -> tuple[Tensor, Tensor]:
    """[RECON] MOSF v3: mean scale and median zero point of the channels within MAD_K MADs of the median scale."""
    med = scale.median()
    mad = (scale - med).abs().median()
    inliers = (scale - med).abs() <= MAD_K * mad
    if not bool(inliers.any()):
        inliers = torch.ones_like(inliers)
    return scale[inliers].mean(), zero[inliers].median()


@register
class DopQ(IaS):
    """DopQ-ViT (reconstructed): TanQRecon probabilities and MOSF reparameterisation on I&S-ViT's SOS.

    Args:
        mosf: "median" (v2) or "mad" (v3, [RECON]).
        iters, batch_size, lr, seed: as for ``ias``.
    """

    name = "dopq"

    def __init__(self, mosf: str = "median", iters: int | None = None, batch_size: int = 64, lr: float = 4e-5,
                 seed: int = 0) -> None:
        if mosf not in MOSF_RULES:
            raise ValueError(f"mosf must be one of {MOSF_RULES}, got {mosf!r}")
        super().__init__(iters=iters, batch_size=batch_size, lr=lr, round_zero_point=True, seed=seed)
        self.mosf = mosf

    def probs_spec(self, bits: int) -> QuantSpec:
        return TanQRecon(bits=bits)

    def aggregate(self) -> Aggregate:
        return median_target if self.mosf == "median" else mad_target
