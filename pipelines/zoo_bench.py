"""Measure every quality bar of the shipped zoo (the numbers in README.md's zoo section); draw the SD sample grid.

    python -m pipelines.zoo_bench                       # all models; writes runs/zoo/bench.json
    python -m pipelines.zoo_bench --only clip sd --grid docs/zoo_sd_grid.png
    python -m pipelines.zoo_bench --only dit --dit-grid docs/zoo_dit_grid.png

Seeds and sizes are fixed in ``Config``; every model is loaded through ``visq.zoo.load`` (shipped weights).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from visq.zoo import clip as zclip
from visq.zoo import judge, load, shapes
from visq.zoo.frechet import frechet_distance
from visq.zoo.training import write_metrics


@dataclass(frozen=True)
class Config:
    """Benchmark sizes and seeds."""

    only: tuple[str, ...] = ("clip", "vit", "sd", "dit")  # which models to measure
    vit_n: int = 4000  # held-out images for the ViT's top-1
    clip_n: int = 1000  # held-out images for the CLIPs' retrieval and zero-shot accuracy
    sd_n: int = 300  # held-out prompts sampled from shapes-sd
    dit_n: int = 300  # samples drawn from shapes-dit (50 per class)
    steps: int = 20
    guidance: float = 4.0
    seed: int = 4321
    grid: str = ""  # SD sample grid PNG path ("" = none)
    dit_grid: str = ""  # DiT sample grid PNG path
    out: str = "runs/zoo/bench.json"


def bench_clip(cfg: Config) -> dict:
    """Judge and text CLIP: held-out retrieval top-1 and zero-shot shape/colour accuracy on real images."""
    from pipelines.train_clip import evaluate

    out = {}
    for name in ("judge-clip", "text-clip"):
        c = load(name)
        out[name] = evaluate(c.model, c.tokenizer, cfg.clip_n, seed=12345)
    return out


def bench_vit(cfg: Config) -> dict:
    """ViT held-out top-1 (clutter + noise task), float and naive min-max W4A4 / W3A3 (calibration seed 0): a
    real ViT loses accuracy at W4A4, so a zoo ViT that does not would make a too-easy benchmark."""
    from eval import bench_vit

    vit_cfg = bench_vit.Config(methods=("minmax",), bits=("w4a4", "w3a3"), seeds=(0,), eval_n=cfg.vit_n)
    data = bench_vit.heldout(vit_cfg)
    out = {"top1": bench_vit.top1(load("shapes-vit"), data) / 100}
    for bits in vit_cfg.bits:
        out[f"minmax_{bits}_top1"] = bench_vit.run_cell(vit_cfg, "minmax", bits, 0, data)["top1"] / 100
    out.update(vit_on_decoded(load("shapes-vit"), cfg.clip_n, cfg.seed))
    return out


def vae_roundtrip(vae, images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> encoded (latent mean) and decoded by ``vae``, as [0, 1] floats."""
    with torch.no_grad():
        decoded = vae.decode(vae.encode(shapes.to_float(images)).latent_dist.mean).sample
    return ((decoded + 1) / 2).clamp(0, 1)


def vit_on_decoded(vit, n: int, seed: int) -> dict:
    """The ViT as a judge of generated images: top-1 on clean held-out images and on their VAE reconstructions
    (the shared VAE's 8x8 latents blur small shapes; no denoiser can score above what its decoder allows)."""
    real = shapes.generate(n, seed + 3, "heldout")
    recon = vae_roundtrip(load("shapes-sd").vae, real.images)
    clean = judge.vit_predict(vit, real.images.float() / 255)
    return {"clean_top1": (clean == real.shape).float().mean().item(),
            "vae_reconstruction_top1": (judge.vit_predict(vit, recon) == real.shape).float().mean().item()}


def bench_sd(cfg: Config) -> dict:
    """Judge shape/colour accuracy w.r.t. the prompt and judge-feature Frechet distance, trained vs untrained."""
    from visq.zoo.builders import build_unet

    jc = load("judge-clip")
    pipe = load("shapes-sd")
    prompts = shapes.generate(cfg.sd_n, cfg.seed, "heldout")
    real = shapes.generate(cfg.sd_n, cfg.seed + 1, "heldout").images
    t0 = time.time()
    images = judge.generate_sd(pipe, prompts.captions, cfg.seed, cfg.steps, cfg.guidance)
    sec = (time.time() - t0) / cfg.sd_n
    out = judge.attribute_accuracy(images, prompts, jc)
    feats = zclip.image_features(jc.model, real)
    out["fd_judge"] = frechet_distance(zclip.image_features(jc.model, images), feats)
    torch.manual_seed(0)
    pipe.unet = build_unet(pipe.text_encoder.config.hidden_size).eval()  # same pipeline, untrained UNet
    untrained = judge.generate_sd(pipe, prompts.captions, cfg.seed, cfg.steps, cfg.guidance)
    out["fd_judge_untrained"] = frechet_distance(zclip.image_features(jc.model, untrained), feats)
    ref = shapes.generate(cfg.sd_n, cfg.seed + 2, "heldout").images
    out["fd_judge_real_vs_real"] = frechet_distance(zclip.image_features(jc.model, ref), feats)
    out["sec_per_image"] = sec
    return out


def bench_dit(cfg: Config) -> dict:
    """The zoo ViT's top-1 on DiT samples w.r.t. the requested class, with its ceiling through this VAE (the ViT on
    VAE reconstructions of real large-shape images), and judge-feature Frechet distances to such real images,
    trained vs untrained."""
    from visq.zoo.builders import build_dit

    vit, jc, pipe = load("shapes-vit"), load("judge-clip"), load("shapes-dit")
    classes = [i % len(shapes.SHAPES) for i in range(cfg.dit_n)]
    real = judge.dit_data(cfg.dit_n, cfg.seed + 1)  # the large-shape half of visq-shapes the DiT learns
    feats = zclip.image_features(jc.model, real.images)
    t0 = time.time()
    images = judge.generate_dit(pipe, classes, cfg.seed, cfg.steps, cfg.guidance)
    sec = (time.time() - t0) / cfg.dit_n
    out = {"vit_top1": (judge.vit_predict(vit, images) == torch.tensor(classes)).float().mean().item()}
    recon = vae_roundtrip(pipe.vae, real.images)
    out["vit_top1_vae_reconstructions"] = (judge.vit_predict(vit, recon) == real.shape).float().mean().item()
    out["fd_judge"] = frechet_distance(zclip.image_features(jc.model, images), feats)
    torch.manual_seed(0)
    pipe.transformer = build_dit().eval()  # same pipeline, untrained transformer
    untrained = judge.generate_dit(pipe, classes, cfg.seed, cfg.steps, cfg.guidance)
    out["vit_top1_untrained"] = (judge.vit_predict(vit, untrained) == torch.tensor(classes)).float().mean().item()
    out["fd_judge_untrained"] = frechet_distance(zclip.image_features(jc.model, untrained), feats)
    out["sec_per_image"] = sec
    return out


def _save_grid(path: str, rows: list[tuple[str, torch.Tensor]], text_w: int, cell: int = 96) -> None:
    """A PNG with one row per (label, images): the label on the left, the images 3x upscaled to its right."""
    from PIL import Image, ImageDraw

    per = max(len(ims) for _, ims in rows)
    grid = Image.new("RGB", (text_w + per * (cell + 4), len(rows) * (cell + 4)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (label, ims) in enumerate(rows):
        draw.text((6, r * (cell + 4) + cell // 2 - 6), label, fill="black")
        for c, im in enumerate(ims):
            pil = Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
            grid.paste(pil.resize((cell, cell), Image.NEAREST), (text_w + c * (cell + 4), r * (cell + 4)))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def sd_grid(path: str, seed: int = 0, steps: int = 20, guidance: float = 4.0, n: int = 16) -> None:
    """Held-out prompts, each with 4 samples (generator seeds ``seed + 1000 * row + 0..3``)."""
    pipe = load("shapes-sd")
    prompts = shapes.generate(n, 2024, "heldout").captions
    rows = [(p, judge.generate_sd(pipe, [p] * 4, seed=seed + 1000 * r, steps=steps, guidance=guidance))
            for r, p in enumerate(prompts)]
    _save_grid(path, rows, text_w=420)


def dit_grid(path: str, seed: int = 0, steps: int = 20, guidance: float = 4.0, per: int = 8) -> None:
    """Each DiT class with ``per`` samples (generator seeds ``seed + 1000 * row + 0..per-1``)."""
    pipe = load("shapes-dit")
    rows = [(name, judge.generate_dit(pipe, [c] * per, seed=seed + 1000 * c, steps=steps, guidance=guidance))
            for c, name in enumerate(shapes.SHAPES)]
    _save_grid(path, rows, text_w=90)


def main(cfg: Config = Config()) -> dict:
    """Run the selected benchmarks; print and save the metrics."""
    torch.set_num_threads(2)
    benches = {"clip": bench_clip, "vit": bench_vit, "sd": bench_sd, "dit": bench_dit}
    metrics = {"config": dataclasses.asdict(cfg)}
    for name in cfg.only:
        t0 = time.time()
        metrics[name] = benches[name](cfg)
        print(f"{name} ({time.time() - t0:.0f}s): {json.dumps(metrics[name])}", flush=True)
    if cfg.grid:
        sd_grid(cfg.grid, steps=cfg.steps, guidance=cfg.guidance)
        print(f"grid -> {cfg.grid}")
    if cfg.dit_grid:
        dit_grid(cfg.dit_grid, steps=cfg.steps, guidance=cfg.guidance)
        print(f"DiT grid -> {cfg.dit_grid}")
    write_metrics(cfg.out, metrics)
    return metrics


if __name__ == "__main__":
    from pipelines._cli import parse

    main(parse(Config, description=__doc__.splitlines()[0]))
