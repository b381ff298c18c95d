"""Train the zoo class-conditional DiT over the shared VAE latents and assemble the ``shapes-dit`` DiTPipeline.

    python -m pipelines.train_dit        # needs the shipped shapes-sd VAE (rebuilt by python -m pipelines.train_vae)

Classes are the 6 shape names; colour, background, position and rotation vary freely, and every shape is large
(``visq.zoo.judge.dit_data``). Small shapes are a few latent pixels wide: with them, 5,100 steps of this recipe
drew empty backgrounds or blobs often enough that the zoo ViT recognised only 57% of the samples (and reads 90%
of VAE reconstructions of real images), so the DiT learns the large half of visq-shapes. The transformer's own
label embedding drops 10% of labels to the null class 1000 in train mode, which is what DiTPipeline uses for
classifier-free guidance. Loss: epsilon-prediction MSE with Min-SNR-gamma weighting (Hang et al., 2023:
``min(SNR, gamma) / SNR`` per sample), which moves the effort to the noisy steps that decide the layout; two
cosine learning-rate cycles (``steps``, then a warm restart of ``restart_steps``).
Quality: the zoo ViT's top-1 on generated images (needs ``shapes-vit``). Resumable from
``runs/zoo/shapes-dit/ckpt.pt``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from visq.zoo import load, shapes
from visq.zoo.builders import build_dit
from visq.zoo.training import WEIGHTS, Checkpointer, cosine_lr, ema_train_step, seed_all, shrink, write_metrics

GUIDANCE = 4.0
STEPS = 20


@dataclass(frozen=True)
class Config:
    """DiT training settings."""

    name: str = "shapes-dit"
    seed: int = 0
    steps: int = 8000
    batch: int = 128
    lr: float = 1e-3
    restart_steps: int = 6000  # a second cosine cycle (warm restart): 8,000 steps alone reached ~72-77% ViT top-1
    restart_lr: float = 5e-4
    snr_gamma: float = 5.0  # Min-SNR loss weighting
    ema: float = 0.999
    pool: int = 40_000
    threads: int = 1
    eval_samples: int = 300
    vae_dir: str = str(WEIGHTS / "shapes-sd" / "vae")  # the VAE both pipelines share (the loader reuses it)
    run_dir: str = "runs/zoo"
    out_dir: str = str(WEIGHTS)


def _pool(vae, cfg: Config, path: Path) -> dict:
    """Latent means/stds and shape labels of ``cfg.pool`` training images (cached in the run dir)."""
    from visq.zoo.judge import dit_data

    if path.exists():
        return torch.load(path)
    mean, std, labels = [], [], []
    for s in range(0, cfg.pool, 500):
        b = dit_data(500, cfg.seed * 1_000_003 + s + 7, "train")
        with torch.no_grad():
            post = vae.encode(shapes.to_float(b.images)).latent_dist
        mean.append(post.mean)
        std.append(post.std)
        labels.append(b.shape)
    data = {"mean": torch.cat(mean), "std": torch.cat(std), "label": torch.cat(labels)}
    torch.save(data, path)
    return data


def build_pipeline(transformer, vae):
    """DiTPipeline with DDIM and the shape names as labels, every module in eval mode."""
    from diffusers import DDIMScheduler, DiTPipeline

    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    id2label = {str(i): name for i, name in enumerate(shapes.SHAPES)}
    pipe = DiTPipeline(transformer=transformer.eval(), vae=vae.eval(), scheduler=sched, id2label=id2label)
    pipe.register_to_config(id2label=id2label)  # so save_pretrained/from_pretrained keep get_label_ids working
    pipe.set_progress_bar_config(disable=True)
    return pipe


def train(cfg: Config, vae):
    """The training loop; returns the EMA transformer and the step reached."""
    from diffusers import DDPMScheduler

    run = Path(cfg.run_dir) / cfg.name
    run.mkdir(parents=True, exist_ok=True)
    data = _pool(vae, cfg, run / "pool.pt")
    sf = vae.config.scaling_factor
    noise_sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                beta_schedule="scaled_linear")
    model = build_dit()
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    ckpt = Checkpointer(run, every_s=120)
    state, step = ckpt.load(), 0
    if state:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    gen = torch.Generator()
    model.train()
    t0 = time.time()
    snr = noise_sched.alphas_cumprod / (1 - noise_sched.alphas_cumprod)
    while step < cfg.steps + cfg.restart_steps:
        gen.manual_seed(cfg.seed * 1_000_003 + step)
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # the label embedding's own 10% null-class dropout
        idx = torch.randint(0, len(data["label"]), (cfg.batch,), generator=gen)
        lat = (data["mean"][idx] + data["std"][idx] * torch.randn(data["mean"][idx].shape, generator=gen)) * sf
        noise = torch.randn(lat.shape, generator=gen)
        t = torch.randint(0, 1000, (cfg.batch,), generator=gen)
        pred = model(noise_sched.add_noise(lat, noise, t), timestep=t, class_labels=data["label"][idx]).sample
        per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        weight = snr[t].clamp(max=cfg.snr_gamma) / snr[t]
        lr = cosine_lr(step, cfg.steps, cfg.lr, warmup=200) if step < cfg.steps else \
            cosine_lr(step - cfg.steps, cfg.restart_steps, cfg.restart_lr)
        ema_train_step(model, ema, opt, (weight * per_sample).mean(), lr, cfg.ema)
        loss = per_sample.mean()
        step += 1
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
        ckpt.maybe_save(lambda step=step: {"step": step, "model": model.state_dict(), "ema": ema.state_dict(),
                                 "opt": opt.state_dict()}, force=step in (cfg.steps, cfg.steps + cfg.restart_steps))
    return ema.eval(), step


def evaluate(pipe, n: int, seed: int = 4321) -> dict:
    """The zoo ViT's top-1 on ``n`` generated images (classes round-robin) w.r.t. the requested class."""
    from visq.zoo import judge

    classes = [i % len(shapes.SHAPES) for i in range(n)]
    images = judge.generate_dit(pipe, classes, seed=seed, steps=STEPS, guidance=GUIDANCE)
    pred = judge.vit_predict(load("shapes-vit"), images)
    return {"vit_top1": (pred == torch.tensor(classes)).float().mean().item()}


def main(cfg: Config = Config()) -> dict:
    """Train (or resume), export the EMA pipeline, measure it; returns the metrics."""
    from diffusers import AutoencoderKL

    torch.set_num_threads(cfg.threads)
    seed_all(cfg.seed)
    vae = AutoencoderKL.from_pretrained(cfg.vae_dir).eval().requires_grad_(False)
    model, step = train(cfg, vae)
    out = Path(cfg.out_dir) / cfg.name
    build_pipeline(model, vae).save_pretrained(out)
    shutil.rmtree(out / "vae")  # visq.zoo.load gives the DiT shapes-sd's VAE: no second copy ships
    shrink(out)
    pipe = load("shapes-dit", out)  # measure what ships: the bf16-stored weights
    metrics = {"steps": step, "config": dataclasses.asdict(cfg)}
    try:
        metrics.update(evaluate(pipe, cfg.eval_samples))
    except FileNotFoundError as e:  # the ViT may not be trained yet
        print(f"ViT metrics skipped: {e}")
    print(f"{cfg.name} (DDIM {STEPS} steps, guidance {GUIDANCE}, seed 4321): {metrics}", flush=True)
    write_metrics(Path(cfg.run_dir) / cfg.name / "metrics.json", metrics)
    return metrics


if __name__ == "__main__":
    from pipelines._cli import parse

    logging.basicConfig(level=logging.INFO)
    main(parse(Config, description=__doc__.splitlines()[0]))
