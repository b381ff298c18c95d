"""Q-Sched benchmark: float, quantized, and quantized + Q-Sched (grid and coarse-to-fine search) at few steps.

    python -m eval.bench_qsched          # writes eval/results/qsched.md and its README table (resumable)

Per zoo model and step count, one batch run (``eval.images.run``) over the same held-out prompts / classes and seeds
as ``eval.bench_diffusion``: float, each recipe, and each recipe's saved Q-Sched pipeline (``load:<folder>``, made by
``eval.qsched_zoo.tune_and_save`` from the run's own quantized model). The search samples training captions only and
optimises JAQ = judge-CLIP log cosine + k * colourfulness; the evaluation is FID (judge-CLIP and Inception features),
PSNR / SSIM to the same-seed float images and the judge CLIP score (the compatibility term's model, on other prompts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from eval.bench_diffusion import _inception_fids, _reference
from eval.images import GenSpec, RunSpec, Scorers, judge_clip, run
from eval.pipes import QuantConfig, weights_fingerprint
from eval.qsched_zoo import calibration, tune_and_save

OUT = Path(__file__).parent / "results" / "qsched.md"
README_START, README_END = "<!-- qsched table start -->", "<!-- qsched table end -->"


@dataclass(frozen=True)
class Config:
    models: tuple[str, ...] = ("shapes-sd", "shapes-dit")
    bits: tuple[str, ...] = ("w4a8", "w4a4")  # recipes (default method: min-max), or <recipe>@<method>
    steps: tuple[int, ...] = (4, 8)
    searches: tuple[str, ...] = ("grid", "coarse")  # grid: the paper's exhaustive grid; coarse: 3x3 box halving
    grid_points: int = 6  # the paper's grid is 10 x 10 over [0.8, 1.1]; 6 x 6 keeps a CPU run affordable
    rounds: int = 2
    search_prompts: int = 8  # training captions (class ids for the DiT) the search generates for
    k: float = 2.0  # JAQ weight of the image-quality (colourfulness) term against the CLIP term
    prompts: int = 32
    per_prompt: int = 2
    dit_per_class: int = 12
    calib_prompts: int = 32
    guidance: float = 4.0
    seed: int = 0
    reference_n: int = 1000
    inception: bool = True
    inception_reference_n: int = 1000  # Inception features cost ~100x the judge's on CPU: a smaller set fits a run
    tune: bool = True  # --no-tune: only assemble what earlier runs tuned (missing searches show as dashes)
    out: str = "runs/bench_qsched"
    # results file; its README table sits between <!-- <file stem> table start / end --> markers, where present
    results: str = str(OUT)


def _spec(name: str, steps: int, configs: list[str], cfg: Config) -> RunSpec:
    from visq.zoo.shapes import SHAPES, ShapesDataset

    gen, calib = GenSpec(steps, cfg.guidance), calibration(name, cfg.calib_prompts, cfg.seed)
    if name == "shapes-dit":
        return RunSpec(name, classes=list(range(len(SHAPES))), per_prompt=cfg.dit_per_class, seed=cfg.seed, gen=gen,
                       configs=configs, calib=calib)
    prompts = ShapesDataset("heldout", size=cfg.prompts, seed=cfg.seed + 1).captions
    return RunSpec(name, prompts=prompts, per_prompt=cfg.per_prompt, seed=cfg.seed, gen=gen, configs=configs,
                   calib=calib)


def bench(name: str, steps: int, cfg: Config, clip: Any) -> dict[str, Any]:
    """Tune every (recipe, search), then generate and score every configuration of one model at ``steps``."""
    folder = Path(cfg.out) / f"{name}-{steps}steps"
    calib = calibration(name, cfg.calib_prompts, cfg.seed)
    searches = {}
    for bits in cfg.bits:
        for search in cfg.searches:
            saved = folder / "qsched" / f"{QuantConfig.parse(bits).name}-qsched-{search}"
            if not cfg.tune and not (saved / "qsched.json").is_file():
                continue
            searches[(bits, search)] = (saved, tune_and_save(
                name, bits, folder / "_models", calib, steps, cfg.guidance, saved, search=search,
                prompts=cfg.search_prompts, seed=cfg.seed, k=cfg.k, grid_points=cfg.grid_points, rounds=cfg.rounds))
    configs = ["float", *cfg.bits, *[f"load:{saved}" for saved, _ in searches.values()]]
    done = folder / "metrics_full.json"
    cached = json.loads(done.read_text())["results"] if done.is_file() else {}
    scorers = Scorers(clip, _reference(name, clip, cfg), clip if name != "shapes-dit" else None, batch_size=64)
    results = run(_spec(name, steps, configs, cfg), folder, scorers)
    for config, metrics in results.items():  # keep the Inception FIDs of earlier runs
        metrics.update({k: v for k, v in cached.get(config, {}).items() if k == "fid_inception"})
    if cfg.inception:
        _inception_fids(name, folder, results, replace(cfg, reference_n=cfg.inception_reference_n))
    done.write_text(json.dumps({"weights": weights_fingerprint(name), "results": results}, indent=1))
    return {"results": results, "searches": {f"{b}|{s}": info for (b, s), (_, info) in searches.items()}}


def _fmt(value: Any, fmt: str) -> str:
    return fmt.format(value) if isinstance(value, (int, float)) else "-"


def _recovered(metrics: dict, quant: dict, float_: dict, key: str) -> str:
    """Share of the quantized-vs-float gap that Q-Sched closes (negative: it widened); "-" where the quantized
    FID is within 5% of float's (no gap worth a ratio: a tiny gap turns noise into thousands of percent)."""
    q, f, m = quant.get(key), float_.get(key), metrics.get(key)
    if not all(isinstance(v, (int, float)) for v in (q, f, m)) or q - f <= 0.05 * abs(f):
        return "-"
    return f"{100 * (q - m) / (q - f):.0f}%"


def table(name: str, steps: int, out: dict[str, Any], cfg: Config) -> list[str]:
    """Markdown rows for one model and step count."""
    results, searches = out["results"], out["searches"]
    float_ = results.get("float", {})
    lines = [f"### {name}, {steps} steps", "",
             "| config | FID judge | FID Inception | CLIP score | PSNR | SSIM "
             "| FID gap closed (judge / Inception; - if < 5%) | search: (m, s), candidates, pipeline calls, s |",
             "|---|---|---|---|---|---|---|---|"]

    def row(label: str, metrics: dict, quant: dict | None, info: dict | None) -> str:
        gap = (f"{_recovered(metrics, quant, float_, 'fid')} / {_recovered(metrics, quant, float_, 'fid_inception')}"
               if quant is not None else "")
        search = (f"({info['model']:.3f}, {info['sample']:.3f}), {info['candidates']}, {info['pipeline_calls']}, "
                  f"{info['seconds']:.0f}" if info else "")
        return (f"| {label} | {_fmt(metrics.get('fid'), '{:.3f}')} | {_fmt(metrics.get('fid_inception'), '{:.1f}')} | "
                f"{_fmt(metrics.get('clip_score'), '{:.2f}')} | {_fmt(metrics.get('psnr'), '{:.2f}')} | "
                f"{_fmt(metrics.get('ssim'), '{:.3f}')} | {gap} | {search} |")

    lines.append(row("float", float_, None, None))
    for bits in cfg.bits:
        quant = results.get(QuantConfig.parse(bits).name, {})
        lines.append(row(bits.upper(), quant, None, None))
        for search in cfg.searches:
            saved = f"loaded-{QuantConfig.parse(bits).name}-qsched-{search}"
            lines.append(row(f"{bits.upper()} + Q-Sched {search}", results.get(saved, {}), quant,
                             searches.get(f"{bits}|{search}")))
    return lines + [""]


def _write_readme_table(block: list[str], readme: Path, start: str = README_START, end: str = README_END) -> None:
    """Replace the lines between the ``start`` and ``end`` markers of ``readme`` by ``block`` (other benchmarks'
    README tables use it with their own markers)."""
    text = readme.read_text()
    if start not in text or end not in text:
        return  # the README section is added once by hand; this command keeps its table current
    head, rest = text.split(start, 1)
    readme.write_text(head + start + "\n" + "\n".join(block) + "\n" + end + rest.split(end, 1)[1])


def _flags(cfg: Config) -> str:
    """The flags of ``cfg`` that differ from the defaults, as a command line would give them."""
    parts = []
    for f in fields(Config):
        value, flag = getattr(cfg, f.name), "--" + f.name.replace("_", "-")
        if value == f.default or f.name == "tune":  # --no-tune only reuses searches the same command makes
            continue
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{f.name.replace('_', '-')}")
        else:
            parts.append(f"{flag} {' '.join(map(str, value)) if isinstance(value, tuple) else value}")
    return " ".join(parts)


def main(cfg: Config = Config()) -> dict[str, Any]:
    clip = judge_clip()
    measured = {(m, s): bench(m, s, cfg, clip) for m in cfg.models for s in cfg.steps}
    header = (
        f"Command: `python -m eval.bench_qsched` (seed {cfg.seed}; DDIM, guidance {cfg.guidance}; evaluation on "
        f"{cfg.prompts} held-out captions x {cfg.per_prompt} images for shapes-sd, {cfg.dit_per_class} images "
        f"per class for shapes-dit; quantizers calibrated on {cfg.calib_prompts} training captions / every class "
        f"x 4 at the sampling step count; FID references: held-out real visq-shapes images ({cfg.reference_n} for "
        f"the judge, {cfg.inception_reference_n} for Inception), large shapes only for shapes-dit). Search: JAQ = "
        f"mean log judge-CLIP cosine + {cfg.k:g} x mean "
        f"colourfulness on {cfg.search_prompts} training captions (class ids for the DiT), no float images; grid = "
        f"{cfg.grid_points}x{cfg.grid_points} over [0.8, 1.1]^2 plus the identity; coarse = 3x3 grids halving "
        f"around the best {cfg.rounds} times, plus the identity. (m, s) are the first-step c_eps and c_x, ramping "
        "linearly to 1 at the last step. Optimised: judge-CLIP cosine (search captions) and colourfulness. "
        "Evaluated: FIDs and PSNR / SSIM (never optimised) and the judge CLIP score (same model as the "
        "compatibility term, other captions: not an independent check). Search seconds were measured on 2 CPU "
        "cores shared with other jobs."
    )
    if cfg.results != str(OUT):
        header = header.replace("`python -m eval.bench_qsched`", f"`python -m eval.bench_qsched {_flags(cfg)}`")
    lines = ["# Q-Sched: quantization-aware scheduler coefficients on the zoo pipelines", "", header, ""]
    for (model, steps), out in measured.items():
        lines += table(model, steps, out, cfg)
    results = Path(cfg.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text("\n".join(lines) + "\n")
    _write_readme_table(lines[2:], Path(__file__).parent.parent / "README.md",
                        f"<!-- {results.stem} table start -->", f"<!-- {results.stem} table end -->")
    print("\n".join(lines))
    return {f"{m}-{s}": out for (m, s), out in measured.items()}


if __name__ == "__main__":
    from pipelines._cli import parse

    main(parse(Config))
