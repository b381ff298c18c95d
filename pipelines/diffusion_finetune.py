"""EfficientDM on a zoo pipeline: PTQ initialisation, data-free distillation from the float model, LoRA merge, save.

    python -m pipelines.diffusion_finetune --model shapes-sd --bits w4a4 --epochs 10
    accelerate launch --num_processes 2 -m pipelines.diffusion_finetune ...      # data parallel (CPU or GPUs)

Calibration uses the same captions (shapes-sd) / classes (shapes-dit) and sampler settings as
``eval.bench_diffusion``; each distillation epoch is one teacher trajectory of ``batch`` of those items. Writes
``<out>/ptq`` (the quantized initialisation), ``<out>/train`` (checkpoints, metrics.jsonl: rerunning resumes),
``<out>/model`` or ``--save`` (the merged model, ``visq.load``-able) and ``<out>/result.json`` (time, peak
memory, losses).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Config:
    """Every field is a command-line flag (``--lora-lr 0.01``)."""

    model: str = "shapes-sd"  # shapes-sd | shapes-dit
    bits: str = "w4a4"
    rank: int = 32  # LoRA rank of every quantized layer
    talsq: bool = True  # per-timestep learned activation step sizes (--no-talsq: one step per quantizer)
    act_init: str = "mse"  # activation step initialisation from calibration: mse (the code's) | minmax | lsq
    scale_aware: bool = True  # per-layer LoRA lr proportional to the mean weight step
    epochs: int = 10  # teacher trajectories; optimizer steps = epochs * steps
    batch: int = 2  # prompts / classes per trajectory
    steps: int = 20  # DDIM steps of calibration, distillation and evaluation
    guidance: float = 4.0
    lora_lr: float = 4e-4  # per unit of the layer's mean weight step (the code's 1 / 2500)
    act_lr: float = 1e-3  # per unit of each activation quantizer's mean step size
    weight_step_lr: float = 1e-6  # learning rate of the LSQ weight step sizes
    loss_weight: str = "eps"  # eps (the code) | mu (the paper) | x0 (each step's share of the final sample)
    seed: int = 0
    out: str = "runs/diffusion_finetune/shapes-sd-w4a4"
    save: str = ""  # folder of the merged model (default <out>/model)
    progress: bool = True


def calibration_items(model: str, seed: int = 0) -> list[Any]:
    """The calibration items ``eval.bench_diffusion`` uses for ``model`` (so the PTQ rows start from the same data)."""
    from eval.bench_diffusion import Config as BenchConfig
    from eval.bench_diffusion import _specs

    specs = _specs(BenchConfig(seed=seed))
    if model not in specs:
        raise ValueError(f"unknown model {model!r}; this job knows {', '.join(specs)}")
    return specs[model].calib


def main(cfg: Config = Config()) -> dict[str, Any]:
    import visq
    from eval.dist import state
    from eval.pipes import load_pipeline
    from visq.finetune import DistillSettings, finetune, merge_lora

    out = Path(cfg.out)
    result_file = out / "result.json"
    if result_file.is_file() and json.loads(result_file.read_text())["config"] == asdict(cfg):
        return json.loads(result_file.read_text())
    items = calibration_items(cfg.model, cfg.seed)
    pipe = load_pipeline(cfg.model)
    ptq, quantize_seconds = out / "ptq", None
    with state().main_process_first():
        if (ptq / "quant.json").is_file() and (ptq / "seconds.json").is_file():
            visq.load(pipe, ptq)
        else:  # a PTQ folder without its seconds.json was cut short between the two writes: quantize again
            start = time.perf_counter()
            visq.quantize(pipe, cfg.bits, method="efficientdm", calib=items, progress=cfg.progress, rank=cfg.rank,
                          talsq=cfg.talsq, act_init=cfg.act_init, seed=cfg.seed,
                          calib_options={"num_inference_steps": cfg.steps, "guidance_scale": cfg.guidance})
            quantize_seconds = time.perf_counter() - start
            if state().is_main_process:
                visq.save(pipe, ptq)
                (ptq / "seconds.json").write_text(json.dumps({"quantize_seconds": quantize_seconds}))
    settings = DistillSettings(batch_size=cfg.batch, guidance_scale=cfg.guidance, lora_lr=cfg.lora_lr,
                               scale_aware=cfg.scale_aware, weight_step_lr=cfg.weight_step_lr, act_lr=cfg.act_lr,
                               loss_weight=cfg.loss_weight)
    trained = finetune(pipe, items, epochs=cfg.epochs, settings=settings, out_dir=str(out / "train"), seed=cfg.seed,
                       progress=cfg.progress, log_every=cfg.steps, checkpoint_every=cfg.steps)
    from visq.train import read_metrics

    epochs = read_metrics(out / "train")
    merge_lora(pipe)
    result = {
        "config": asdict(cfg),
        "quantize_seconds": json.loads((ptq / "seconds.json").read_text())["quantize_seconds"],
        "train_seconds": _train_seconds(out, trained.seconds),
        "peak_memory_mb": trained.peak_memory_mb,
        "optimizer_steps": cfg.epochs * cfg.steps,
        "loss_first_epoch": epochs[0]["loss"],
        "loss_last_epoch": epochs[-1]["loss"],
    }
    if state().is_main_process:
        visq.save(pipe, cfg.save or out / "model")
        result_file.write_text(json.dumps(result, indent=1))
    log.info("%s: %s", cfg.out, {k: v for k, v in result.items() if k != "config"})
    return result


def _train_seconds(out: Path, seconds: float) -> float:
    """Training seconds summed over resumed sessions (each call of ``fit`` reports its own)."""
    file = out / "train" / "seconds.json"
    sessions = json.loads(file.read_text()) if file.is_file() else []
    sessions.append(seconds)
    file.write_text(json.dumps(sessions))
    return float(sum(sessions))


if __name__ == "__main__":
    from pipelines._cli import parse

    logging.basicConfig(level=logging.INFO)
    print(json.dumps({k: v for k, v in main(parse(Config)).items() if k != "config"}, indent=1))
