"""Train the zoo VAE (diffusers AutoencoderKL, 32x32x3 <-> 8x8x4) on visq-shapes.

    python -m pipelines.train_vae        # -> runs/zoo/vae/final (copied into the pipelines by their scripts)

Loss: MSE + 0.5 L1 on [-1, 1] pixels plus a tiny KL term. ``scaling_factor`` = 1 / std of the latent means
over held-out images, stored in the config. Resumable from ``runs/zoo/vae/ckpt.pt``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from visq.zoo import shapes
from visq.zoo.builders import build_vae
from visq.zoo.training import Checkpointer, cosine_lr, seed_all, write_metrics


@dataclass(frozen=True)
class Config:
    """VAE training settings."""

    name: str = "vae"
    seed: int = 0
    steps: int = 1200
    batch: int = 64
    lr: float = 2e-3
    kl_weight: float = 1e-6
    threads: int = 1
    run_dir: str = "runs/zoo"
    out_dir: str = "runs/zoo/vae/final"  # not shipped itself: the pipelines carry copies


def evaluate(vae, n: int = 512) -> dict:
    """Held-out reconstruction PSNR (dB, on [0, 1]) and the latent std used for ``scaling_factor``."""
    b = shapes.generate(n, 777, "heldout")
    x = shapes.to_float(b.images)
    with torch.no_grad():
        mean = vae.encode(x).latent_dist.mean
        rec = vae.decode(mean).sample.clamp(-1, 1)
    mse = ((rec - x) / 2).pow(2).mean().item()
    return {"psnr": 10 * torch.log10(torch.tensor(1.0 / mse)).item(), "latent_std": mean.std().item()}


def main(cfg: Config = Config()) -> dict:
    """Train, measure, save; returns the metrics."""
    torch.set_num_threads(cfg.threads)
    seed_all(cfg.seed)
    vae = build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    ckpt = Checkpointer(Path(cfg.run_dir) / cfg.name)
    state, step = ckpt.load(), 0
    if state:
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        torch.set_rng_state(state["rng"])
    vae.train()
    t0 = time.time()
    while step < cfg.steps:
        x = shapes.to_float(shapes.generate(cfg.batch, cfg.seed * 1_000_003 + step, "train").images)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.steps, cfg.lr)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        loss = (rec - x).pow(2).mean() + 0.5 * (rec - x).abs().mean() + cfg.kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
        ckpt.maybe_save(lambda step=step: {"step": step, "model": vae.state_dict(), "opt": opt.state_dict(),
                                 "rng": torch.get_rng_state()}, force=step == cfg.steps)
    vae.eval()
    metrics = evaluate(vae)
    vae.register_to_config(scaling_factor=1.0 / metrics["latent_std"])
    metrics.update(steps=step, scaling_factor=vae.config.scaling_factor, config=dataclasses.asdict(cfg))
    print(f"vae held-out (n=512, heldout seed 777): {metrics}", flush=True)
    vae.save_pretrained(cfg.out_dir)
    write_metrics(Path(cfg.run_dir) / cfg.name / "metrics.json", metrics)
    return metrics


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
