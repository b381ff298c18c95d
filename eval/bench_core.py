"""Core overheads: fake-quant inference after ``freeze`` vs float, and calibration time, on tiny models.

    python -m eval.bench_core            # writes eval/results/core_bench.md

Timings are medians of interleaved repeats on this machine's CPU (2 cores), so float and quantized runs see the
same background load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import visq
from eval.timing import interleaved, medians
from visq.testing import tiny_sd

OUT = Path(__file__).parent / "results" / "core_bench.md"


@dataclass(frozen=True)
class Config:
    repeats: int = 7
    calib_prompts: int = 32
    calib_steps: int = 10
    sample_steps: int = 20
    threads: int = 2
    seed: int = 0


def _median_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    return medians(interleaved(fns, repeats))


def bench_vit(cfg: Config) -> dict[str, float]:
    import timm

    def build():
        torch.manual_seed(cfg.seed)
        return timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4,
                                 num_classes=10).eval()

    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(cfg.seed))
    float_model = build()
    quantized = visq.quantize(build(), "w8a8", calib=x[:32], progress=False)
    frozen = visq.freeze(visq.quantize(build(), "w8a8", calib=x[:32], progress=False))
    with torch.no_grad():
        return _median_ms({"float": lambda: float_model(x), "w8a8": lambda: quantized(x),
                           "w8a8 frozen": lambda: frozen(x)}, cfg.repeats)


def bench_sd(cfg: Config) -> tuple[dict[str, float], float]:
    prompts = [f"a {c} {s}" for c in ("red", "green", "blue", "yellow") for s in
               ("circle", "square", "triangle", "star", "diamond", "cross", "ring", "heart")][: cfg.calib_prompts]
    float_pipe, pipe = tiny_sd(cfg.seed), tiny_sd(cfg.seed)
    start = time.perf_counter()
    visq.quantize(pipe, "w8a8", calib=prompts, calib_options={"num_inference_steps": cfg.calib_steps},
                  progress=False)
    calib_s = time.perf_counter() - start
    frozen = visq.freeze(pipe)

    def run(p):
        return lambda: p(prompts[:8], num_inference_steps=cfg.sample_steps, output_type="np",
                         generator=torch.Generator().manual_seed(cfg.seed))

    with torch.no_grad():
        return _median_ms({"float": run(float_pipe), "w8a8 frozen": run(frozen)}, max(3, cfg.repeats // 2)), calib_s


def main(cfg: Config = Config()) -> dict[str, object]:
    torch.set_num_threads(cfg.threads)
    vit = bench_vit(cfg)
    sd, calib_s = bench_sd(cfg)
    lines = [
        "# Core overheads (fake quantization, CPU)",
        "",
        f"Command: `python -m eval.bench_core` (torch threads {cfg.threads}, {cfg.repeats} interleaved repeats, "
        f"median; seed {cfg.seed}). Models, random weights: timm `deit_tiny_patch16_224` at 32x32, patch 4 "
        f"(5.4M params, batch 64) and `visq.testing.tiny_sd` (8 prompts, {cfg.sample_steps} DDIM steps, CFG).",
        "",
        "| model | float ms | W8A8 ms (re-quantizing weights) | W8A8 frozen ms | frozen / float |",
        "|---|---|---|---|---|",
        f"| deit-tiny 32px | {vit['float']:.1f} | {vit['w8a8']:.1f} | {vit['w8a8 frozen']:.1f} | "
        f"{vit['w8a8 frozen'] / vit['float']:.2f}x |",
        f"| tiny SD (8 images) | {sd['float']:.0f} | - | {sd['w8a8 frozen']:.0f} | "
        f"{sd['w8a8 frozen'] / sd['float']:.2f}x |",
        "",
        f"Calibration of the tiny SD, {cfg.calib_prompts} prompts x {cfg.calib_steps} steps "
        f"(capture + observe + fit): "
        f"{calib_s:.1f} s.",
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return {"vit": vit, "sd": sd, "calib_s": calib_s}


if __name__ == "__main__":
    main()
