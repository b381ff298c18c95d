"""ViT post-training quantization benchmark on the zoo ViT: every method at W3A3 / W4A4 / W6A6.

    python -m eval.bench_vit                       # -> eval/results/vit_ptq.md (+ vit_ptq.json, the cell cache)
    python -m eval.bench_vit --methods repq ias --bits w4a4 --seeds 0

Rows = methods, columns = held-out top-1 (mean +- half the min-max spread over the calibration seeds), plus the
float top-1, the mean calibration (quantize) time and the calibration set size. Resumable: each finished cell
(method, bits, seed) is written to the JSON cache at once and skipped on a rerun; the table is rebuilt from the
cache after every cell. Calibration images come from the training split (seed 1000 + calibration seed); the
held-out images are ``visq.zoo.shapes.generate(n, 0, "heldout", VIT_DATA)``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import visq
from eval.cells import quantization_digest
from eval.report import replace_block
from visq import zoo
from visq.zoo import load, shapes
from visq.zoo.judge import vit_predict
from visq.zoo.vit import VIT_DATA, normalize

DEFAULT_OUT = Path(__file__).parent / "results" / "vit_ptq.md"
README = Path(__file__).parent.parent / "README.md"
README_BLOCK = "vit-ptq"  # eval.report.replace_block markers
METHODS = ("minmax", "percentile", "ptq4vit", "repq", "ias", "dopq", "noisyquant")
BITS = ("w3a3", "w4a4", "w6a6")
# calibration images per method: the papers' sizes, except I&S / DopQ (1024 in the papers; CPU budget here)
CALIB_SIZE = {"minmax": 32, "percentile": 32, "ptq4vit": 32, "repq": 32, "noisyquant": 256, "ias": 256, "dopq": 256}
# reconstruction shortened for CPU (papers: 1000 iterations per block and stage at <= 4 bit, 200 at 6 bit, batch 64)
RECON = {"iters": 100, "batch_size": 32}
METHOD_KWARGS = {"ias": RECON, "dopq": RECON}


@dataclass(frozen=True)
class Config:
    """Benchmark settings (printed into the results file)."""

    methods: tuple[str, ...] = METHODS
    bits: tuple[str, ...] = BITS
    seeds: tuple[int, ...] = (0, 1, 2)
    eval_n: int = 1000
    threads: int = 1
    out: str = "eval/results/vit_ptq.md"
    model_dir: str = ""  # load the ViT from here instead of the shipped zoo weights
    calib_size: dict[str, int] = field(default_factory=lambda: dict(CALIB_SIZE))
    run: bool = True  # False: only rebuild the table from the cache (missing cells show as dashes / seed counts)


def cell_key(method: str, bits: str, seed: int) -> str:
    """Cache key of one cell."""
    return f"{method}|{bits}|{seed}"


def load_vit(cfg: Config) -> torch.nn.Module:
    """A fresh float zoo ViT (eval mode)."""
    return load("shapes-vit", folder=cfg.model_dir or None)


def heldout(cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out images in [0, 1] and their shape labels."""
    batch = shapes.generate(cfg.eval_n, 0, "heldout", VIT_DATA)
    return batch.images.float() / 255.0, batch.shape


def calibration(n: int, seed: int) -> torch.Tensor:
    """``n`` normalised training-split images for calibration seed ``seed``."""
    return normalize(shapes.generate(n, 1000 + seed, "train", VIT_DATA).images)


def top1(model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Held-out top-1 in percent."""
    images, labels = data
    return 100.0 * (vit_predict(model, images, batch=250) == labels).float().mean().item()


def run_cell(cfg: Config, method: str, bits: str, seed: int, data: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """Quantize a fresh ViT with ``method`` at ``bits`` on calibration seed ``seed``; evaluate it."""
    torch.manual_seed(seed)
    model = load_vit(cfg)
    calib = calibration(cfg.calib_size[method], seed)
    start = time.perf_counter()
    visq.quantize(model, bits, method=method, calib=calib, progress=False, **METHOD_KWARGS.get(method, {}))
    seconds = time.perf_counter() - start
    visq.freeze(model)
    return {"top1": top1(model, data), "calib_s": seconds, "calib_n": len(calib), "recipe": cell_digest(method, bits)}


def cell_digest(method: str, bits: str) -> str:
    """What a cell quantizes (``eval.cells.quantization_digest``): a cached cell counts only for the same rules."""
    return quantization_digest(bits, method, **METHOD_KWARGS.get(method, {}))


def cached(cache: dict[str, Any], name: str, bits: str, seed: int, method: str | None = None) -> dict[str, Any] | None:
    """The cached cell ``name|bits|seed`` of ``method`` (default: ``name``), or None when absent or measured with
    other rules (e.g. before a recipe default changed)."""
    cell = cache.get(cell_key(name, bits, seed))
    return cell if cell is not None and cell.get("recipe") == cell_digest(method or name, bits) else None


def load_cache(path: Path) -> dict[str, Any]:
    """The JSON cell cache (empty if absent)."""
    return json.loads(path.read_text()) if path.exists() else {}


def save_cache(path: Path, cache: dict[str, Any]) -> None:
    """Write the cache atomically (a crash mid-write keeps the previous file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
    tmp.replace(path)


def fmt_cell(values: list[float], expected: int) -> str:
    """``mean ± half-spread`` of the finished seeds, flagged when seeds are missing."""
    if not values:
        return "–"
    mean = statistics.fmean(values)
    text = f"{mean:.2f} ± {(max(values) - min(values)) / 2:.2f}"
    return text if len(values) == expected else f"{text} ({len(values)}/{expected} seeds)"


def render(cfg: Config, cache: dict[str, Any], command: str) -> str:
    """The markdown results file."""
    lines = [
        "# ViT post-training quantization on the zoo ViT",
        "",
        f"Command: `{command}`",
        "",
        "Model: zoo `shapes-vit` (timm VisionTransformer from `visq.zoo.builders.build_vit`: 32x32 input, conv stem, "
        f"8x8 tokens of width 96, depth 6, 3 heads, average-pooled head, 6 classes){_model_note(cfg)}. "
        f"Data: visq-shapes ViT task (`VIT_DATA`); held-out top-1 on {cfg.eval_n} images "
        "(`shapes.generate(n, 0, 'heldout', VIT_DATA)`); calibration images from the training split, "
        f"seed 1000 + s for calibration seeds s in {list(cfg.seeds)}. Cells: mean ± half the min-max spread over "
        "those seeds. Patch embedding and head stay float (timm host default) for every method; recipe defaults "
        "otherwise (weights per output channel, activations per tensor, attention q/k/v/probs quantized).",
        f"Reconstruction (ias, dopq) shortened for CPU: {RECON['iters']} iterations per block and stage, batch "
        f"{RECON['batch_size']} (papers: 1000 / 200 iterations, batch 64, 1024 images). dopq's TanQ is the "
        "[RECON] tangent companding quantizer, not the paper's (unpublished) formula.",
        f"Machine: {platform.machine()}, torch {torch.__version__}, {cfg.threads} thread(s), CPU; calibration "
        "times depend on the machine's load (other jobs shared its 2 cores), so compare them within a run only.",
        "",
    ]
    lines.append(f"Float top-1: {_float_cell(cache)}")
    lines += ["", "| method | " + " | ".join(b.upper() for b in cfg.bits) + " | calib time (s) | calib images |",
              "|---" * (len(cfg.bits) + 3) + "|"]
    for method in cfg.methods:
        cells, times = [], []
        for bits in cfg.bits:
            done = [c for s in cfg.seeds if (c := cached(cache, method, bits, s)) is not None]
            cells.append(fmt_cell([d["top1"] for d in done], len(cfg.seeds)))
            times += [d["calib_s"] for d in done]
        mean_time = f"{statistics.fmean(times):.1f}" if times else "–"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {mean_time} | {cfg.calib_size[method]} |")
    return "\n".join(lines) + "\n"


def _model_note(cfg: Config) -> str:
    return f", weights from `{cfg.model_dir}`" if cfg.model_dir else ""


def _float_cell(cache: dict[str, Any]) -> str:
    return f"{cache['float']['top1']:.2f}" if "float" in cache else "–"


def main(cfg: Config = Config(), command: str = "python -m eval.bench_vit") -> dict[str, Any]:
    """Run every missing cell, writing the cache and the table after each; returns the cache."""
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache_path = out.with_suffix(".json")
    cache = load_cache(cache_path)
    weights = zoo.digest(cfg.model_dir) if cfg.model_dir else zoo.fingerprint("shapes-vit")
    setup = {"eval_n": cfg.eval_n, "model_dir": cfg.model_dir, "calib_size": cfg.calib_size, "recon": RECON,
             "weights": weights}
    if cache.setdefault("setup", setup) != setup:
        raise ValueError(f"{cache_path} holds cells of another setup ({cache['setup']}); use another --out")
    data = heldout(cfg) if cfg.run else None  # --no-run only re-renders: no images to generate
    if "float" not in cache and cfg.run:
        cache["float"] = {"top1": top1(load_vit(cfg), data)}
        save_cache(cache_path, cache)
    for method in cfg.methods if cfg.run else ():
        for bits in cfg.bits:
            for seed in cfg.seeds:
                key = cell_key(method, bits, seed)
                if cached(cache, method, bits, seed) is not None:
                    continue
                cache[key] = run_cell(cfg, method, bits, seed, data)
                logging.info("%s: top-1 %.2f (%.1fs)", key, cache[key]["top1"], cache[key]["calib_s"])
                save_cache(cache_path, cache)
                out.write_text(render(cfg, cache, command))
    text = render(cfg, cache, command)
    out.write_text(text)
    if out.resolve() == DEFAULT_OUT.resolve():  # experiments written elsewhere leave the README alone
        README.write_text(replace_block(README.read_text(), README_BLOCK, readme_table(text)))
    return cache


def readme_table(results: str) -> str:
    """The README's ViT PTQ block: the float line and the method table of a results file."""
    lines = results.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Float top-1"))
    return "\n".join(lines[start:]).strip()


def _parse(argv: list[str]) -> Config:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="methods, one row each")
    p.add_argument("--bits", nargs="+", default=list(BITS), help="recipes, one column each")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="calibration seeds (mean and spread)")
    p.add_argument("--eval-n", type=int, default=1000, help="held-out images for top-1")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", default="eval/results/vit_ptq.md", help="results table (a cache sits next to it)")
    p.add_argument("--model-dir", default="", help="ViT weights folder (default: the shipped shapes-vit)")
    p.add_argument("--no-run", dest="run", action="store_false",
                   help="only rebuild the table from the cache (cells not measured yet show as dashes / seed counts)")
    a = p.parse_args(argv)
    return Config(tuple(a.methods), tuple(a.bits), tuple(a.seeds), a.eval_n, a.threads, a.out, a.model_dir,
                  run=a.run)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        # --no-run only re-renders: the cells come from the command without it
        flags = [a for a in sys.argv[1:] if a != "--no-run"]
        main(_parse(sys.argv[1:]), " ".join(["python -m eval.bench_vit", *flags]))
    except FileNotFoundError as err:
        sys.exit(f"bench_vit: {err}")
