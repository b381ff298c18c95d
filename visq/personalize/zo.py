"""Zeroth-order gradient estimate (RGE) with seeded perturbations, shared by ZOODiP and QZO-style methods.

ZOODiP (Seo et al., CVPR 2025, arXiv 2503.14868), paper Eq. 3 and the official ``zo_step``
(diffusion_methods.md sections 6.2 and 7):

    L0 = L(theta);  for i in 1..n:  theta += mu z_i;  L_i = L(theta);  theta -= mu z_i;  d_i = (L_i - L0) / mu
    g  = sum_i d_i z_i / (sqrt((d' + n - 1) / n) * n)          ("code" normalisation; d' = d - removed dims)
    g  = (1 / n) sum_i d_i z_i                                   ("mean" normalisation, paper Eq. 3)

Each ``z_i ~ N(0, I)`` is drawn from its own seed and drawn again from that seed to undo the perturbation, so no
direction is ever stored (MeZO's trick). The undo is in place (``theta -= mu z_i``): it restores ``theta`` up to
float rounding, as MeZO and ZOODiP do, without keeping a copy. ``loss_fn`` must evaluate the same batch, noise,
timesteps and dropout state at every call: the n + 1 losses then differ only by the perturbation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

NORMALISATIONS = ("code", "mean")


@dataclass(frozen=True)
class ZOSettings:
    """Settings of the estimator (defaults: ZOODiP, paper and script agree).

    Attributes:
        n: random directions per estimate (n + 1 forward passes).
        mu: perturbation size.
        normalize: "code" (the official script's MeZO-style scaling) or "mean" (paper Eq. 3, unbiased).
    """

    n: int = 2
    mu: float = 1e-3
    normalize: str = "code"

    def __post_init__(self) -> None:
        if self.n < 1 or self.mu <= 0:
            raise ValueError(f"ZO needs n >= 1 and mu > 0, got n={self.n}, mu={self.mu}")
        if self.normalize not in NORMALISATIONS:
            raise ValueError(f"normalize must be one of {NORMALISATIONS}, got {self.normalize!r}")


def _perturb(params: Sequence[Tensor], seed: int, scale: float) -> None:
    """``p += scale * z`` for every tensor, ``z`` drawn in order from one generator seeded with ``seed``."""
    gen = torch.Generator(device=params[0].device).manual_seed(seed)
    for p in params:
        p.add_(torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype), alpha=scale)


def directions(params: Sequence[Tensor], seed: int) -> list[Tensor]:
    """The perturbation direction of ``seed`` (the ``z`` that :func:`estimate` adds), as new tensors."""
    zeros = [torch.zeros_like(p) for p in params]
    _perturb(zeros, seed, 1.0)
    return zeros


@torch.no_grad()
def estimate(params: Sequence[Tensor], loss_fn: Callable[[], Tensor], generator: torch.Generator,
             settings: ZOSettings = ZOSettings(), removed: int = 0) -> tuple[Tensor, list[Tensor]]:
    """Zeroth-order gradient of ``loss_fn`` at ``params`` from n + 1 forward passes.

    Args:
        params: the tensors to differentiate; perturbed in place and restored.
        loss_fn: evaluates the loss at the current ``params`` (deterministic, see the module docstring).
        generator: draws the n direction seeds (so the estimate is reproducible from it).
        settings: n, mu and the normalisation.
        removed: dimensions a later projection removes (``d'`` of the code normalisation).

    Returns:
        The unperturbed loss (fp32) and the gradient estimate, one tensor per parameter.
    """
    params = list(params)
    seeds = torch.randint(0, 2**62, (settings.n,), generator=generator).tolist()
    loss0 = loss_fn().float()
    grads = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    for seed in seeds:
        _perturb(params, seed, settings.mu)
        loss = loss_fn().float()
        _perturb(params, seed, -settings.mu)
        slope = float((loss - loss0) / settings.mu)
        for g, z in zip(grads, directions(params, seed)):
            g.add_(z.float(), alpha=slope)
    dim = sum(p.numel() for p in params)
    if settings.normalize == "code":
        norm = math.sqrt((dim - removed + settings.n - 1) / settings.n) * settings.n
    else:
        norm = settings.n
    return loss0, [(g / norm).to(p.dtype) for g, p in zip(grads, params)]
