"""Diffusion PTQ benchmark: every method at W8A8 / W4A8 / W4A4 on the zoo text-to-image pipeline and the zoo DiT.

    python -m eval.bench_diffusion            # writes eval/results/diffusion_ptq.md (resumable: reruns skip done work)

Each model runs through the batch runner (``eval.images.run``): the same prompts / classes and per-image seeds for
every configuration, the quantized models calibrated on separate training captions (or all classes) with the same
sampler settings as generation. Metrics: FID against held-out real visq-shapes images on the judge CLIP's features
and on the standard Inception, CLIP score (judge CLIP, text-to-image only), PSNR / SSIM to the same-seed float
images, and calibration time. Which layers stay float is listed per method (results are not comparable without it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.images import GenSpec, RunSpec, Scorers, judge_clip, reference_from_arg, run
from eval.pipes import QuantConfig, weights_fingerprint

OUT = Path(__file__).parent / "results" / "diffusion_ptq.md"


@dataclass(frozen=True)
class Config:
    models: tuple[str, ...] = ("shapes-sd", "shapes-dit")  # zoo pipelines to benchmark
    # method[:key=value...]; the last row is DGQ without its log2 attention-probability quantizer (an ablation)
    methods: tuple[str, ...] = ("minmax", "qdiff", "temporal", "eda", "dgq", "dgq:log_probs=false")
    bits: tuple[str, ...] = ("w8a8", "w4a8", "w4a4")  # recipes, one table column each
    prompts: int = 32  # held-out captions (shapes-sd)
    per_prompt: int = 2  # images per caption
    dit_per_class: int = 12  # images per class (shapes-dit)
    calib_prompts: int = 32  # training captions that calibrate (shapes-sd)
    steps: int = 20
    guidance: float = 4.0
    seed: int = 0
    reference_n: int = 1000  # real held-out images the FIDs compare against
    inception: bool = True  # also the standard Inception FID (slower)
    out: str = "runs/bench_diffusion"


def _specs(cfg: Config) -> dict[str, RunSpec]:
    from visq.zoo.shapes import SHAPES, ShapesDataset

    configs = ["float"] + [f"{b}@{m}" for b in cfg.bits for m in cfg.methods]
    gen = GenSpec(cfg.steps, cfg.guidance)
    prompts = ShapesDataset("heldout", size=cfg.prompts, seed=cfg.seed + 1).captions
    calib = ShapesDataset("train", size=cfg.calib_prompts, seed=cfg.seed + 2).captions
    classes = list(range(len(SHAPES)))
    return {
        "shapes-sd": RunSpec("shapes-sd", prompts=prompts, per_prompt=cfg.per_prompt, seed=cfg.seed, gen=gen,
                             configs=configs, calib=calib),
        "shapes-dit": RunSpec("shapes-dit", classes=classes, per_prompt=cfg.dit_per_class, seed=cfg.seed, gen=gen,
                              configs=configs, calib=classes * 4),
    }


def _reference(name: str, net, cfg: Config):
    """Feature statistics of held-out real images of the distribution ``name`` learned (the DiT: large shapes)."""
    if name == "shapes-dit":
        from eval.stats import reference_stats
        from visq.zoo.judge import dit_data

        return reference_stats(net, dit_data(cfg.reference_n, 0).images, None)
    return reference_from_arg("shapes", net, cfg.reference_n, None, False)


def _inception_fids(name: str, folder: Path, results: dict[str, dict], cfg: Config) -> None:
    """Add ``fid_inception`` to every configuration that lacks it (those of a previous run keep theirs)."""
    from eval.fid import fid_images, inception
    from eval.io import scan_images

    todo = [config for config, metrics in results.items() if "fid_inception" not in metrics]
    if not todo:
        return
    net = inception()
    reference = _reference(name, net, cfg)
    for config in todo:
        results[config]["fid_inception"] = fid_images(net, scan_images(folder / config).paths, reference)


def bench_model(name: str, spec: RunSpec, cfg: Config) -> dict[str, dict]:
    """Generate and score every configuration of one zoo model (cached in metrics_full.json; configurations added
    later run on their own, the cached ones are not redone)."""
    folder, weights = Path(cfg.out) / name, weights_fingerprint(spec.model)
    done = folder / "metrics_full.json"
    cached: dict[str, dict] = {}
    if done.is_file():
        saved = json.loads(done.read_text())
        if saved.get("weights") != weights:
            raise ValueError(f"{done} was measured on other {name} weights; use another --out to start afresh")
        cached = saved["results"]
        if all(QuantConfig.parse(c).name in cached for c in spec.configs):
            return cached
    clip = judge_clip()
    reference = _reference(name, clip, cfg)
    scorers = Scorers(clip, reference, clip if spec.prompts else None, batch_size=64)
    results = run(spec, folder, scorers)
    for config, metrics in cached.items():  # a rerun rescores the same images: keep what only the cache has
        if config in results:
            results[config] = {**metrics, **results[config]}
    if cfg.inception:
        _inception_fids(name, folder, results, cfg)
    for config, metrics in results.items():
        info_path = folder / config / "config.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        metrics["calib_seconds"] = info.get("calib_seconds")
        quant = folder / "_models" / config / "quant.json"
        if quant.is_file():  # layers with weights kept float, with the reason (norms are never quantized)
            kept = json.loads(quant.read_text())["float_layers"]
            metrics["float_layers"] = {k: v for k, v in kept.items() if "not a quantizable layer" not in v}
    done.write_text(json.dumps({"weights": weights, "results": results}, indent=1))
    return results


def _name(bits: str, method: str) -> str:
    """The results key (QuantConfig name) of ``bits`` quantized with ``method``."""
    return QuantConfig.parse(f"{bits}@{method}").name


def _cell(metrics: dict[str, Any] | None, key: str, fmt: str) -> str:
    value = (metrics or {}).get(key)
    return fmt.format(value) if isinstance(value, (int, float)) else "-"


def _collapse(names) -> list[str]:
    """Layer names with block indices folded into ``*`` (``blocks.0.norm1.linear`` ... -> ``blocks.*.norm1.linear``),
    in first-seen order: per-block float layers would otherwise fill the table."""
    return list(dict.fromkeys(re.sub(r"\.\d+(?=\.)", ".*", n) for n in names))


def table(name: str, results: dict[str, dict], cfg: Config) -> list[str]:
    """Markdown tables (rows = methods, columns = bit widths) for one model."""
    keys = [("psnr", "PSNR to float (dB)", "{:.2f}"), ("ssim", "SSIM to float", "{:.3f}"),
            ("fid", "FID, judge-CLIP features", "{:.2f}"), ("fid_inception", "FID, Inception", "{:.1f}"),
            ("clip_score", "CLIP score (judge)", "{:.2f}"), ("calib_seconds", "calibration s", "{:.0f}")]
    lines = [f"### {name}", "", "float: " + ", ".join(
        f"{label} {_cell(results.get('float'), key, fmt)}" for key, label, fmt in keys[2:5]), ""]
    for key, label, fmt in keys:
        if not any(key in m for m in results.values()):
            continue
        lines += [f"**{label}**", "", "| method | " + " | ".join(b.upper() for b in cfg.bits) + " |",
                  "|---|" + "---|" * len(cfg.bits)]
        for method in cfg.methods:
            cells = [_cell(results.get(_name(b, method)), key, fmt) for b in cfg.bits]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Linear / Conv2d layers kept float (host defaults; every other such layer is quantized):", ""]
    for method in cfg.methods:
        kept = (results.get(_name(cfg.bits[0], method)) or {}).get("float_layers") or {}
        lines.append(f"- {method}: " + (", ".join(f"`{k}`" for k in _collapse(kept)) or "none"))
    return lines + [""]


def main(cfg: Config = Config()) -> dict[str, dict]:
    all_results = {name: bench_model(name, spec, cfg) for name, spec in _specs(cfg).items() if name in cfg.models}
    lines = ["# Diffusion post-training quantization on the zoo models", "",
             f"Command: `python -m eval.bench_diffusion` (seed {cfg.seed}; {cfg.prompts} held-out captions x "
             f"{cfg.per_prompt} images for shapes-sd, {cfg.dit_per_class} images per class for shapes-dit; DDIM "
             f"{cfg.steps} steps, guidance {cfg.guidance}; calibration on {cfg.calib_prompts} training captions / "
             f"every class x 4 with the same sampler settings; FID references: {cfg.reference_n} held-out real "
             "visq-shapes images, large shapes only for shapes-dit, the half of visq-shapes it learns).", ""]
    for name, results in all_results.items():
        lines += table(name, results, cfg)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return all_results


if __name__ == "__main__":
    from pipelines._cli import parse

    main(parse(Config))
