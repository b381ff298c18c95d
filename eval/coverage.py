"""Which model families visq quantizes, and how: one row per timm family or diffusers pipeline.

    python -m eval.coverage                   # -> eval/results/coverage.json, coverage.md, README block

Each family is built from timm's own config at random weights (small widths where timm allows it, so the whole
table runs in minutes on 2 cores), from ``visq.testing``'s tiny pipelines (FLUX's flow matching included) or from its
tiny diffusion transformers (``visq.testing.TRANSFORMERS``: FLUX, SD3, Sana, Qwen-Image, Z-Image, ...). Per family the
command quantizes ``w8a8``, ``w4a8`` and ``w8a16`` with calibration on 4 random inputs (or 2 prompts / class ids /
samples, or one captured denoiser call), exports
the ``w8a8`` model (``visq.export``) and counts the attention modules that got quantizer slots. A cell that raises
shows the first words of its error: visq fails loud rather than leaving attention float silently. Rows are
written as they finish; a rerun recomputes everything (the table takes about a minute).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"
README = Path(__file__).parent.parent / "README.md"
BLOCK = "coverage"
RECIPES = ("w8a8", "w4a8", "w8a16")

# family -> (timm model name, create_model kwargs, input size)
TIMM: dict[str, tuple[str, dict[str, Any], int]] = {
    "ViT / DeiT": ("deit_tiny_patch16_224", dict(patch_size=8, embed_dim=32, depth=2, num_heads=2), 32),
    "Swin": ("swin_tiny_patch4_window7_224", dict(embed_dim=16, depths=(1, 1), num_heads=(2, 2), window_size=4), 32),
    "SwinV2": ("swinv2_tiny_window8_256", dict(embed_dim=16, depths=(1, 1), num_heads=(2, 2), window_size=4,
                                               patch_size=4), 32),
    "BEiT": ("beit_base_patch16_224", dict(patch_size=8, embed_dim=32, depth=2, num_heads=2), 32),
    "EVA-02": ("eva02_tiny_patch14_224", dict(patch_size=14, embed_dim=32, depth=2, num_heads=2), 28),
    "CaiT": ("cait_xxs24_224", dict(patch_size=8, embed_dim=32, depth=1, num_heads=2, depth_token_only=1), 32),
    "XCiT": ("xcit_nano_12_p16_224", dict(embed_dim=32, depth=1, num_heads=2), 32),
    "LeViT": ("levit_128s", {}, 32),
    "MViTv2": ("mvitv2_tiny", {}, 32),
    "Hiera": ("hiera_tiny_224", {}, 64),
    "EfficientFormer": ("efficientformer_l1", {}, 224),
    "EfficientFormerV2": ("efficientformerv2_s0", {}, 224),
    "FastViT": ("fastvit_t8", {}, 224),
    "FastViT (SA)": ("fastvit_sa12", {}, 224),
}
# visq.testing: text-to-image, DiT, unconditional, flow matching (embedded guidance; batched CFG), text-to-video
PIPELINES = ("tiny_sd", "tiny_dit", "tiny_ddim", "tiny_flux", "tiny_sd3", "tiny_wan", "tiny_cogvideox")
PIPELINE_OPTIONS = {"tiny_flux": {"height": 16, "width": 16, "max_sequence_length": 8},
                    "tiny_sd3": {"height": 16, "width": 16},
                    "tiny_wan": {"height": 32, "width": 32, "num_frames": 5, "max_sequence_length": 8},
                    "tiny_cogvideox": {"height": 32, "width": 32, "num_frames": 9, "max_sequence_length": 6}}
# family -> visq.testing.TRANSFORMERS name (a bare denoiser, calibrated on one captured call)
TRANSFORMERS = {"FLUX.1": "flux", "FLUX.2": "flux2", "Wan 2.1 (video)": "wan", "Chroma": "chroma",
                "SD3 / SD3.5": "sd3", "Sana": "sana", "Qwen-Image": "qwen_image", "Z-Image": "z_image",
                "Lumina2": "lumina2", "Lumina-Next": "lumina_next", "HunyuanDiT": "hunyuan_dit",
                "AuraFlow": "auraflow", "CogView3Plus": "cogview3plus", "CogVideoX (video)": "cogvideox",
                "HunyuanVideo (video)": "hunyuan_video", "LTX-Video (video)": "ltx_video"}


def _timm(name: str, kwargs: dict[str, Any], size: int) -> tuple[Callable[[], Any], Any, dict[str, Any]]:
    import timm

    def build() -> Any:
        torch.manual_seed(0)
        extra = {"img_size": size} if "img_size" not in kwargs and size != 224 else {}
        return timm.create_model(name, pretrained=False, num_classes=10, **extra, **kwargs).eval()

    return build, torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0)), {}


def _pipeline(name: str) -> tuple[Callable[[], Any], Any, dict[str, Any]]:
    from visq import testing

    calib = {"tiny_dit": [0, 1], "tiny_ddim": 2}.get(name, ["a red circle", "a blue square"])  # class ids, a count
    return getattr(testing, name), calib, PIPELINE_OPTIONS.get(name, {})


def _transformer(name: str) -> tuple[Callable[[], Any], Any, dict[str, Any]]:
    from visq.calibrate import CalibSet, Call
    from visq.testing import tiny_transformer

    _, kwargs = tiny_transformer(name)
    timestep = kwargs.get("timestep", kwargs.get("t"))
    return (lambda: tiny_transformer(name)[0]), CalibSet([Call((), kwargs, timestep=float(timestep[0]))]), {}


def _attention(model: Any, state: Any) -> str:
    """Attention modules that got quantizer slots, and those kept float because visq has no adapter for them."""
    slotted = sum(hasattr(m, "probs_quantizer") for m in model.modules())
    plain = sum(why.startswith("attention class") for why in state.plan.float_layers.values())
    linear = sum(why.startswith("linear attention") for why in state.plan.float_layers.values())
    host = sum(why.startswith("host default") and hasattr(model.get_submodule(name), "processor")
               for name, why in state.plan.float_layers.items())  # e.g. a text refiner that runs once per prompt
    if not slotted and not plain and not linear and not host:
        return "no attention layers"
    return (f"{slotted} quantized" + (f", {plain} float (no adapter)" if plain else "")
            + (f", {linear} float (linear attention, named in summary)" if linear else "")
            + (f", {host} float (host default, named in summary)" if host else ""))


def _error(err: Exception) -> str:
    """The error's first clause (an adapter error up to its ", so ..." explanation)."""
    text = str(err).splitlines()[0].split(", so its")[0]
    return f"raises: {text if len(text) <= 100 else text[:97].rsplit(' ', 1)[0] + ' ...'}"


def measure(build: Callable[[], Any], calib: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The row of one family (module doc); ``extra``: further pipeline arguments of the calibration runs."""
    extra = extra or {}
    import visq
    from visq import hosts

    options = {"num_inference_steps": 2, **extra} if isinstance(calib, (list, int)) else None
    row: dict[str, Any] = {}
    for recipe in RECIPES:
        obj = build()
        try:
            visq.quantize(obj, recipe, calib=calib, calib_options=options, progress=False)
        except Exception as err:  # a cell of the table: the error is the result
            row[recipe] = _error(err)
            continue
        state = visq.quant_state(obj)
        row[recipe] = f"{len(state.plan.quantized)} sites"
        row[f"{recipe}_attention"] = _attention(hosts.detect(obj).target(obj), state)
        if recipe == "w8a16" and "no adapter" in row[f"{recipe}_attention"]:
            row[recipe] += ", attention " + row[f"{recipe}_attention"].split(", ")[1]
        if recipe == "w8a8":
            try:
                visq.export(obj)
                row["export"] = "ok"
            except Exception as err:
                row["export"] = _error(err)
    return row


def render(results: dict[str, dict[str, Any]]) -> str:
    """The markdown table (the README block and coverage.md)."""
    lines = ["| family | model | w8a8 | attention at w8a8 | w4a8 | w8a16 (attention float by recipe) "
             "| export (w8a8) |",
             "|---|---|---|---|---|---|---|"]
    for family, row in results.items():
        cells = [row.get(k, "-") for k in ("w8a8", "w8a8_attention", "w4a8", "w8a16", "export")]
        lines.append(f"| {family} | `{row['model']}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def header() -> str:
    return ("Coverage, `python -m eval.coverage` (random weights, timm configs at small widths, calibration on 4 "
            "random inputs; diffusers rows are `visq.testing`'s tiny pipelines, 2 sampling steps, and its tiny "
            "diffusion transformers calibrated on one denoiser call). \"raises\" is "
            "visq refusing, with the reason, rather than leaving attention float silently; \"float\" attention is "
            "named in `summary`.")


def main(families: list[str] | None = None, out: Path = RESULTS / "coverage.json", readme: bool = True) -> dict:
    """Measure every family (or those named), write the JSON, the markdown file and the README block."""
    from eval.report import replace_block

    torch.set_num_threads(1)
    results: dict[str, dict[str, Any]] = {}
    todo = ([(f, TIMM[f][0], _timm(*TIMM[f])) for f in TIMM]
            + [(p, f"visq.testing.{p}", _pipeline(p)) for p in PIPELINES]
            + [(f, f"tiny_transformer({n!r})", _transformer(n)) for f, n in TRANSFORMERS.items()])
    for family, model, (build, calib, extra) in todo:
        if families and family not in families:
            continue
        print(f"[coverage] {family} ...", flush=True)
        results[family] = {"model": model, **measure(build, calib, extra)}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
    text = header() + "\n\n" + render(results)
    out.with_suffix(".md").write_text(text + "\n")
    if readme and not families:
        README.write_text(replace_block(README.read_text(), BLOCK, text))
    print(render(results))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", help="only these rows (the README is then left as it is)")
    args = parser.parse_args()
    main(args.families)
