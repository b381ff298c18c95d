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
               "visq export W4A16-g128 bf16", "torchao int4 weight-only bf16", "quanto W4 weight-only bf16")


def _num(value: Any, fmt: str) -> str:
    return fmt.format(value) if isinstance(value, (int, float)) else "-"


def _quality(cell: dict[str, Any]) -> str:
    if "top1" in cell:
        return f"{cell['top1']:.1f}% (float {cell['top1_float']:.1f}%)"
    if "psnr" in cell:
        return f"{cell['psnr']:.1f} dB"
    return cell.get("quality_note", "-")


UNRECORDED = "CPU not recorded (cells of the first measuring session, before this column existed)"


def machines(cache: dict[str, Any]) -> dict[str, str]:
    """CPU description -> short label (M1, M2, ...), in order of first appearance in the cache."""
    cpus = dict.fromkeys(cell.get("cpu", UNRECORDED) for cell in cache.values() if "error" not in cell)
    return {c: f"M{i + 1}" for i, c in enumerate(cpus)}


def machine_lines(cache: dict[str, Any]) -> list[str]:
    """The legend of the machine column."""
    return [f"- **{label}**: {cpu}" for cpu, label in machines(cache).items()]


def table(cache: dict[str, Any], model: str, rows: tuple[str, ...] | list[str]) -> list[str]:
    """One model's table: a line per row that has a cell in the cache."""
    labels = machines(cache)
    lines = ["| row | library | scheme | ms / batch | ms / image | speed-up vs fp32 | peak RSS MiB | checkpoint MiB "
             "| quality | compile s | machine |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in rows:
        cell = cache.get(f"{model}|{name}")
        if cell is None:
            continue
        row = ROWS[name]
        if "error" in cell:
            lines.append(f"| {name} | {row.library} | {row.scheme} | fails here: {cell['error']} | | | | | | | |")
            continue
        lines.append(
            f"| {name} | {row.library} | {row.scheme} | {_num(cell['ms'], '{:.1f}')} | "
            f"{_num(cell['ms'] / cell['batch'], '{:.2f}')} | {_speedup(cell)} | "
            f"{_num(cell.get('peak_rss_mb'), '{:.0f}')} | {_num(cell.get('checkpoint_mb'), '{:.2f}')} | "
            f"{_quality(cell)} | {_num(cell.get('compile_s'), '{:.0f}')} | {labels[cell.get('cpu', UNRECORDED)]} |"
        )
    return lines


def _speedup(cell: dict[str, Any]) -> str:
    """The median speed-up, with its spread over the interleaved rounds where the cell recorded it."""
    text = _num(cell["speedup"], "{:.2f}x")
    if "speedup_min" in cell:
        text += f" ({cell['speedup_min']:.2f}-{cell['speedup_max']:.2f})"
    return text


def _score(cell: dict[str, Any] | None) -> float | None:
    """The quality number of a measured cell (top-1 % or PSNR dB; higher is better), else None."""
    if not cell or "error" in cell:
        return None
    return cell.get("top1", cell.get("psnr"))


def goal_table(cache: dict[str, Any], model: str) -> list[str]:
    """Issue 18's quality goal on one zoo model: each visq row against the best torchao / quanto row of the same
    scheme and activation dtype (at equal scope); empty when no visq row has a peer with a measured quality."""
    lines = []
    for name, row in ROWS.items():
        mine = _score(cache.get(f"{model}|{name}"))
        if row.library != "visq" or mine is None:
            continue
        peers = {p: _score(cache.get(f"{model}|{p}")) for p, r in ROWS.items()
                 if r.library in ("torchao", "quanto") and (r.scheme, r.dtype) == (row.scheme, row.dtype)}
        peers = {p: v for p, v in peers.items() if v is not None}
        if not peers:
            continue
        best = max(peers, key=peers.__getitem__)
        verdict = "met" if mine >= peers[best] else "missed"
        lines.append(f"| {name} | {row.scheme} | {mine:.2f} | {best} | {peers[best]:.2f} | "
                     f"{mine - peers[best]:+.2f} | {verdict} |")
    if not lines:
        return []
    unit = "top-1 %" if model == "vit-zoo" else "PSNR dB"
    return [f"| visq row | scheme | visq {unit} | best peer row | peer {unit} | difference | goal |",
            "|---|---|---|---|---|---|---|", *lines]


def notes() -> list[str]:
    """What the rows whose scheme name is not enough quantize exactly."""
    return [f"- **{name}**: {row.note}." for name, row in ROWS.items() if row.note]


def _models(cache: dict[str, Any]) -> list[str]:
    return [m for m in MODEL_NOTES if any(k.startswith(f"{m}|") for k in cache)]


def render(cache: dict[str, Any], cfg: Any, machine: str) -> str:
    """The whole results file."""
    out = [
        "# Real quantized execution: speed, memory, size, quality",
        "",
        f"Command: `python -m eval.bench_speed` (seed {cfg.seed}, {cfg.threads} torch threads, "
        f"{cfg.warmup} untimed warm-up rounds then {cfg.repeats} interleaved rounds per cell; times "
        "are medians, the speed-up is the median of the per-round ratios with their min-max in brackets where the "
        "cell recorded it). Each cell runs in its own process and times its row against an "
        "fp32 copy of the same model called alternately, so the speed-up column compares like with like under the "
        "same background load.",
        "",
        f"Machine: {machine}. **The machine was shared with other agents' jobs while this ran (2 cores, load "
        "average well above 2), so absolute times are slow and noisy; read the interleaved speed-up column.** "
        "Cells were measured in several sessions, not always on the same CPU; bf16 and int8 kernels depend on the "
        "CPU's instruction sets, so compare speed-ups only between rows of the same machine (last column):",
        "",
        *machine_lines(cache),
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
        "Rows whose scheme needs more words. 4-bit grouping: optimum-quanto 0.2.7 groups a layer with K inputs per "
        "output channel only when K > 128 (groups of 128, stepping down by 32 until one divides K) and quantizes it "
        "per output channel otherwise, so the zoo ViT's 96-wide and the zoo UNet's 64- and 128-wide layers are per "
        "channel and the 256- to 512-wide ones grouped by 128; every 4-bit row below uses that grouping except "
        "torchao's, whose kernels take groups of 32 to 256 only.",
        "",
        *notes(),
        "",
        "Quality goal (issue 18): every visq row at least as good as the best torchao / quanto row of the same "
        "scheme and activation dtype, on the zoo models (tables after each zoo model's rows). The verdict is the "
        "plain comparison of the measured numbers; on the zoo ViT one image of the 1000 is 0.1 point and the "
        "binomial standard error at 91% is about 0.9 point, so ViT differences of a few tenths are not resolved.",
        "",
    ]
    for model in _models(cache):
        out += [f"## {model}: {MODEL_NOTES[model]}", "", *table(cache, model, list(ROWS)), ""]
        goal = goal_table(cache, model)
        if goal:
            out += [f"Quality goal on {model}:", "", *goal, ""]
    models = [m for m in MODEL_NOTES if m in cfg.models or m in _models(cache)]  # this run's and earlier runs'
    missing = [f"{m} / {r}" for m in models for r in ROWS if f"{m}|{r}" not in cache]
    if missing:
        out += [f"Not measured yet (rerun the command to resume): {', '.join(missing)}.", ""]
    return "\n".join(out)


def readme_block(cache: dict[str, Any]) -> str:
    """The README's speed table (written by the same command as the results file)."""
    out = ["Written by `python -m eval.bench_speed` (full table, memory and method notes: "
           "[eval/results/speed.md](eval/results/speed.md); shared, loaded 2-core CPU: read the interleaved "
           "speed-up; compare speed-ups within one machine: " +
           "; ".join(f"{label} = {cpu}" for cpu, label in machines(cache).items()) + ")."]
    for model in _models(cache):
        out += ["", f"**{model}** ({MODEL_NOTES[model]})", "", *table(cache, model, README_ROWS)]
        goal = goal_table(cache, model)
        if goal:
            out += ["", f"Quality goal on {model} (visq vs the best peer row of the same scheme):", "", *goal]
    return "\n".join(out)
