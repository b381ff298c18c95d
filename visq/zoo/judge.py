"""Quality checks of the zoo models: sampling helpers and the judges (judge CLIP, ViT classifier).

Used by the training scripts, ``pipelines/zoo_bench.py`` and ``tests/zoo``. Images are float tensors
(n, 3, 32, 32) in [0, 1].
"""

from __future__ import annotations

import torch

from visq.zoo import shapes


def generate_sd(pipe, prompts: list[str], seed: int = 0, steps: int = 20, guidance: float = 4.0,
                batch: int = 50) -> torch.Tensor:
    """Sample one image per prompt from a text-to-image pipeline; image i uses generator seed ``seed + i``."""
    out = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(seed + j) for j in range(i, min(i + batch, len(prompts)))]
        with torch.no_grad():
            im = pipe(prompts[i:i + batch], num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                      output_type="pt").images
        out.append(im.float().clamp(0, 1))
    return torch.cat(out)


DIT_SIZE = 1  # shapes-dit draws large shapes only (an index into shapes.SIZES); see pipelines/train_dit.py


def dit_data(n: int, seed: int, split: str = "heldout") -> shapes.ShapesBatch:
    """Real images of the distribution ``shapes-dit`` learns: visq-shapes with every shape large."""
    import numpy as np

    return shapes.generate(n, seed, split, fixed={"size": np.full(n, DIT_SIZE)})


def generate_dit(pipe, class_ids: list[int], seed: int = 0, steps: int = 20, guidance: float = 4.0,
                 batch: int = 60) -> torch.Tensor:
    """Sample one image per class id from a DiTPipeline; image i uses generator seed ``seed + i``."""
    out = []
    for i in range(0, len(class_ids), batch):
        gens = [torch.Generator().manual_seed(seed + j) for j in range(i, min(i + batch, len(class_ids)))]
        with torch.no_grad():
            im = pipe(class_ids[i:i + batch], num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                      output_type="np").images
        out.append(torch.from_numpy(im).permute(0, 3, 1, 2).float().clamp(0, 1))
    return torch.cat(out)


def attribute_accuracy(images: torch.Tensor, prompts: shapes.ShapesBatch, judge=None) -> dict:
    """Judge-CLIP zero-shot shape and colour accuracy of ``images`` w.r.t. the batch the prompts came from."""
    from visq.zoo import clip as zclip
    from visq.zoo import load

    judge = judge or load("judge-clip")
    labels = {k: getattr(prompts, k) for k in ("shape", "colour", "background", "position", "size")}
    out = {}
    for attr in ("shape", "colour"):
        pred = zclip.zero_shot(judge.model, judge.tokenizer, images, labels, attr)
        out[f"{attr}_acc"] = (pred == labels[attr]).float().mean().item()
    return out


def vit_predict(vit, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Class predictions (shape indices) of the zoo ViT for [0, 1] images."""
    from visq.zoo.vit import normalize

    preds = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            preds.append(vit(normalize(images[i:i + batch])).argmax(dim=1))
    return torch.cat(preds)
