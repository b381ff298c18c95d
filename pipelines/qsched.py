"""Q-Sched job: quantize a zoo pipeline (or load a saved one), tune its few-step scheduler coefficients, save both.

    python -m pipelines.qsched                                  # shapes-sd, W4A4, 4 steps, coarse-to-fine search
    python -m pipelines.qsched --config w4a8 --steps 8 --search grid --grid-points 10   # the paper's 10x10 grid
    python -m pipelines.qsched --model shapes-dit --prompts 12

Output: ``<out>/<model>-<steps>steps/qsched/<config>-qsched-<search>/`` holds ``visq.save``'s files plus
``scheduler/`` (the tuned ``QSchedScheduler``) and ``qsched.json`` (coefficients, JAQ scores, candidates, pipeline
calls, seconds). ``visq.load(visq.zoo.load(model), folder)`` installs the scheduler too; evaluate the folder with
``python -m eval.images run --configs float load:<folder> --steps <steps> ...``. The JAQ terms are listed in
``eval/qsched_zoo.py``; the search samples training-split captions only, and no float images.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.pipes import QuantConfig
from eval.qsched_zoo import calibration, tune_and_save


@dataclass(frozen=True)
class Config:
    """Every field is a flag (``--grid-points 10``)."""

    model: str = "shapes-sd"  # zoo name (shapes-sd, shapes-dit)
    config: str = "w4a4"  # <recipe>[@<method>] | load:<saved quantized folder>
    steps: int = 4
    guidance: float = 4.0
    search: str = "coarse"  # coarse (3x3 grids, box halving `rounds` times) | grid (grid_points^2)
    grid_points: int = 10
    rounds: int = 2
    prompts: int = 8  # training captions (or class ids) each candidate samples
    k: float = 2.0  # JAQ weight of the quality term
    calib_prompts: int = 32  # training captions that calibrate the quantizers (as eval.bench_diffusion)
    seed: int = 0
    out: str = "runs/qsched"


def main(cfg: Config = Config()) -> dict[str, Any]:
    out = Path(cfg.out) / f"{Path(cfg.model).name}-{cfg.steps}steps"  # quantizers calibrate at the step count
    name = QuantConfig.parse(cfg.config).name
    info = tune_and_save(cfg.model, cfg.config, out / "_models", calibration(cfg.model, cfg.calib_prompts, cfg.seed),
                         cfg.steps, cfg.guidance, out / "qsched" / f"{name}-qsched-{cfg.search}",
                         search=cfg.search, prompts=cfg.prompts, seed=cfg.seed, k=cfg.k, grid_points=cfg.grid_points,
                         rounds=cfg.rounds)
    print(json.dumps(info, indent=1))
    return info


if __name__ == "__main__":
    from pipelines._cli import parse

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main(parse(Config, description=__doc__.split("\n")[0]))
