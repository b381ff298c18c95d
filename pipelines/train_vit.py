"""Train the zoo ViT classifier (timm DeiT-tiny-style, 32x32, patch 4) on visq-shapes with clutter and noise.

    python -m pipelines.train_vit        # -> visq/zoo/weights/shapes-vit/model.safetensors

Label = the main shape (6 classes); fresh training images every step, half of them Gaussian-blurred so that the
ViT also reads the soft shapes of VAE-decoded samples (it judges the zoo DiT; unblurred, it read only ~81% of
VAE reconstructions of clean real images). Prints held-out top-1.
Resumable from ``runs/zoo/shapes-vit/ckpt.pt``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from visq.zoo import shapes
from visq.zoo.builders import build_vit
from visq.zoo.training import WEIGHTS, Checkpointer, blur_some, cosine_lr, seed_all, write_metrics
from visq.zoo.vit import VIT_DATA, normalize


@dataclass(frozen=True)
class Config:
    """ViT training settings."""

    name: str = "shapes-vit"
    seed: int = 0
    steps: int = 2500
    batch: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    blur: float = 0.5  # fraction of each training batch blurred (visq.zoo.training.blur_some)
    threads: int = 1
    eval_size: int = 4000
    run_dir: str = "runs/zoo"
    out_dir: str = str(WEIGHTS)


def heldout(n: int, seed: int = 0) -> shapes.ShapesBatch:
    """The held-out evaluation set of the ViT task."""
    return shapes.generate(n, seed, "heldout", VIT_DATA)


def top1(model, n: int, seed: int = 0) -> float:
    """Held-out top-1 of ``model`` on ``n`` images."""
    from visq.zoo.judge import vit_predict

    b = heldout(n, seed)
    model.eval()
    acc = (vit_predict(model, b.images.float() / 255.0) == b.shape).float().mean().item()
    return acc


def main(cfg: Config = Config()) -> dict:
    """Train, evaluate on held-out data, save; returns the metrics."""
    torch.set_num_threads(cfg.threads)
    seed_all(cfg.seed)
    model = build_vit()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt = Checkpointer(Path(cfg.run_dir) / cfg.name)
    state, step = ckpt.load(), 0
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    t0 = time.time()
    model.train()
    while step < cfg.steps:
        b = shapes.generate(cfg.batch, cfg.seed * 1_000_003 + step, "train", VIT_DATA)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.steps, cfg.lr, warmup=200)
        logits = model(normalize(blur_some(b.images, cfg.blur, step)))
        loss = F.cross_entropy(logits, b.shape, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
        if step % 500 == 0:
            print(f"step {step} heldout top1 (n=1000) {top1(model, 1000, seed=99):.4f}", flush=True)
            model.train()
        ckpt.maybe_save(lambda step=step: {"step": step, "model": model.state_dict(), "opt": opt.state_dict()},
                        force=step == cfg.steps)
    model.eval()
    metrics = {"top1": top1(model, cfg.eval_size), "steps": step, "config": dataclasses.asdict(cfg)}
    print(f"shapes-vit held-out top-1 (n={cfg.eval_size}, heldout seed 0): {metrics['top1']:.4f}", flush=True)
    from safetensors.torch import save_file

    out = Path(cfg.out_dir) / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
    write_metrics(Path(cfg.run_dir) / cfg.name / "metrics.json", metrics)
    return metrics


if __name__ == "__main__":
    from pipelines._cli import parse

    logging.basicConfig(level=logging.INFO)
    main(parse(Config, description=__doc__.splitlines()[0]))
