"""metrics.json and report.md: a table per configuration, image grids and a bar chart, drawn with PIL.

(matplotlib is not a dependency; PIL draws the few plots a report needs.)
"""

from __future__ import annotations

import contextlib
import json
import platform
import sys
from collections.abc import Sequence
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

PACKAGES = ("torch", "diffusers", "transformers", "torchmetrics", "torch-fidelity", "accelerate", "open_clip_torch")
COLUMNS = (  # (key, header, format, lower_is_better)
    ("fid", "FID", "{:.2f}", True),
    ("clip_score", "CLIP score", "{:.2f}", False),
    ("psnr", "PSNR to float (dB)", "{:.2f}", False),
    ("ssim", "SSIM to float", "{:.4f}", False),
    ("lpips", "LPIPS to float", "{:.4f}", True),
    ("sec_per_image", "s / image", "{:.3f}", True),
    ("size_mb", "denoiser MB", "{:.2f}", True),
    ("weight_bits", "mean weight bits", "{:.2f}", True),
)
SIZE_NOTE = ("denoiser MB is the ideal packed size of the denoiser's parameters: each quantized weight at its bit "
             "width, everything else (biases, layers kept float) at its dtype's; it is not the size of the files "
             "visq.save writes, which keep float weights and the quantizers' parameters.")


def markdown_table(results: dict[str, dict], exclude: tuple[str, ...] = ()) -> str:
    """The metrics as a markdown table: a row per configuration, the columns any configuration has (less
    ``exclude``, keys of ``COLUMNS``)."""
    present = [c for c in COLUMNS if c[0] not in exclude and any(c[0] in m for m in results.values())]
    lines = ["| config | " + " | ".join(h for _, h, _, _ in present) + " |", "|---|" + "---|" * len(present)]
    for name, m in results.items():
        lines.append(f"| {name} | " + " | ".join(f.format(m[k]) if k in m else "-" for k, _, f, _ in present) + " |")
    return "\n".join(lines)


def notes(results: dict[str, dict]) -> list[str]:
    """What a reader of the table needs to know: a FID that cannot separate the configurations, what the size
    column means."""
    out = []
    fids = {n: m["fid"] for n, m in results.items() if "fid" in m}
    shown = {f"{v:.2f}" for v in fids.values()}
    if len(fids) > 1 and len(shown) == 1:
        n = next(m["n_images"] for m in results.values() if "fid" in m)
        out.append(f"FID is the same for every configuration at this size ({n} images each): the Frechet distance "
                   "of so few images is dominated by sampling noise and cannot tell these configurations apart; "
                   "compare PSNR / SSIM to float, or generate more images (--n-prompts, --per-prompt).")
    elif any(m.get("fid_small_n") for m in results.values()):
        out.append("FID here uses fewer images than feature dimensions (biased upwards): compare within this run.")
    if any("size_mb" in m for m in results.values()):
        out.append(SIZE_NOTE)
    return out


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with the generated block ``name`` (between ``<!-- visq:name -->`` markers) set to ``body``."""
    begin, end = _markers(name)
    if text.count(begin) != 1 or text.count(end) != 1:
        raise ValueError(f"expected one '{begin}' ... '{end}' block, found {text.count(begin)} / {text.count(end)}")
    head, rest = text.split(begin)
    return f"{head}{begin}\n{body.strip()}\n{end}{rest.split(end, 1)[1]}"


def read_block(text: str, name: str) -> str:
    """The body of the generated block ``name`` (see :func:`replace_block`)."""
    begin, end = _markers(name)
    if begin not in text or end not in text:
        raise ValueError(f"no '{begin}' ... '{end}' block found")
    return text.split(begin, 1)[1].split(end, 1)[0].strip()


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- visq:{name} (generated: do not edit by hand) -->", f"<!-- /visq:{name} -->"


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": sys.platform}
    for pkg in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def write_metrics(out: Path, results: dict[str, dict], spec: Any) -> Path:
    """``metrics.json``: per-configuration metrics, the run spec, and the stamp every number needs."""
    payload = {
        "configs": results,
        "run": asdict(spec),
        "conventions": {
            "fid_formula": "torchmetrics _compute_fid (eigvals of cov_a @ cov_b), covariances float64, n-1",
            "fid_inception_resize": "torchmetrics bilinear antialias=True unless the network name says tf1",
            "clip_score": "100 * max(cos(image, text), 0), mean over images (torchmetrics CLIPScore)",
            "psnr_ssim": "per image on [0,1] against the same-seed image of the fidelity reference, then mean",
        },
        "versions": _versions(),
    }
    path = out / "metrics.json"
    path.write_text(json.dumps(payload, indent=1, sort_keys=True))
    return path


def grid(images: Sequence[Image.Image], columns: int, pad: int = 2, scale: int = 2) -> Image.Image:
    """Tile equally sized images into a grid (upscaled with nearest neighbour so small images stay legible)."""
    w, h = images[0].size
    w, h = w * scale, h * scale
    rows = (len(images) + columns - 1) // columns
    canvas = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + pad) + pad), "white")
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        canvas.paste(im.convert("RGB").resize((w, h), Image.NEAREST), (pad + c * (w + pad), pad + r * (h + pad)))
    return canvas


def bar_chart(title: str, values: dict[str, float], width: int = 360, bar_h: int = 18,
              lower_is_better: bool | None = None) -> Image.Image:
    """A labelled horizontal bar chart, one bar per configuration; the title says which direction is better."""
    if lower_is_better is not None:
        title = f"{title} ({'lower' if lower_is_better else 'higher'} is better)"
    draw_h = 24 + len(values) * (bar_h + 6)
    im = Image.new("RGB", (width, draw_h), "white")
    d = ImageDraw.Draw(im)
    d.text((4, 4), title, fill="black")
    top = max((abs(v) for v in values.values()), default=1.0) or 1.0
    label_w, value_w = 110, 70
    for i, (name, v) in enumerate(values.items()):
        y = 24 + i * (bar_h + 6)
        d.text((4, y + 3), name[:18], fill="black")
        length = int((width - label_w - value_w) * abs(v) / top)
        d.rectangle([label_w, y, label_w + max(length, 1), y + bar_h], fill=(70, 110, 200))
        d.text((label_w + length + 4, y + 3), f"{v:.3g}", fill="black")
    return im


def _stack(images: Sequence[Image.Image]) -> Image.Image:
    canvas = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images)), "white")
    y = 0
    for im in images:
        canvas.paste(im, (0, y))
        y += im.height
    return canvas


def write_report(out: Path, results: dict[str, dict], spec: Any, items: Sequence[Any], n_grid: int = 16) -> Path:
    """``report.md`` with the metrics table, one comparison grid (a row per configuration, same seeds) and a
    bar chart per metric (``metrics.png``)."""
    names = list(results)
    shown = [it for it in items][:n_grid]
    rows = []
    for name in names:
        rows.extend(Image.open(out / name / it.filename) for it in shown)
    if rows:
        grid(rows, columns=len(shown)).save(out / "grid.png")
    charts = [bar_chart(header, {n: results[n][key] for n in names if key in results[n]}, lower_is_better=lower)
              for key, header, _, lower in COLUMNS if any(key in results[n] for n in names)]
    if charts:
        _stack(charts).save(out / "metrics.png")
    first = next(iter(results.values()), {})
    fid_ref = next((m["fidelity_reference"] for m in results.values() if m.get("fidelity_reference")), "none")
    lines = [
        "# visq image-quality report", "",
        f"Model `{spec.model}`, {len(items)} images per configuration ({spec.per_prompt} per "
        f"{'prompt' if spec.prompts is not None else 'class'}), seed {spec.seed}, {spec.gen.steps} steps, "
        f"guidance {spec.gen.guidance}.",
        f"FID feature network: `{first.get('fid_network', 'none')}` "
        f"(reference n = {first.get('fid_reference_n', '-')})."
        f" CLIP: `{first.get('clip_network', 'none')}`. Fidelity reference: `{fid_ref}`"
        " (same seeds).", "",
    ]
    lines += [markdown_table(results), ""]
    lines += [f"- {note}" for note in notes(results)]
    lines += ["", f"Rows of `grid.png`: {', '.join(names)} (first {len(shown)} images, same seeds).", "",
              "![grid](grid.png)", "", "![metrics](metrics.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
