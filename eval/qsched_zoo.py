"""Q-Sched on the zoo pipelines: the JAQ terms it optimises and one tune-and-save step (used by
``pipelines/qsched.py`` and ``eval/bench_qsched.py``).

Optimised (JAQ, ``visq.qsched.JAQ``), reference-free, no float images:
- compatibility: ``log`` of the judge CLIP's image-text cosine, per image. Text-to-image: the prompt. DiT: the best
  matching caption of the class (every large-shape caption of that shape; the DiT draws large shapes only).
- quality: the Hasler-Suesstrunk colourfulness of the image (``sqrt(var(rg) + var(yb)) + 0.3 * sqrt(mean(rg)^2 +
  mean(yb)^2)``, rg = R - G, yb = (R + G) / 2 - B, on [0, 1] pixels) [RECON: the paper's CLIP-IQA needs OpenAI CLIP
  weights that are not available offline; visq-shapes images are flat saturated colours and quantization noise
  greys them, so colourfulness is a no-reference quality statistic for this domain].
Evaluated (never optimised): FID on judge-CLIP and Inception features, PSNR / SSIM to same-seed float images. The
judge CLIP score on held-out captions is reported too, but its model is the compatibility term's (on other prompts).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def colourfulness(images: torch.Tensor, conditions: Sequence[Any] = ()) -> torch.Tensor:
    """Hasler & Suesstrunk (2003) colourfulness of (N, 3, H, W) images in [0, 1]: one value per image."""
    r, g, b = images.double().unbind(dim=1)
    rg, yb = (r - g).flatten(1), (0.5 * (r + g) - b).flatten(1)
    spread = (rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False)).sqrt()
    return spread + 0.3 * (rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2).sqrt()


class JudgeCompatibility:
    """``log`` judge-CLIP cosine of each image with its prompt, or with the best caption of its DiT class."""

    def __init__(self, judge: Any = None) -> None:
        from visq import zoo

        self.judge = judge or zoo.load("judge-clip")
        self._class_texts: dict[int, torch.Tensor] = {}

    def _texts(self, texts: list[str]) -> torch.Tensor:
        from visq.zoo.clip import text_features

        return text_features(self.judge.model, self.judge.tokenizer, texts)

    def _class_features(self, class_id: int) -> torch.Tensor:
        if class_id not in self._class_texts:
            from itertools import product

            from visq.zoo.judge import DIT_SIZE
            from visq.zoo.shapes import COLOUR_NAMES, POSITIONS, caption

            pairs = [(c, b) for c, b in product(range(len(COLOUR_NAMES)), repeat=2) if c != b]
            texts = [caption(class_id, c, b, p, DIT_SIZE) for (c, b), p in product(pairs, range(len(POSITIONS)))]
            self._class_texts[class_id] = self._texts(texts)
        return self._class_texts[class_id]

    def __call__(self, images: torch.Tensor, conditions: Sequence[Any]) -> torch.Tensor:
        from visq.zoo.clip import image_features

        feats = image_features(self.judge.model, images)
        if isinstance(conditions[0], str):
            cos = (feats * self._texts(list(conditions))).sum(dim=-1)
        else:
            cos = torch.stack([(self._class_features(int(c)) @ f).max() for f, c in zip(feats, conditions)])
        return cos.clamp(min=1e-4).log()


def zoo_reward(k: float = 2.0, judge: Any = None):
    """The JAQ objective used on the zoo pipelines (see the module docstring)."""
    from visq.qsched import JAQ

    return JAQ(JudgeCompatibility(judge), colourfulness, k)


def calibration(model: str, n: int, seed: int) -> list:
    """The quantizers' calibration set as in eval.bench_diffusion: training captions, or every DiT class four times."""
    from visq.zoo.shapes import SHAPES, ShapesDataset

    if model == "shapes-dit":
        return list(range(len(SHAPES))) * 4
    return ShapesDataset("train", size=n, seed=seed + 2).captions


def search_conditions(model: str, n: int, seed: int) -> list:
    """What the search samples: ``n`` training-split captions (text-to-image) or ``n`` class ids cycling the classes
    (DiT); never the evaluation prompts."""
    if model == "shapes-dit":
        from visq.zoo.shapes import SHAPES

        return [i % len(SHAPES) for i in range(n)]
    from visq.zoo.shapes import ShapesDataset

    return ShapesDataset("train", size=n, seed=seed + 3).captions


def tune_and_save(model: str, config: str, models_dir: Path, calib: list | None, steps: int, guidance: float,
                  out: Path, *, search: str, prompts: int, seed: int = 0, k: float = 2.0, grid_points: int = 10,
                  rounds: int = 2, judge: Any = None) -> dict[str, Any]:
    """Prepare the quantized configuration ``config`` (as ``eval.images.run`` does, reusing ``models_dir``), tune
    Q-Sched for ``steps`` steps and save the quantized pipeline with its scheduler to ``out`` (``visq.save``).
    Skipped when ``out/qsched.json`` exists; returns that record."""
    import visq
    from eval.pipes import QuantConfig, prepare
    from visq.qsched import tune

    record = out / "qsched.json"
    if record.is_file():
        return json.loads(record.read_text())
    pipe = prepare(model, QuantConfig.parse(config), models_dir, calib,
                   {"num_inference_steps": steps, "guidance_scale": guidance})
    result = tune(pipe, search_conditions(model, prompts, seed), steps, reward=zoo_reward(k, judge), search=search,
                  grid_points=grid_points, rounds=rounds, seed=seed, guidance_scale=guidance)
    visq.save(pipe, out)
    info = {"model": model, "config": config, "prompts": prompts, "k": k, "grid_points": grid_points,
            "rounds": rounds, **result.to_dict(), "identity_compatibility": result.identity.compatibility,
            "identity_quality": result.identity.quality, "compatibility": result.best.compatibility,
            "quality": result.best.quality}
    record.write_text(json.dumps(info, indent=1))
    log.info("%s %s: %s", model, config, info)
    return info
