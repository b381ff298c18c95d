"""EDA-DM: enhanced distribution alignment for PTQ of diffusion models (Liu et al., arXiv 2401.04585).

research/diffusion_methods.md section 3. Calibration sample selection (TDAC, ``scripts/calibration.py``):
1. Float runs give every trajectory's x_t at every step; for the first run the *input of the middle attention
   block* at each step i is kept as the feature F_i.
2. Density  D_i = #{j != i : mean((F_i - F_j)^2) <= r};  diversity V_i = sum_j sum_{b,h,w} (1 - cos_c(F_i, F_j)),
   the cosine taken along channels. Both min-max normalised.
3. w_i = D_i + lambda * V_i,  n_i = round(N * w_i / sum w) (rounding fixed so that sum n_i = N).
4. A shuffled multiset with n_i copies of step i assigns each of the N trajectories one step; trajectory k
   contributes its x_t (both CFG halves) at that step.
Defaults: lambda = 1.2 (ImageNet/CIFAR; 1.0 LSUN; 5.0 COCO-SD). r is a per-dataset constant in the paper's scripts
(3.0 or 0.3); visq's default takes the median pairwise distance so it adapts to the feature scale [RECON].
Then fine-grained block reconstruction (``visq.methods.fbr``): block loss + gamma * layer losses, gamma = 0.8
(ImageNet / COCO scripts), ``recon_iters`` steps per block (the scripts: 1000-5000; the default here is sized
for CPU runs and stated in every report), batch 32. Like the EDA-DM code (a Q-Diffusion descendant, spec 0.1),
the UNet decoder's concat inputs are split (``split``).
"""

from __future__ import annotations

import random
from typing import Any

import torch
from torch import Tensor, nn

from visq.calibrate import CalibSet, Call
from visq.guard import check_float
from visq.methods.base import register
from visq.methods.fbr import reconstruct_denoiser
from visq.methods.qdiff import ShortcutSplitting
from visq.reconstruct import ReconConfig
from visq.trajectory import rebatch, samples_per_call, select


def feature_module(model: nn.Module) -> nn.Module:
    """The module whose input is EDA-DM's feature: the middle attention block (UNet) or the middle block (DiT)."""
    mid = getattr(model, "mid_block", None)
    attentions = getattr(mid, "attentions", None)
    if attentions:
        return attentions[0]
    blocks = getattr(model, "transformer_blocks", None)
    if blocks:
        return blocks[len(blocks) // 2]
    raise ValueError(f"{type(model).__name__} has no middle attention block to take EDA-DM features from")


def step_features(model: nn.Module, calls: list[Call]) -> Tensor:
    """Feature of each call (one per step of the first run), shaped (steps, batch, channels, positions)."""
    feats: list[Tensor] = []

    def grab(module: nn.Module, args: tuple[Tensor, ...], kwargs: dict[str, Any]) -> None:
        x = args[0] if args else kwargs["hidden_states"]
        feats.append(x.flatten(2) if x.ndim == 4 else x.transpose(1, 2))  # (B, C, positions)

    handle = feature_module(model).register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            for call in calls:
                model(*call.args, **call.kwargs)
    finally:
        handle.remove()
    return torch.stack(feats).float()


def density_diversity(feats: Tensor, radius: float | None = None) -> tuple[Tensor, Tensor]:
    """Min-max normalised density and diversity per step from (steps, B, C, P) features."""
    flat = feats.flatten(1)
    dist = torch.cdist(flat, flat).pow(2) / flat.shape[1]  # mean squared difference per pair
    off = ~torch.eye(len(flat), dtype=torch.bool)
    r = radius if radius is not None else dist[off].median().item()
    density = ((dist <= r) & off).sum(1).float()
    unit = torch.nn.functional.normalize(feats, dim=2)  # cosine along channels
    cos = torch.einsum("ibcp,jbcp->ij", unit, unit)
    positions = feats.shape[1] * feats.shape[3]
    diversity = (positions - cos).masked_fill(~off, 0).sum(1)
    return _minmax(density), _minmax(diversity)


def _minmax(x: Tensor) -> Tensor:
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else torch.zeros_like(x)


def allocate(weights: Tensor, total: int) -> list[int]:
    """Integer counts proportional to ``weights`` that sum to ``total`` (largest remainders first)."""
    if float(weights.sum()) <= 0:
        weights = torch.ones_like(weights)
    share = weights / weights.sum() * total
    counts = share.floor().long()
    for i in torch.argsort(share - counts, descending=True)[: total - int(counts.sum())]:
        counts[i] += 1
    return counts.tolist()


def select_calibration(model: nn.Module, calib: CalibSet, lam: float = 1.2, radius: float | None = None,
                       seed: int = 0, max_batch: int = 16) -> CalibSet:
    """EDA-DM's density + diversity selection: one sample per trajectory, steps drawn by the weights."""
    first_run = sorted((c for c in calib if c.run == 0), key=lambda c: c.step)
    density, diversity = density_diversity(step_features(model, first_run), radius)
    by_run_step = {(c.run, c.step): c for c in calib}
    trajectories = [(run, k) for run in sorted({c.run for c in calib})
                    for k in range(samples_per_call(by_run_step[(run, 0)]))]
    counts = allocate(density + lam * diversity, len(trajectories))
    steps = [i for i, n in enumerate(counts) for _ in range(n)]
    random.Random(seed).shuffle(steps)
    chosen = [select(by_run_step[(run, step)], [k]) for (run, k), step in zip(trajectories, steps)]
    return rebatch(chosen, max_batch)


@register
class EDA(ShortcutSplitting):
    """EDA-DM: calibration sample selection (TDAC) and fine-grained block reconstruction (FBR).

    Args:
        lam: weight of diversity against density (``--lamda``).
        radius: density radius r (None: median pairwise distance of the step features).
        seed: shuffling seed of the step assignment and of the reconstruction batches.
        gamma: weight of the layer terms in the reconstruction loss (``--add_loss``).
        recon_iters: reconstruction steps per block (0 skips FBR).
        recon_lr: Adam learning rate of the reconstructed weights.
        split: Q-Diffusion shortcut splitting of UNet decoder concat inputs.
    """

    name = "eda"

    def __init__(self, lam: float = 1.2, radius: float | None = None, seed: int = 0, gamma: float = 0.8,
                 recon_iters: int = 100, recon_lr: float = 1e-4, split: bool = True) -> None:
        super().__init__(split)
        check_float("eda lam", lam)
        if radius is not None:
            check_float("eda radius", radius)
        if not 0 <= gamma <= 1:
            raise ValueError(f"eda gamma (the block / layer loss mix) must be in [0, 1], got {gamma}")
        self.lam, self.radius, self.seed = lam, radius, seed
        self.gamma, self.recon = gamma, ReconConfig(iters=recon_iters, lr=recon_lr, batch_size=32, seed=seed)

    def collect(self, pipe: Any, calib: Any, options: dict[str, Any]) -> CalibSet | None:
        from visq.hosts import detect

        host = detect(pipe)
        full = host.collect(pipe, calib, options)
        return select_calibration(host.target(pipe), full, self.lam, self.radius, self.seed)

    def refine(self, pipe: Any, model: nn.Module, calib: CalibSet) -> None:
        if self.recon.iters > 0:
            reconstruct_denoiser(model, calib, self.gamma, self.recon)
