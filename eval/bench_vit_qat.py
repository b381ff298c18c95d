"""QAT benchmark on the zoo ViT: LSQ-QAT, OFQ and OFQ's ablations next to the PTQ methods, at W2A2 / W3A3 / W4A4.

    python -m eval.bench_vit_qat                   # -> eval/results/vit_qat.md (+ vit_qat.json, the cell cache)
    python -m eval.bench_vit_qat --steps 300 --seeds 0 1 2

Each QAT cell is one run of the job ``python -m pipelines.vit_qat`` (a subprocess, so a killed benchmark resumes
mid-cell from the job's checkpoints) in ``<run-dir>/<variant>-<bits>-s<seed>``; its held-out top-1 (1,000
images, ``eval.bench_vit``) and final oscillating-weight fraction go to the cache as soon as it finishes. The PTQ
rows at W2A2 run here with ``eval.bench_vit.run_cell`` (same calibration images and evaluation as the PTQ
benchmark); their W3A3 / W4A4 cells are read from the PTQ benchmark's cache (``eval/results/vit_ptq.json``).
Cells run in ``PRIORITY`` order so that the comparisons that matter most are measured first.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from eval import bench_vit
from eval.bench_vit import fmt_cell, load_cache, save_cache
from visq import zoo

# variant -> flags of pipelines.vit_qat
VARIANTS: dict[str, tuple[str, ...]] = {
    "lsq": ("--method", "lsq"),
    "ofq": ("--method", "ofq"),
    "ofq-no_cga": ("--method", "ofq", "--no-cga"),
    "ofq-no_qkr": ("--method", "ofq", "--no-qkr"),
    "ofq-no_statsq": ("--method", "ofq", "--no-statsq"),
}
LABELS = {"lsq": "LSQ-QAT", "ofq": "OFQ (StatsQ + QKR + CGA)", "ofq-no_cga": "OFQ without CGA",
          "ofq-no_qkr": "OFQ without QKR", "ofq-no_statsq": "OFQ without StatsQ (LSQ weights)"}
BITS = ("w2a2", "w3a3", "w4a4")
PTQ_METHODS = ("minmax", "percentile", "ptq4vit", "repq", "noisyquant", "ias", "dopq")
SLOW_PTQ = ("noisyquant", "ias", "dopq")  # minutes per cell on CPU: run after the QAT ablations
README_START, README_END = "<!-- vit qat table start -->", "<!-- vit qat table end -->"


@dataclass(frozen=True)
class Config:
    """Benchmark settings (printed into the results file)."""

    steps: int = 300
    anneal_steps: int = 30
    batch: int = 32
    seeds: tuple[int, ...] = (0, 1, 2)
    variants: tuple[str, ...] = tuple(VARIANTS)
    bits: tuple[str, ...] = BITS
    ptq_methods: tuple[str, ...] = PTQ_METHODS
    eval_n: int = 1000
    run_dir: str = "runs/bench_vit_qat"
    out: str = "eval/results/vit_qat.md"
    ptq_cache: str = "eval/results/vit_ptq.json"


def priority(cfg: Config) -> list[tuple[str, str, int]]:
    """(variant or "ptq:<method>", bits, seed) in run order: the main LSQ-vs-OFQ comparison at W3A3 / W2A2 first,
    then the fast PTQ methods at W2A2, the ablations at W2A2, the slow PTQ methods, W4A4, then the other seeds."""
    first, rest = cfg.seeds[0], cfg.seeds[1:]
    main = [(v, b) for b in ("w3a3", "w2a2") for v in ("ofq", "lsq")]
    ablations = [(v, "w2a2") for v in cfg.variants if v.startswith("ofq-")]
    later = [(v, b) for v in cfg.variants for b in cfg.bits if (v, b) not in main + ablations]
    cheap = [m for m in cfg.ptq_methods if m not in SLOW_PTQ]
    order = [(v, b, first) for v, b in main]
    order += [(f"ptq:{m}", "w2a2", first) for m in cheap]
    order += [(v, b, first) for v, b in ablations]
    order += [(f"ptq:{m}", "w2a2", first) for m in cfg.ptq_methods if m in SLOW_PTQ]
    order += [(v, b, first) for v, b in later]
    order += [(v, b, s) for s in rest for v, b in main + ablations + later]
    order += [(f"ptq:{m}", "w2a2", s) for s in rest for m in cfg.ptq_methods]
    return [(v, b, s) for v, b, s in order if b in cfg.bits and (v.startswith("ptq:") or v in cfg.variants)]


def cell_key(variant: str, bits: str, seed: int) -> str:
    """Cache key of one cell."""
    return f"{variant}|{bits}|{seed}"


def run_qat(cfg: Config, variant: str, bits: str, seed: int) -> dict[str, Any]:
    """One QAT cell: the job in a subprocess (resumable), then its metrics.json."""
    name = f"{variant}-{bits}-s{seed}"
    cmd = [sys.executable, "-m", "pipelines.vit_qat", *VARIANTS[variant], "--recipe", bits, "--seed", str(seed),
           "--steps", str(cfg.steps), "--anneal-steps", str(cfg.anneal_steps), "--batch", str(cfg.batch),
           "--eval-n", str(cfg.eval_n), "--run-dir", cfg.run_dir, "--name", name, "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run(cmd, check=True, env=env)
    metrics = json.loads((Path(cfg.run_dir) / name / "metrics.json").read_text())
    return {k: metrics[k] for k in ("top1", "float_top1", "osc_frac", "osc_ema", "train_s")}


def run_ptq(cfg: Config, method: str, bits: str, seed: int) -> dict[str, Any]:
    """One PTQ cell with the PTQ benchmark's own cell runner."""
    bench = bench_vit.Config(eval_n=cfg.eval_n)
    return bench_vit.run_cell(bench, method, bits, seed, bench_vit.heldout(bench))


def _cells(cache: dict[str, Any], variant: str, bits: str, seeds: tuple[int, ...]) -> list[dict[str, Any]]:
    return [c for s in seeds if (c := _cell(cache, variant, bits, s)) is not None]


def _cell(cache: dict[str, Any], variant: str, bits: str, seed: int) -> dict[str, Any] | None:
    """A cached cell; a PTQ one only when measured with the rules its recipe stands for now (``bench_vit.cached``)."""
    if variant.startswith("ptq:"):
        return bench_vit.cached(cache, variant, bits, seed, method=variant[4:])
    return cache.get(cell_key(variant, bits, seed))


def _ptq_cell(cfg: Config, cache: dict[str, Any], ptq: dict[str, Any], method: str, bits: str) -> str:
    if bits == "w2a2":
        return fmt_cell([c["top1"] for c in _cells(cache, f"ptq:{method}", bits, cfg.seeds)], len(cfg.seeds))
    done = [c["top1"] for s in (0, 1, 2) if (c := bench_vit.cached(ptq, method, bits, s)) is not None]
    return fmt_cell(done, 3) + " ᵖ" if done else "–"


def table(cfg: Config, cache: dict[str, Any], ptq: dict[str, Any]) -> list[str]:
    """The results table (markdown lines)."""
    head = " | ".join(b.upper() for b in cfg.bits)
    lines = [f"| method | {head} | oscillating weights at the end ({cfg.bits[0].upper()}) | train time (s) |",
             "|---" * (len(cfg.bits) + 3) + "|"]
    for variant in cfg.variants:
        cells = [fmt_cell([c["top1"] for c in _cells(cache, variant, b, cfg.seeds)], len(cfg.seeds))
                 for b in cfg.bits]
        first = _cells(cache, variant, cfg.bits[0], cfg.seeds)
        osc = f"{100 * sum(c['osc_frac'] for c in first) / len(first):.2f}%" if first else "–"
        # a cell's time is None when part of its run was not timed (resumed from a checkpoint without its time)
        times = [c["train_s"] for b in cfg.bits for c in _cells(cache, variant, b, cfg.seeds)
                 if c["train_s"] is not None]
        mean_time = f"{sum(times) / len(times):.0f}" if times else "–"
        lines.append(f"| {LABELS[variant]} | " + " | ".join(cells) + f" | {osc} | {mean_time} |")
    for method in cfg.ptq_methods:
        cells = [_ptq_cell(cfg, cache, ptq, method, b) for b in cfg.bits]
        lines.append(f"| PTQ: {method} | " + " | ".join(cells) + " | – | – |")
    return lines


def render(cfg: Config, cache: dict[str, Any], ptq: dict[str, Any], command: str) -> str:
    """The markdown results file."""
    float_top1 = next((c["float_top1"] for c in cache.values() if isinstance(c, dict) and "float_top1" in c), None)
    lines = [
        "# Quantization-aware training on the zoo ViT",
        "",
        f"Command: `{command}`",
        "",
        "Model: zoo `shapes-vit` (timm ViT, 32x32, 8x8 tokens of width 96, depth 6, 3 heads, 6 classes); teacher = "
        "the same float model. Held-out top-1 on "
        f"{cfg.eval_n} images (`eval.bench_vit`); cells: mean ± half the min-max spread over seeds "
        f"{list(cfg.seeds)} (a cell with fewer seeds says how many). QAT: `python -m pipelines.vit_qat` with "
        f"{cfg.steps} AdamW steps (batch {cfg.batch}, lr 5e-4, cosine, 20 warm-up steps, weight decay 0.05) of "
        "soft-label distillation (KL, T = 1) on fresh visq-shapes training images, then "
        f"{cfg.anneal_steps} steps at constant lr 1e-5 (OFQ's CGA phase; without CGA the same phase runs without "
        "freezing). Activations LSQ+ per tensor, probabilities LSQ unsigned, steps initialised by an MSE search "
        "on 256 calibration images; LSQ-QAT weights LSQ per channel, OFQ weights StatsQ. Patch embedding and head "
        "stay float for every row (timm host default, as in the PTQ table; OFQ's paper uses 8-bit there). "
        "Oscillating weights: fraction of quantized weights whose EMA (momentum 0.01) of integer-code reversals "
        "exceeds 0.02 [RECON threshold] after the last step, mean over seeds. Train time: wall seconds of one run "
        "(calibration + both phases) on 1 torch thread of a 2-core machine shared with other jobs (under load).",
        "PTQ rows: W2A2 measured by this command with the PTQ benchmark's calibration (`eval.bench_vit.run_cell`); "
        f"cells marked ᵖ are read from the PTQ benchmark's cache `{cfg.ptq_cache}` (3 calibration seeds).",
        f"Machine: {platform.machine()}, torch {torch.__version__}, CPU.",
        "",
        f"Float top-1: {float_top1:.2f}" if float_top1 is not None else "Float top-1: –",
        "",
        *table(cfg, cache, ptq),
    ]
    return "\n".join(lines) + "\n"


def write_readme(lines: list[str], readme: Path) -> None:
    """Replace the table between the README markers (added once by hand) with ``lines``."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return
    head, rest = text.split(README_START, 1)
    readme.write_text(head + README_START + "\n" + "\n".join(lines) + "\n" + README_END + rest.split(README_END, 1)[1])


def main(cfg: Config = Config()) -> dict[str, Any]:
    """Run every missing cell in priority order, rewriting the cache, the table and the README after each."""
    torch.set_num_threads(1)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache_path = out.with_suffix(".json")
    cache = load_cache(cache_path)
    setup = {"steps": cfg.steps, "anneal_steps": cfg.anneal_steps, "batch": cfg.batch, "eval_n": cfg.eval_n,
             "weights": zoo.fingerprint("shapes-vit")}
    if cache.setdefault("setup", setup) != setup:
        raise ValueError(f"{cache_path} holds cells of another setup ({cache['setup']}); use another --out")
    ptq_path = Path(cfg.ptq_cache)
    for variant, bits, seed in priority(cfg):
        key = cell_key(variant, bits, seed)
        if _cell(cache, variant, bits, seed) is None:
            if variant.startswith("ptq:"):
                cache[key] = run_ptq(cfg, variant[4:], bits, seed)
            else:
                cache[key] = run_qat(cfg, variant, bits, seed)
            logging.info("%s: top-1 %.2f", key, cache[key]["top1"])
            save_cache(cache_path, cache)
        _write(cfg, cache, load_cache(ptq_path), out)
    _write(cfg, cache, load_cache(ptq_path), out)
    return cache


def _union(first: tuple, second: tuple) -> tuple:
    return tuple(dict.fromkeys((*first, *second)))


def report_view(cfg: Config) -> tuple[Config, str]:
    """The table a run writes and the command that states it. A run limited to some seeds, variants, recipes or
    PTQ methods (``--seeds 1``, say) still writes every cell of the full benchmark its cache holds, under the
    command without those selection flags, so a partial run never shrinks the published table."""
    full = Config()
    view = replace(cfg, seeds=tuple(sorted(_union(full.seeds, cfg.seeds))),
                   variants=_union(full.variants, cfg.variants), bits=_union(full.bits, cfg.bits),
                   ptq_methods=_union(full.ptq_methods, cfg.ptq_methods))
    setup = ("steps", "anneal_steps", "batch", "eval_n")
    flags = [f"--{n.replace('_', '-')} {getattr(cfg, n)}" for n in setup if getattr(cfg, n) != getattr(full, n)]
    flags += [f"--out {cfg.out}"] if cfg.out != full.out else []
    return view, " ".join(["python -m eval.bench_vit_qat", *flags])


def _write(cfg: Config, cache: dict[str, Any], ptq: dict[str, Any], out: Path) -> None:
    view, command = report_view(cfg)
    out.write_text(render(view, cache, ptq, command))
    if cfg.out == Config.out:  # the README shows the default benchmark only
        write_readme(table(view, cache, ptq) + ["", f"Command: `{command}`; details in `{cfg.out}`."],
                     Path(__file__).parent.parent / "README.md")


def _parse(argv: list[str]) -> Config:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=Config.steps, help="QAT optimizer steps per run")
    p.add_argument("--anneal-steps", type=int, default=Config.anneal_steps,
                   help="steps of the final low-lr phase (OFQ's CGA phase; plain fine-tuning without CGA)")
    p.add_argument("--batch", type=int, default=Config.batch, help="training images per step")
    p.add_argument("--seeds", nargs="+", type=int, default=list(Config.seeds), help="training seeds (mean and spread)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="QAT rows: LSQ-QAT, OFQ and its ablations")
    p.add_argument("--bits", nargs="+", default=list(BITS), help="recipes, one column each")
    p.add_argument("--ptq-methods", nargs="*", default=list(PTQ_METHODS), choices=list(bench_vit.METHODS),
                   help="PTQ rows for comparison (may be empty)")
    p.add_argument("--eval-n", type=int, default=1000, help="held-out images for top-1")
    p.add_argument("--run-dir", default=Config.run_dir, help="one training run folder per cell (resumable)")
    p.add_argument("--out", default=Config.out, help="results table (its JSON cache sits next to it)")
    a = p.parse_args(argv)
    return Config(a.steps, a.anneal_steps, a.batch, tuple(a.seeds), tuple(a.variants), tuple(a.bits),
                  tuple(a.ptq_methods), a.eval_n, a.run_dir, a.out)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(_parse(sys.argv[1:]))
