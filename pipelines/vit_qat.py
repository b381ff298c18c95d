"""Quantization-aware training of the zoo ViT (LSQ-QAT or OFQ) by distillation from the float zoo ViT.

    python -m pipelines.vit_qat                                   # OFQ at W2A2 on shapes-vit
    python -m pipelines.vit_qat --recipe w3a3 --method lsq        # the LSQ-QAT baseline
    python -m pipelines.vit_qat --no-cga                          # an OFQ ablation (also --no-qkr, --no-statsq)
    accelerate launch -m pipelines.vit_qat --steps 3000           # the same job on several processes / GPUs

Training images are fresh visq-shapes ViT-task images every step (half of them blurred, as the zoo ViT was
trained), drawn from the step's generator; calibration images come from the same stream. Writes
``<run-dir>/<name>/`` (``qat/`` and ``anneal/`` checkpoints and metrics, ``oscillation.svg``, the quantized model
saved with ``visq.save`` under ``model/``, and ``metrics.json`` with held-out top-1). Rerun the same command to
resume after a crash; other settings on the same folder raise.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

import visq
import visq.qat
from eval.bench_vit import Config as BenchConfig
from eval.bench_vit import heldout, top1
from visq.zoo import load, shapes
from visq.zoo.training import blur_some
from visq.zoo.vit import VIT_DATA, normalize

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Config:
    """QAT job settings."""

    recipe: str = "w2a2"  # bit widths (w2a2, w3a3, w4a4, ...)
    method: str = "ofq"  # "ofq" or "lsq" (the LSQ-QAT baseline)
    statsq: bool = True  # OFQ: StatsQ weights (--no-statsq: LSQ weights)
    qkr: bool = True  # OFQ: query-key reparameterisation
    cga: bool = True  # OFQ: confidence-guided annealing in the annealing phase
    boundary_range: float = 0.005  # CGA: distance to a rounding threshold (integer units) that keeps training
    steps: int = 300  # QAT updates (phase 1)
    anneal_steps: int = 30  # constant-learning-rate updates after QAT (CGA's phase)
    batch: int = 32
    lr: float = 5e-4
    anneal_lr: float = 1e-5  # learning rate of the annealing phase
    weight_decay: float = 0.05
    warmup_steps: int = 20  # linear learning-rate warm-up steps
    hard_weight: float = 0.0  # weight of the label cross-entropy next to the distillation loss
    blur: float = 0.5  # fraction of each training batch blurred
    calib_size: int = 256  # calibration images for the initial steps
    seed: int = 0
    threads: int = 1
    eval_n: int = 1000  # held-out images for top-1
    eval_every: int = 0  # steps between held-out evaluations during training (0: at the end of each phase)
    eval_during: int = 200  # held-out images of the evaluations during training
    checkpoint_every: int = 50  # steps between checkpoints
    name: str = ""  # run folder name; empty: <method>[-ablations]-<recipe>-s<seed>
    run_dir: str = "runs/vit_qat"
    model_dir: str = ""  # load the ViT from here instead of the shipped zoo weights
    progress: bool = True


def run_name(cfg: Config) -> str:
    """The default run folder name of ``cfg``."""
    if cfg.name:
        return cfg.name
    off = [name for name in ("statsq", "qkr", "cga") if not getattr(cfg, name)]
    return "-".join([cfg.method, *(f"no_{n}" for n in off), cfg.recipe, f"s{cfg.seed}"])


def method_options(cfg: Config) -> dict[str, object]:
    """The method's keyword arguments; ablation flags apply to OFQ only."""
    if cfg.method == "ofq":
        return {"statsq": cfg.statsq, "qkr": cfg.qkr, "cga": cfg.cga, "boundary_range": cfg.boundary_range}
    if not (cfg.statsq and cfg.qkr and cfg.cga):
        raise ValueError(f"--no-statsq / --no-qkr / --no-cga are OFQ ablations; method {cfg.method!r} has none")
    return {}


def training_batches(batch: int, blur: float):
    """``draw(generator) -> (normalised images, shape labels)``: fresh ViT-task training images per call."""

    def draw(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        seed = int(torch.randint(2**62, (1,), generator=generator))
        images = shapes.generate(batch, seed, "train", VIT_DATA)
        return normalize(blur_some(images.images, blur, seed)), images.shape

    return draw


def qat_config(cfg: Config) -> visq.qat.QATConfig:
    """The training settings of ``cfg``."""
    return visq.qat.QATConfig(
        steps=cfg.steps, anneal_steps=cfg.anneal_steps, batch_size=cfg.batch, lr=cfg.lr, anneal_lr=cfg.anneal_lr,
        weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps, hard_weight=cfg.hard_weight, seed=cfg.seed,
        calib_size=cfg.calib_size, checkpoint_every=cfg.checkpoint_every, eval_every=cfg.eval_every,
    )


def main(cfg: Config = Config()) -> dict:
    """Train, evaluate on held-out images, save the quantized model; returns the metrics."""
    torch.set_num_threads(cfg.threads)
    options = method_options(cfg)
    run = Path(cfg.run_dir) / run_name(cfg)
    run.mkdir(parents=True, exist_ok=True)
    data = heldout(BenchConfig(eval_n=cfg.eval_n))
    quick = (data[0][: cfg.eval_during], data[1][: cfg.eval_during])
    teacher, student = (load("shapes-vit", folder=cfg.model_dir or None) for _ in range(2))
    qcfg = qat_config(cfg)
    visq.qat.train(student, cfg.recipe, training_batches(cfg.batch, cfg.blur), teacher=teacher, method=cfg.method,
                   config=qcfg, out_dir=run, evaluate=lambda m: {"top1_quick": top1(m, quick)},
                   progress=cfg.progress, **options)
    # calibration of this session + every session's training (a resumed run does not restart the clock)
    seconds = sum(json.loads((run / "time.json").read_text()).values())
    last = visq.qat.metrics_of(run, qcfg)[-1]
    metrics = {
        "top1": top1(student, data), "float_top1": top1(teacher, data), "osc_frac": last["osc_frac"],
        "osc_ema": last["osc_ema"], "train_s": seconds, "torch_threads": torch.get_num_threads(),
        "config": dataclasses.asdict(cfg),
    }
    visq.save(student, run / "model")
    (run / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    logger.info("%s: held-out top-1 %.2f (float %.2f), oscillating weights %.4f, %.0f s", run.name, metrics["top1"],
                metrics["float_top1"], metrics["osc_frac"], seconds)
    return metrics


if __name__ == "__main__":
    from pipelines._cli import parse

    logging.basicConfig(level=logging.INFO)
    main(parse(Config, description=__doc__.splitlines()[0]))
