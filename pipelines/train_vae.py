"""Train the zoo VAE (diffusers AutoencoderKL, 32x32x3 <-> 8x8x4) on visq-shapes.

    python -m pipelines.train_vae        # -> runs/zoo/vae/final (copied into the pipelines by their scripts)

Loss: MSE + 0.5 L1 on [-1, 1] pixels plus a tiny KL term. Then a second stage fine-tunes the decoder alone with
the encoder frozen (as Stable Diffusion's ft-MSE VAE did): the latent space the denoisers are trained on stays
exactly the same, so a sharper decoder improves every pipeline without retraining them. ``scaling_factor`` =
1 / std of the latent means over held-out images, stored in the config. Resumable from ``runs/zoo/vae/ckpt.pt``.
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
    decoder_steps: int = 2500  # stage 2: decoder-only fine-tuning, encoder (and so the latent space) frozen
    decoder_lr: float = 1e-3
    threads: int = 1
    eval_size: int = 512
    run_dir: str = "runs/zoo"
    out_dir: str = "runs/zoo/vae/final"  # not shipped itself: the pipelines carry copies


def evaluate(vae, n: int = 512) -> dict:
    """Held-out reconstruction PSNR (dB, on [0, 1]), the latent std used for ``scaling_factor`` and, when the
    judge CLIP is available, its zero-shot shape/colour accuracy on the reconstructions (a ceiling for any
    pipeline decoding through this VAE)."""
    b = shapes.generate(n, 777, "heldout")
    x = shapes.to_float(b.images)
    with torch.no_grad():
        mean = vae.encode(x).latent_dist.mean
        rec = vae.decode(mean).sample.clamp(-1, 1)
    mse = ((rec - x) / 2).pow(2).mean().item()
    out = {"psnr": 10 * torch.log10(torch.tensor(1.0 / mse)).item(), "latent_std": mean.std().item()}
    try:
        from visq.zoo.judge import attribute_accuracy

        out.update({f"judge_rec_{k}": v for k, v in attribute_accuracy((rec + 1) / 2, b).items()})
    except FileNotFoundError:  # the judge CLIP is trained separately and may not exist yet
        pass
    return out


def _loss(vae, x: torch.Tensor, kl_weight: float, decoder_only: bool) -> torch.Tensor:
    with torch.set_grad_enabled(not decoder_only):
        post = vae.encode(x).latent_dist
        z = post.sample()
    rec = vae.decode(z).sample
    loss = (rec - x).pow(2).mean() + 0.5 * (rec - x).abs().mean()
    return loss if decoder_only else loss + kl_weight * post.kl().mean()


def _optimizer(vae, cfg: Config, stage: int) -> torch.optim.Optimizer:
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters()) if stage == 2 \
        else vae.parameters()
    return torch.optim.AdamW(params, lr=cfg.decoder_lr if stage == 2 else cfg.lr, weight_decay=0.0)


def main(cfg: Config = Config()) -> dict:
    """Train, measure, save; returns the metrics."""
    torch.set_num_threads(cfg.threads)
    seed_all(cfg.seed)
    vae = build_vae()
    ckpt = Checkpointer(Path(cfg.run_dir) / cfg.name)
    state, step, opt_stage = ckpt.load(), 0, 1
    if state:
        vae.load_state_dict(state["model"])
        step, opt_stage = state["step"], state.get("stage", 1)
        torch.set_rng_state(state["rng"])
    opt = _optimizer(vae, cfg, opt_stage)
    if state:
        opt.load_state_dict(state["opt"])
    vae.train()
    t0 = time.time()
    total = cfg.steps + cfg.decoder_steps
    while step < total:
        if step >= cfg.steps and opt_stage == 1:  # stage 2 begins: a fresh optimiser over the decoder only
            opt_stage = 2
            opt = _optimizer(vae, cfg, opt_stage)
        x = shapes.to_float(shapes.generate(cfg.batch, cfg.seed * 1_000_003 + step, "train").images)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step - cfg.steps, cfg.decoder_steps, cfg.decoder_lr) if opt_stage == 2 \
                else cosine_lr(step, cfg.steps, cfg.lr)
        loss = _loss(vae, x, cfg.kl_weight, decoder_only=opt_stage == 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
        if step == cfg.steps or step % 500 == 0 and step > cfg.steps:
            vae.eval()
            print(f"step {step} held-out {evaluate(vae, cfg.eval_size // 2)}", flush=True)
            vae.train()
        snapshot = {"step": step, "stage": opt_stage, "model": vae.state_dict(), "opt": opt.state_dict(),
                    "rng": torch.get_rng_state()}  # state_dict()s are references: cheap to build every step
        ckpt.maybe_save(lambda snapshot=snapshot: snapshot, force=step in (cfg.steps, total))
    vae.eval()
    metrics = evaluate(vae, cfg.eval_size)
    vae.register_to_config(scaling_factor=1.0 / metrics["latent_std"])
    metrics.update(steps=step, scaling_factor=vae.config.scaling_factor, config=dataclasses.asdict(cfg))
    print(f"vae held-out (n={cfg.eval_size}, heldout seed 777): {metrics}", flush=True)
    vae.save_pretrained(cfg.out_dir)
    write_metrics(Path(cfg.run_dir) / cfg.name / "metrics.json", metrics)
    return metrics


if __name__ == "__main__":
    from pipelines._cli import parse

    logging.basicConfig(level=logging.INFO)
    main(parse(Config, description=__doc__.splitlines()[0]))
