"""Markdown for ``eval.bench_speed``: the full results file and the README block, from the cell cache."""

from __future__ import annotations

from typing import Any

from eval.speed_rows import ROWS

MODEL_NOTES = {
    "deit-s": "timm `deit_small_patch16_224`, random weights, 224 x 224",
    "vit-zoo": "zoo `shapes-vit` (quality: held-out top-1, 1000 images)",
    "unet-zoo": "zoo `shapes-sd` UNet, one denoiser call at batch 2 x prompts (CFG); quality: PSNR of 20-step "
                "images to the float pipeline's",
    "unet-sd15": "SD-1.5-config `UNet2DConditionModel` (860M parameters), random weights, 16 x 16 latent, "
                 "77 tokens",
}
README_ROWS = ("fp32", "bf16", "visq fake-quant W8A8", "visq export W8A8", "visq export W8A8 compiled",
               "torchao int8 dynamic", "torchao int8 dynamic compiled", "quanto W8A8",
               "visq export W4A16-g128 bf16", "quanto W4 weight-only bf16")


def _num(value: Any, fmt: str) -> str:
    return fmt.format(value) if isinstance(value, (int, float)) else "-"


def _quality(cell: dict[str, Any]) -> str:
    if "top1" in cell:
        return f"{cell['top1']:.1f}% (float {cell['top1_float']:.1f}%)"
    if "psnr" in cell:
        return f"{cell['psnr']:.1f} dB"
    return cell.get("quality_note", "-")


def table(cache: dict[str, Any], model: str, rows: tuple[str, ...] | list[str]) -> list[str]:
    """One model's table: a line per row that has a cell in the cache."""
    lines = ["| row | library | scheme | ms / batch | ms / image | speed-up vs fp32 | peak RSS MiB | checkpoint MiB "
             "| quality | compile s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in rows:
        cell = cache.get(f"{model}|{name}")
        if cell is None:
            continue
        row = ROWS[name]
        if "error" in cell:
            lines.append(f"| {name} | {row.library} | {row.scheme} | fails here: {cell['error']} | | | | | | |")
            continue
        lines.append(
            f"| {name} | {row.library} | {row.scheme} | {_num(cell['ms'], '{:.1f}')} | "
            f"{_num(cell['ms'] / cell['batch'], '{:.2f}')} | {_num(cell['speedup'], '{:.2f}x')} | "
            f"{_num(cell.get('peak_rss_mb'), '{:.0f}')} | {_num(cell.get('checkpoint_mb'), '{:.2f}')} | "
            f"{_quality(cell)} | {_num(cell.get('compile_s'), '{:.0f}')} |"
        )
    return lines


def _models(cache: dict[str, Any]) -> list[str]:
    return [m for m in MODEL_NOTES if any(k.startswith(f"{m}|") for k in cache)]


def render(cache: dict[str, Any], cfg: Any, machine: str) -> str:
    """The whole results file."""
    out = [
        "# Real quantized execution: speed, memory, size, quality",
        "",
        f"Command: `python -m eval.bench_speed` (seed {cfg.seed}, {cfg.threads} torch threads, {cfg.repeats} "
        "interleaved repeats per cell, medians). Each cell runs in its own process and times its row against an "
        "fp32 copy of the same model called alternately, so the speed-up column compares like with like under the "
        "same background load.",
        "",
        f"Machine: {machine}. **The machine was shared with other agents' jobs while this ran (2 cores, load "
        "average well above 2), so absolute times are slow and noisy; read the interleaved speed-up column.**",
        "",
        "Scope (equal in every row): the `nn.Linear` layers visq's host quantizes (ViT: all block linears, not the "
        "patch embedding or the head; UNet: all linears except time / class embeddings). Convolutions and the "
        "attention matmuls stay float everywhere; torchao gets the same layers through `filter_fn`, quanto through "
        "`include`. visq W8A8 = static per-tensor asymmetric activations calibrated by min-max, symmetric "
        "per-channel weights; W8A8-dyn = per-token dynamic activations. Peak RSS is the cell process's maximum "
        "resident memory after the row's first call (before the fp32 copy is built). Checkpoint: `visq.save` "
        "for visq rows; the state dict with safetensors (fp32 / bf16) or `torch.save` (torchao / quanto tensor "
        "subclasses) otherwise.",
        "",
    ]
    for model in _models(cache):
        out += [f"## {model}: {MODEL_NOTES[model]}", "", *table(cache, model, list(ROWS)), ""]
    missing = [f"{m} / {r}" for m in cfg.models for r in cfg.rows if f"{m}|{r}" not in cache]
    if missing:
        out += [f"Not measured yet (rerun the command to resume): {', '.join(missing)}.", ""]
    return "\n".join(out)


def readme_block(cache: dict[str, Any]) -> str:
    """The README's speed table (written by the same command as the results file)."""
    out = ["Written by `python -m eval.bench_speed` (full table, memory and method notes: "
           "[eval/results/speed.md](eval/results/speed.md); shared, loaded 2-core CPU: read the interleaved "
           "speed-up)."]
    for model in _models(cache):
        out += ["", f"**{model}** ({MODEL_NOTES[model]})", "", *table(cache, model, README_ROWS)]
    return "\n".join(out)
