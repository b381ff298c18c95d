"""EfficientDM benchmark: distilled W4A8 / W4A4 zoo models vs the PTQ methods of ``eval.bench_diffusion``.

    python -m eval.bench_efficientdm      # writes eval/results/efficientdm.md and its README table (resumable)

Every cell trains with ``pipelines.diffusion_finetune`` in its own process (clean time and peak-memory numbers;
killed runs resume from their checkpoints), then its merged model is evaluated by ``eval.bench_diffusion``'s own
path (``bench_model``: same held-out prompts / classes, per-image seeds, sampler, FID references and scorers) as a
``load:<folder>`` configuration next to a float run. The PTQ rows are read from ``eval/results/diffusion_ptq.md``
(measured by ``python -m eval.bench_diffusion`` on the same models, seeds and prompts). Results are written after
every cell.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from eval.bench_diffusion import OUT as PTQ_RESULTS
from eval.bench_diffusion import Config as BenchConfig
from eval.bench_diffusion import _specs, bench_model
from eval.bench_qsched import _write_readme_table
from eval.pipes import QuantConfig

OUT = Path(__file__).parent / "results" / "efficientdm.md"
README_START, README_END = "<!-- efficientdm table start -->", "<!-- efficientdm table end -->"
PTQ_METHODS = ("qdiff", "eda", "dgq")
INIT = "efficientdm PTQ init (untrained)"
# variant -> flags of pipelines.diffusion_finetune (the ablations of the spec: TALSQ, scale-aware lr, LoRA rank)
VARIANTS = {
    "efficientdm": [],
    "2000 steps": ["--epochs", "100"],  # 10x the bench's training budget (the code trains 16,000 steps)
    "minmax init": ["--act-init", "minmax"],  # activation steps from per-timestep min-max instead of the MSE search
    "no TALSQ": ["--no-talsq"],
    "no scale-aware lr": ["--no-scale-aware"],
    "rank 8": ["--rank", "8"],
    "lr x10": ["--lora-lr", "0.05", "--act-lr", "0.01"],  # the bench's LoRA / activation lr times 10
}
METRICS = (("psnr", "PSNR (dB)", "{:.2f}"), ("ssim", "SSIM", "{:.3f}"), ("fid", "FID judge", "{:.2f}"),
           ("fid_inception", "FID Inception", "{:.1f}"), ("clip_score", "CLIP score", "{:.2f}"))


@dataclass(frozen=True)
class Config:
    models: tuple[str, ...] = ("shapes-sd", "shapes-dit")
    bits: tuple[str, ...] = ("w4a4", "w4a8")
    ablations: tuple[str, ...] = tuple(v for v in VARIANTS if v != "efficientdm")  # trained at ablation_bits only
    ablation_bits: str = "w4a4"  # recipe the ablations train at
    epochs: int = 10  # teacher trajectories of 20 steps: 200 optimizer steps per cell
    # this budget is 200 steps, not 16,000 (on shapes-dit W4A8, 40 steps: 16.7 -> 18.9 dB PSNR to float on 4
    # images with it, unchanged with the code's lr); 12.5x the code's LoRA lr (4e-4). 10x more (the "lr x10"
    # ablation, this bench's earlier default) ends below the untrained PTQ initialisation on both models
    lora_lr: float = 5e-3
    act_lr: float = 1e-3  # per unit of each activation quantizer's step size (the job's default)
    loss_weight: str = "x0"  # eps (the code) | mu (the paper) | x0 (pipelines.diffusion_finetune)
    seed: int = 0
    out: str = "runs/bench_efficientdm"
    train: bool = True  # --no-train: only evaluate what is trained, add Inception FIDs and write the tables
    inception: bool = True  # --no-inception: skip the Inception FIDs (minutes of CPU for their reference)


def cells(cfg: Config) -> list[tuple[str, str, str]]:
    """(model, bits, variant) in training order: the main rows first, then the ablations."""
    main = [(m, b, "efficientdm") for b in cfg.bits for m in cfg.models]
    return main + [(m, cfg.ablation_bits, v) for v in cfg.ablations for m in cfg.models]


def _slug(bits: str, variant: str) -> str:
    return f"{bits}-{variant.replace(' ', '-').replace('-lr', '')}"


def train_cell(model: str, bits: str, variant: str, cfg: Config) -> tuple[Path, dict[str, Any]]:
    """Train (or resume) one cell in a subprocess; returns the merged model folder and the job's result."""
    out = Path(cfg.out) / model / "train" / _slug(bits, variant)
    save = _saved(cfg, model, bits, variant)
    cmd = [sys.executable, "-m", "pipelines.diffusion_finetune", "--model", model, "--bits", bits,
           "--epochs", str(cfg.epochs), "--lora-lr", str(cfg.lora_lr), "--act-lr", str(cfg.act_lr),
           "--loss-weight", cfg.loss_weight,
           "--seed", str(cfg.seed), "--out", str(out), "--save", str(save), "--no-progress", *VARIANTS[variant]]
    subprocess.run(cmd, check=True)
    return save, json.loads((out / "result.json").read_text())


def ptq_rows(text: str) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """model -> metric label -> method -> bits -> value, from the tables of ``diffusion_ptq.md``."""
    out: dict[str, dict] = {}
    model = label = None
    header: list[str] = []
    for line in text.splitlines():
        if line.startswith("### "):
            model = line[4:].strip()
        elif line.startswith("**") and line.endswith("**"):
            label = line.strip("*")
        elif line.startswith("| method |"):
            header = [c.strip().lower() for c in line.strip("|").split("|")][1:]
        elif line.startswith("| ") and model and label and header and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            values = {b: float(v) for b, v in zip(header, cells[1:]) if v not in ("-", "")}
            out.setdefault(model, {}).setdefault(label, {})[cells[0]] = values
    return out


_PTQ_LABELS = {"psnr": "PSNR to float (dB)", "ssim": "SSIM to float", "fid": "FID, judge-CLIP features",
               "fid_inception": "FID, Inception", "clip_score": "CLIP score (judge)"}


def _row(name: str, metrics: dict[str, Any], extra: list[str]) -> str:
    cells = [fmt.format(metrics[k]) if isinstance(metrics.get(k), (int, float)) else "-" for k, _, fmt in METRICS]
    return f"| {name} | " + " | ".join(cells + extra) + " |"


def table(model: str, results: dict[str, dict], trained: dict[tuple[str, str], dict], ptq: dict, cfg: Config,
          bench: BenchConfig) -> list[str]:
    """One markdown table for ``model``: float, the PTQ rows, EfficientDM and its ablations."""
    head = "| config | " + " | ".join(label for _, label, _ in METRICS) + " | train s | peak MB | steps |"
    lines = [f"### {model}", "", head, "|---|" + "---|" * (len(METRICS) + 3)]
    lines.append(_row("float", results.get("float", {}), ["-", "-", "-"]))
    measured = ptq.get(model, {})
    for bits in cfg.bits:
        for method in PTQ_METHODS:
            values = {k: measured.get(label, {}).get(method, {}).get(bits) for k, label in _PTQ_LABELS.items()}
            if any(v is not None for v in values.values()):
                lines.append(_row(f"{bits.upper()} {method} (PTQ)", values, ["-", "-", "-"]))
        for (b, variant), info in sorted(trained.items(), key=lambda kv: kv[0][1] != INIT):
            if b != bits:
                continue
            metrics = results.get(info["name"], {})
            job = info["result"]
            extra = ["-", "-", "0"] if job is None else [
                f"{job['train_seconds']:.0f}", f"{job['peak_memory_mb']:.0f}", str(job["optimizer_steps"])]
            lines.append(_row(f"{bits.upper()} {variant}", metrics, extra))
    return lines + [""]


def _measured(cfg: Config, model: str) -> tuple[dict[str, dict], dict[tuple[str, str], dict]]:
    """What is on disk for ``model``: the evaluated metrics and every trained cell (any process may have made them),
    so runs split by model (``--models shapes-dit``) write one report together."""
    root = Path(cfg.out) / model
    done = root / "metrics_full.json"
    results = json.loads(done.read_text())["results"] if done.is_file() else {}
    trained = {}
    # every cell on disk, whichever run trained it, so a run limited to some ablations never shrinks the table
    for bits, variant in [(b, v) for b in dict.fromkeys((*cfg.bits, cfg.ablation_bits)) for v in VARIANTS]:
        job = root / "train" / _slug(bits, variant) / "result.json"
        name = QuantConfig.parse(f"load:{_saved(cfg, model, bits, variant)}").name
        if job.is_file() and name in results:
            trained[(bits, variant)] = {"name": name, "result": json.loads(job.read_text())}
    for bits in cfg.bits:  # the PTQ initialisation each main cell started from (LoRA B = 0: the untrained model)
        name = QuantConfig.parse(f"load:{_initial(cfg, model, bits)}").name
        if name in results:
            trained[(bits, INIT)] = {"name": name, "result": None}
    return results, trained


def report(cfg: Config, bench: BenchConfig) -> list[str]:
    ptq = ptq_rows(PTQ_RESULTS.read_text()) if PTQ_RESULTS.is_file() else {}
    lines = ["# EfficientDM (QALoRA + data-free distillation + TALSQ) on the zoo models", "",
             f"Command: `python -m eval.bench_efficientdm` (seed {cfg.seed}; evaluation exactly as "
             f"`eval.bench_diffusion`: {bench.prompts} held-out captions x {bench.per_prompt} images for shapes-sd, "
             f"{bench.dit_per_class} images per class for shapes-dit, DDIM {bench.steps} steps, guidance "
             f"{bench.guidance}; PTQ rows from `eval/results/diffusion_ptq.md`). Training: "
             f"`python -m pipelines.diffusion_finetune`, teacher trajectories of {bench.steps} DDIM steps "
             f"(one optimizer step per denoising step; `steps` column = optimizer steps), 2 calibration items per "
             f"trajectory, LoRA lr {cfg.lora_lr:g} x the layer's mean weight step, activation lr {cfg.act_lr:g} x the "
             f"quantizer's mean step, loss weight {cfg.loss_weight!r}, "
             "rank 32 and activation steps initialised by the MSE range search of each timestep unless stated; "
             "train s and peak MB (process RSS) measured on 2 CPU cores that may be shared with "
             "other jobs, so times are indicative. FID Inception is '-' for cells of a "
             "`--no-inception` run; cells not listed were not trained.", ""]
    for model in Config().models:
        results, trained = _measured(cfg, model)
        lines += table(model, results, trained, ptq, cfg, bench)
    return lines


def _saved(cfg: Config, model: str, bits: str, variant: str) -> Path:
    return Path(cfg.out) / model / "models" / f"efficientdm-{_slug(bits, variant)}"


def _initial(cfg: Config, model: str, bits: str) -> Path:
    """A copy of the main cell's PTQ initialisation (``<train>/ptq``) under a name of its own (the results key)."""
    return Path(cfg.out) / model / "models" / f"init-{bits}"


def _init_configs(cfg: Config, model: str) -> list[str]:
    """``load:`` configurations of the PTQ initialisations the trained main cells of ``model`` started from."""
    configs = []
    for bits in cfg.bits:
        src, dst = Path(cfg.out) / model / "train" / _slug(bits, "efficientdm") / "ptq", _initial(cfg, model, bits)
        if (src / "quant.json").is_file() and not dst.is_dir():
            shutil.copytree(src, dst)
        if dst.is_dir():
            configs.append(f"load:{dst}")
    return configs


def main(cfg: Config = Config()) -> dict[str, Any]:
    bench = BenchConfig(seed=cfg.seed, out=cfg.out, inception=False)  # Inception FIDs once at the end (below)
    specs = _specs(bench)
    for model, bits, variant in cells(cfg) if cfg.train else []:
        train_cell(model, bits, variant, cfg)
        _, trained = _measured(cfg, model)
        configs = ["float"] + [f"load:{_saved(cfg, model, b, v)}" for b, v in [*trained, (bits, variant)]
                               if v != INIT] + _init_configs(cfg, model)
        bench_model(model, replace(specs[model], configs=list(dict.fromkeys(configs))), bench)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text("\n".join(report(cfg, bench)) + "\n")
    for model in cfg.models:  # cells trained by an earlier, interrupted run are evaluated here too
        ready = [(b, v) for _, b, v in cells(replace(cfg, models=(model,)))
                 if (Path(cfg.out) / model / "train" / _slug(b, v) / "result.json").is_file()]
        if ready:
            configs = ["float"] + [f"load:{_saved(cfg, model, b, v)}" for b, v in ready] + _init_configs(cfg, model)
            bench_model(model, replace(specs[model], configs=configs), bench)
        if cfg.inception:
            _add_inception(model, cfg, bench)
    lines = report(cfg, bench)
    OUT.write_text("\n".join(lines) + "\n")
    _write_readme_table(lines[2:], Path(__file__).parent.parent / "README.md", README_START, README_END)
    print("\n".join(lines))
    return {model: _measured(cfg, model)[0] for model in cfg.models}


def _add_inception(model: str, cfg: Config, bench: BenchConfig) -> None:
    """Inception FIDs of every evaluated configuration that lacks one (its 1,000-image reference costs minutes of
    CPU, so it is computed once per run, not per cell)."""
    from eval.bench_diffusion import _inception_fids

    done = Path(cfg.out) / model / "metrics_full.json"
    if not done.is_file():
        return
    saved = json.loads(done.read_text())
    _inception_fids(model, done.parent, saved["results"], replace(bench, inception=True))
    done.write_text(json.dumps(saved, indent=1))


if __name__ == "__main__":
    from pipelines._cli import parse

    main(parse(Config))
