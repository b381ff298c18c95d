"""Train the zoo text-to-image UNet and assemble the ``shapes-sd`` StableDiffusionPipeline.

    python -m pipelines.train_sd                     # needs visq/zoo/weights/{vae,text-clip} (train_vae, train_clip)

Epsilon-prediction DDPM training over the VAE's 8x8x4 latents (a precomputed pool of held-fixed training
images), conditioned on the frozen text CLIP's last hidden states exactly as StableDiffusionPipeline computes
them (max-length padding, no attention mask); 10% of captions are dropped to "" for classifier-free guidance.
An EMA of the weights is what ships. Resumable from ``runs/zoo/shapes-sd/ckpt.pt``; ``export_only=True``
(``python -m pipelines.train_sd --export-only``) writes the pipeline from the current checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from visq.zoo import load, shapes
from visq.zoo.builders import build_unet
from visq.zoo.tokenizer import build_clip_tokenizer, save_slim
from visq.zoo.training import WEIGHTS, Checkpointer, cosine_lr, ema_train_step, seed_all, shrink, write_metrics

GUIDANCE = 4.0
STEPS = 20


@dataclass(frozen=True)
class Config:
    """Text-to-image training settings."""

    name: str = "shapes-sd"
    seed: int = 0
    steps: int = 4500
    batch: int = 64
    lr: float = 1e-3
    ema: float = 0.999
    caption_dropout: float = 0.1
    pool: int = 40_000
    threads: int = 1
    eval_samples: int = 200
    export_only: bool = False
    vae_dir: str = "runs/zoo/vae/final"  # written by pipelines.train_vae
    clip_dir: str = str(WEIGHTS / "text-clip")
    tokenizer_dir: str = ""  # "" = build the CLIP tokenizer from open_clip's vocabulary file
    run_dir: str = "runs/zoo"
    out_dir: str = str(WEIGHTS)


def _frozen_parts(cfg: Config):
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    vae = AutoencoderKL.from_pretrained(cfg.vae_dir).eval()
    text = CLIPTextModel.from_pretrained(cfg.clip_dir).eval()
    tok = CLIPTokenizer.from_pretrained(cfg.tokenizer_dir) if cfg.tokenizer_dir else build_clip_tokenizer()
    for m in (vae, text):
        m.requires_grad_(False)
    return vae, text, tok


def _pool(vae, tok, cfg: Config, path: Path) -> dict:
    """Latent means/stds and token ids of ``cfg.pool`` training images (cached in the run dir)."""
    if path.exists():
        return torch.load(path)
    mean, std, ids = [], [], []
    for s in range(0, cfg.pool, 500):
        b = shapes.generate(500, cfg.seed * 1_000_003 + s, "train")
        with torch.no_grad():
            post = vae.encode(shapes.to_float(b.images)).latent_dist
        mean.append(post.mean)
        std.append(post.std)
        ids.append(tok(b.captions, padding="max_length", truncation=True, return_tensors="pt").input_ids)
    data = {"mean": torch.cat(mean), "std": torch.cat(std), "ids": torch.cat(ids)}
    torch.save(data, path)
    return data


def build_pipeline(unet, vae, text, tok):
    """Assemble the StableDiffusionPipeline (DDIM, no safety checker), every module in eval mode."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet.eval(), scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def train(cfg: Config, vae, text, tok):
    """The training loop; returns the EMA UNet."""
    from diffusers import DDPMScheduler

    run = Path(cfg.run_dir) / cfg.name
    run.mkdir(parents=True, exist_ok=True)
    data = _pool(vae, tok, cfg, run / "pool.pt")
    sf = vae.config.scaling_factor
    with torch.no_grad():
        empty = text(tok([""], padding="max_length", return_tensors="pt").input_ids)[0]
    noise_sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                beta_schedule="scaled_linear")
    unet = build_unet(text.config.hidden_size)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=0.01)
    ckpt = Checkpointer(run, every_s=180)
    state, step = ckpt.load(), 0
    if state:
        unet.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    gen = torch.Generator().manual_seed(cfg.seed)
    unet.train()
    t0 = time.time()
    while step < cfg.steps and not cfg.export_only:
        gen.manual_seed(cfg.seed * 1_000_003 + step)  # the batch depends on the step only: resumes are exact
        idx = torch.randint(0, len(data["ids"]), (cfg.batch,), generator=gen)
        lat = (data["mean"][idx] + data["std"][idx] * torch.randn(data["mean"][idx].shape, generator=gen)) * sf
        with torch.no_grad():
            cond = text(data["ids"][idx])[0]
        drop = torch.rand(cfg.batch, generator=gen) < cfg.caption_dropout
        cond = torch.where(drop[:, None, None], empty.expand_as(cond), cond)
        noise = torch.randn(lat.shape, generator=gen)
        t = torch.randint(0, 1000, (cfg.batch,), generator=gen)
        pred = unet(noise_sched.add_noise(lat, noise, t), t, cond).sample
        loss = F.mse_loss(pred, noise)
        ema_train_step(unet, ema, opt, loss, cosine_lr(step, cfg.steps, cfg.lr, warmup=200), cfg.ema)
        step += 1
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
        ckpt.maybe_save(lambda step=step: {"step": step, "model": unet.state_dict(), "ema": ema.state_dict(),
                                 "opt": opt.state_dict()}, force=step == cfg.steps)
    return ema.eval(), step


def evaluate(pipe, n: int, seed: int = 4321) -> dict:
    """Judge-CLIP zero-shot shape/colour accuracy w.r.t. the prompt on ``n`` generated images (held-out prompts)."""
    from visq.zoo import judge

    b = shapes.generate(n, seed, "heldout")
    images = judge.generate_sd(pipe, b.captions, seed=seed, steps=STEPS, guidance=GUIDANCE)
    return judge.attribute_accuracy(images, b)


def main(cfg: Config = Config()) -> dict:
    """Train (or resume), export the EMA pipeline, measure it; returns the metrics."""
    torch.set_num_threads(cfg.threads)
    seed_all(cfg.seed)
    vae, text, tok = _frozen_parts(cfg)
    unet, step = train(cfg, vae, text, tok)
    out = Path(cfg.out_dir) / cfg.name
    build_pipeline(unet, vae, text, tok).save_pretrained(out)
    save_slim(tok, out / "tokenizer")
    shrink(out)
    pipe = load("shapes-sd", out)  # measure what ships: the bf16-stored weights
    metrics = {"steps": step, "config": dataclasses.asdict(cfg)}
    try:
        metrics.update(evaluate(pipe, cfg.eval_samples))
    except FileNotFoundError as e:  # the judge CLIP may not be trained yet
        print(f"judge metrics skipped: {e}")
    print(f"{cfg.name} (DDIM {STEPS} steps, guidance {GUIDANCE}, heldout prompt seed 4321): {metrics}", flush=True)
    write_metrics(Path(cfg.run_dir) / cfg.name / "metrics.json", metrics)
    return metrics


if __name__ == "__main__":
    from pipelines._cli import parse

    logging.basicConfig(level=logging.INFO)
    main(parse(Config, description=__doc__.splitlines()[0]))
