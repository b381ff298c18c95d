"""Train the zoo *text CLIP* contrastively on visq-shapes captions (fresh batches every step).

    python -m pipelines.train_clip                 # -> visq/zoo/weights/text-clip/ (+ the shapes-sd text encoder)

The judge CLIP uses the same loop with other sizes and seed: ``python -m pipelines.train_judge_clip``.
Resumable: rerun the same command; it continues from ``runs/zoo/<name>/ckpt.pt``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from visq.zoo import clip as zclip
from visq.zoo import shapes
from visq.zoo.tokenizer import build_clip_tokenizer
from visq.zoo.training import WEIGHTS, Checkpointer, blur_some, cosine_lr, seed_all, shrink, write_metrics


@dataclass(frozen=True)
class Config:
    """Training settings for one zoo CLIP."""

    name: str = "text-clip"
    arch: zclip.ClipArch = zclip.TEXT_CLIP
    seed: int = 0
    steps: int = 1500
    batch: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    hard_negatives: bool = False  # half of each batch repeats the other half's captions with another shape
    openclip: dict | None = None  # build an open_clip CLIP from this config instead of a transformers CLIPModel
    blur: float = 0.0  # fraction of training images Gaussian-blurred (sigma 0.4-1.2): judges see decoded latents
    aux_shape: float = 0.0  # weight of an auxiliary shape-classification loss on the vision tower (head discarded)
    threads: int = 1
    eval_size: int = 1000
    run_dir: str = "runs/zoo"
    out_dir: str = str(WEIGHTS)


def _tokens(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", truncation=True, return_tensors="pt").input_ids


def _batch(cfg: Config, step: int) -> shapes.ShapesBatch:
    """Fresh training batch; with ``hard_negatives`` the second half differs from the first only in shape,
    because random batches rarely need the shape to tell captions apart (shape is learned last otherwise)."""
    seed = cfg.seed * 1_000_003 + step
    if not cfg.hard_negatives:
        return shapes.generate(cfg.batch, seed, "train")
    half = shapes.generate(cfg.batch // 2, seed, "train")
    other = (half.shape + torch.randint(1, len(shapes.SHAPES), half.shape.shape,
                                        generator=torch.Generator().manual_seed(seed))) % len(shapes.SHAPES)
    fixed = {"shape": other.numpy(), **{k: getattr(half, k).numpy() for k in ("colour", "background", "position",
                                                                              "size")}}
    twin = shapes.generate(cfg.batch // 2, seed + 500_000_000, "train", fixed=fixed)
    return shapes.ShapesBatch(torch.cat([half.images, twin.images]), half.captions + twin.captions,
                              *(torch.cat([getattr(half, k), getattr(twin, k)])
                                for k in ("shape", "colour", "background", "position", "size")))


def evaluate(model, tokenizer, n: int, seed: int) -> dict:
    """Held-out retrieval top-1 and zero-shot shape/colour accuracy."""
    model.eval()
    b = shapes.generate(n, seed, "heldout")
    labels = {k: getattr(b, k) for k in ("shape", "colour", "background", "position", "size")}
    out = {"retrieval_top1": zclip.retrieval_top1(model, tokenizer, b.images, b.captions)}
    for attr in ("shape", "colour"):
        pred = zclip.zero_shot(model, tokenizer, b.images, labels, attr)
        out[f"zero_shot_{attr}"] = (pred == labels[attr]).float().mean().item()
    model.train()
    return out


def save(model, cfg: Config) -> None:
    """Write the final CLIPModel folder, large tensors stored as bf16.

    The tokenizer ships once, in ``shapes-sd/tokenizer`` (the loaders use it for both CLIPs): 1.4 MB each saved.
    """
    out = Path(cfg.out_dir) / cfg.name
    if cfg.openclip:
        from safetensors.torch import save_file

        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "open_clip_model.safetensors")
        (out / "open_clip_config.json").write_text(json.dumps(cfg.openclip, indent=2) + "\n")
    else:
        model.save_pretrained(out)
    shrink(out)


def main(cfg: Config = Config()) -> dict:
    """Train, evaluate on held-out data, save weights and metrics; returns the metrics."""
    torch.set_num_threads(cfg.threads)
    seed_all(cfg.seed)
    tokenizer = build_clip_tokenizer()
    model = zclip.build_openclip(cfg.openclip) if cfg.openclip else zclip.build_clip(cfg.arch)
    # the auxiliary head speeds up shape learning, which pure contrastive training on these captions leaves for last
    aux = torch.nn.Linear(cfg.arch.vision_hidden, len(shapes.SHAPES))
    params = list(model.parameters()) + (list(aux.parameters()) if cfg.aux_shape else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt = Checkpointer(Path(cfg.run_dir) / cfg.name)
    state, step = ckpt.load(), 0
    if state:
        model.load_state_dict(state["model"])
        if "aux" in state:
            aux.load_state_dict(state["aux"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    model.train()
    t0 = time.time()
    while step < cfg.steps:
        b = _batch(cfg, step)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.steps, cfg.lr)
        img = zclip.encode_images(model, zclip.preprocess(blur_some(b.images, cfg.blur, step)))
        txt = zclip.encode_texts(model, _tokens(tokenizer, b.captions))
        logits = zclip.logit_scale(model) * img @ txt.T
        # duplicate captions in a batch are positives too: soft targets over identical captions
        same = torch.tensor([[a == c for c in b.captions] for a in b.captions], dtype=torch.float32)
        tgt = same / same.sum(1, keepdim=True)
        loss = (F.cross_entropy(logits, tgt) + F.cross_entropy(logits.T, tgt)) / 2
        if cfg.aux_shape:
            pooled = model.vision_model(pixel_values=zclip.preprocess(b.images)).pooler_output
            loss = loss + cfg.aux_shape * F.cross_entropy(aux(pooled), b.shape)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f} lr {opt.param_groups[0]['lr']:.2e} {time.time() - t0:.0f}s",
                  flush=True)
        if step % 500 == 0:
            print(f"step {step} eval {evaluate(model, tokenizer, 500, cfg.seed)}", flush=True)
        ckpt.maybe_save(lambda step=step: {"step": step, "model": model.state_dict(), "aux": aux.state_dict(),
                                                   "opt": opt.state_dict()},
                        force=step == cfg.steps)
    model.eval()
    metrics = {**evaluate(model, tokenizer, cfg.eval_size, seed=12345), "steps": step,
               "config": dataclasses.asdict(cfg)}
    print(f"{cfg.name} held-out (n={cfg.eval_size}, heldout seed 12345): {metrics}", flush=True)
    save(model, cfg)
    write_metrics(Path(cfg.run_dir) / cfg.name / "metrics.json", metrics)
    return metrics


if __name__ == "__main__":
    from pipelines._cli import parse

    logging.basicConfig(level=logging.INFO)
    main(parse(Config, description=__doc__.splitlines()[0]))
