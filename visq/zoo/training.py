"""Small helpers shared by the zoo training scripts in ``pipelines/``: seeding, resumable checkpoints, metrics."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from visq.train.run_dir import load_checkpoint

log = logging.getLogger(__name__)

WEIGHTS = Path(__file__).parent / "weights"


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cosine_lr(step: int, total: int, base: float, warmup: int = 100) -> float:
    """Linear warmup then cosine decay to 5% of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


class Checkpointer:
    """Saves ``{"step", "model", "opt", ...}`` to ``run_dir/ckpt.pt`` atomically, at most every ``every_s`` s."""

    def __init__(self, run_dir: str | Path, every_s: float = 120.0) -> None:
        self.path = Path(run_dir) / "ckpt.pt"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.every_s, self.last = every_s, time.time()

    def load(self) -> dict | None:
        """The last checkpoint, or None when the run starts fresh."""
        if not self.path.exists():
            return None
        log.info("resuming from %s", self.path)
        return load_checkpoint(self.path)  # tensors and plain values only: never unpickles code

    def maybe_save(self, state_fn, force: bool = False) -> None:
        """Call ``state_fn()`` and save it when the interval has passed (or ``force``)."""
        if not force and time.time() - self.last < self.every_s:
            return
        tmp = self.path.with_suffix(".tmp")
        torch.save(state_fn(), tmp)
        os.replace(tmp, self.path)
        self.last = time.time()


def ema_train_step(model: torch.nn.Module, ema: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor,
                   lr: float, decay: float) -> None:
    """One optimiser step on ``loss`` at learning rate ``lr`` (gradients clipped at norm 1), then the EMA update
    ``ema <- decay * ema + (1 - decay) * model`` (the diffusion denoisers ship their EMA weights)."""
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), model.parameters()):
            pe.lerp_(p, 1 - decay)


def blur_some(images: torch.Tensor, frac: float, seed: int) -> torch.Tensor:
    """Gaussian-blur a random ``frac`` of a uint8 batch, in 4 equal groups of sigma 0.4, 0.67, 0.93, 1.2.

    Judges trained this way still read shapes in VAE-decoded samples, which are soft. Returns the batch as float
    in [0, 1] (unchanged uint8 when ``frac`` is 0).
    """
    if frac <= 0:
        return images
    from torchvision.transforms.functional import gaussian_blur

    x = images.float() / 255.0
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:int(len(x) * frac)]
    for k, idx in enumerate(order.chunk(4)):
        x[idx] = gaussian_blur(x[idx], kernel_size=5, sigma=0.4 + 0.8 * k / 3)
    return x


def write_metrics(path: str | Path, metrics: dict) -> None:
    """Write metrics as pretty JSON (and create the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")


def shrink(folder: str | Path, min_numel: int = 16_384) -> None:
    """Store large float tensors of every safetensors file under ``folder`` as bf16 (halves the zoo's size).

    transformers and diffusers load them back into fp32 models; the zoo's reported quality numbers are
    measured on these rounded weights (``pipelines.zoo_bench`` loads the shipped files).
    """
    from safetensors.torch import load_file, save_file

    for f in Path(folder).rglob("*.safetensors"):
        state = load_file(f)
        state = {k: v.to(torch.bfloat16) if v.is_floating_point() and v.numel() >= min_numel else v
                 for k, v in state.items()}
        save_file(state, f, metadata={"format": "pt"})
