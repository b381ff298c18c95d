"""The batch runner: generate images per configuration (resumable, sharded with accelerate), then score them.

    python -m eval.images run --model shapes-sd --prompts prompts.txt --configs float w8a8 --out runs/x
    accelerate launch --multi_gpu --num_processes 2 -m eval.images run ...   # 2 CPU processes: same results
    (accelerate 1.15's ``launch --cpu`` starts a single process unless MPI is set up; see eval/dist.py)
    python -m eval.images fid runs/x/float --reference real_dir_or_stats.safetensors
    python -m eval.images clip runs/x/float --captions runs/x/float/manifest.jsonl

Layout of ``--out``: ``run.json`` (what was asked), one folder per configuration with its PNGs, manifest shards,
``manifest.jsonl`` and ``config.json``; ``_models/`` (quantized models, reused on resume); ``metrics.json`` and
``report.md``. A run killed at any point and started again with the same arguments writes only what is missing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather_object
from torch import nn
from tqdm.auto import tqdm

from eval import dist, fidelity
from eval.clip_score import ClipFeatures
from eval.features import network_name
from eval.io import load_images, save_png
from eval.manifest import Item, Manifest
from eval.stats import FeatureStats, frechet_distance
from visq.guard import check_float, check_int

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenSpec:
    """Sampler settings, recorded with every image."""

    steps: int = 20
    guidance: float = 4.0
    height: int | None = None
    width: int | None = None

    def __post_init__(self) -> None:
        check_int("steps (sampling steps per image)", self.steps)
        check_float("guidance", self.guidance, positive=False)
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 8 or value % 8):
                raise ValueError(f"{name} must be a multiple of 8 (>= 8) or None for the model's own, got {value!r}")


def render(pipe: Any, items: Sequence[Item], gen: GenSpec) -> np.ndarray:
    """Generate one batch: uint8 (N, H, W, 3), one generator per image seeded from the item."""
    kwargs: dict[str, Any] = {
        "num_inference_steps": gen.steps, "guidance_scale": gen.guidance, "output_type": "np",
        "generator": [torch.Generator().manual_seed(it.seed) for it in items],
    }
    with torch.no_grad():
        if items[0].class_id is not None:
            out = pipe(class_labels=[it.class_id for it in items], **kwargs)
        else:
            size = {k: v for k, v in (("height", gen.height), ("width", gen.width)) if v is not None}
            out = pipe(prompt=[it.prompt for it in items], **kwargs, **size)
    images = np.asarray(out.images)
    return (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)


def _batches(seq: Sequence, size: int) -> list:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def generate(
    items: Sequence[Item], folder: str | Path, load_pipe: Callable[[], Any], *, batch_size: int = 8,
    gen: GenSpec = GenSpec(), config: dict | None = None, max_images: int | None = None,
    on_image: Callable[[dict], None] | None = None, progress: bool = True,
) -> list[dict] | None:
    """Generate the missing images of ``items`` into ``folder``; returns the merged manifest (main process).

    Batches are fixed slices of ``items`` and are split whole between processes, so every image is computed in
    the same batch whatever the number of processes. A batch with some images already on disk is rendered again
    but only its missing images are written. All processes must call this together.

    Args:
        load_pipe: called (by every process, together) only if something is missing.
        max_images: stop after writing this many images in this process (returns None; for tests and smoke runs).
        on_image: called after each image and its record are on disk (may raise to simulate a crash).
    """
    state = dist.state()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(folder, state.process_index)
    done = set(manifest.records())
    if state.is_main_process:
        for stale in folder.glob(".*.tmp"):  # a crash between writing and renaming an image
            stale.unlink()
    state.wait_for_everyone()  # every process has read the same manifest before anyone writes
    if any(it.key not in done for it in items):
        pipe = load_pipe()
        batches = _batches(list(items), batch_size)
        with state.split_between_processes(batches) as mine:
            todo = [b for b in mine if any(it.key not in done for it in b)]
        if todo:  # one-step warm-up so the first timed batch of a configuration does not pay for lazy setup
            render(pipe, todo[0][:1], GenSpec(1, gen.guidance, gen.height, gen.width))
        written = 0
        for batch in tqdm(todo, desc=f"generate {folder.name}", disable=not progress):
            start = time.perf_counter()
            images = render(pipe, batch, gen)
            seconds = (time.perf_counter() - start) / len(batch)
            for it, image in zip(batch, images):
                if it.key in done:
                    continue  # nothing already written is rewritten
                if max_images is not None and written >= max_images:
                    return None
                save_png(image, folder / it.filename)
                record = {**asdict(it), "key": it.key, "path": it.filename, "config": config or {},
                          "gen": asdict(gen), "seconds": seconds, "rank": state.process_index}
                manifest.append(record)
                written += 1
                if on_image is not None:
                    on_image(record)
    state.wait_for_everyone()
    merged = manifest.merge(items) if state.is_main_process else None
    state.wait_for_everyone()
    return merged


@dataclass
class Scorers:
    """What to measure. Any of them may be None (skipped)."""

    fid_net: nn.Module | None = None
    reference: FeatureStats | None = None
    clip: ClipFeatures | None = None
    lpips: nn.Module | None = None
    batch_size: int = 64
    progress: bool = True


@torch.no_grad()
def _score_batch(records: list[dict], folder: Path, scorers: Scorers, ref_folder: Path | None) -> dict[str, Any]:
    images = load_images([folder / r["path"] for r in records])
    out: dict[str, Any] = {}
    if scorers.fid_net is not None:
        out["features"] = scorers.fid_net(images).double().reshape(len(images), -1)
    prompts = [r.get("prompt") for r in records]
    if scorers.clip is not None and all(isinstance(p, str) for p in prompts):
        out["clip"] = 100 * (scorers.clip(images) * scorers.clip.text(prompts)).sum(-1).clamp(min=0).double()
    if ref_folder is not None:
        ref = load_images([ref_folder / r["path"] for r in records])
        out["psnr"], out["ssim"] = fidelity.psnr(images, ref), fidelity.ssim(images, ref)
        if scorers.lpips is not None:
            out["lpips"] = fidelity.lpips(scorers.lpips, images, ref)
    return out


def score(
    records: Sequence[dict], folder: str | Path, scorers: Scorers, ref_folder: str | Path | None = None
) -> dict[str, Any] | None:
    """Metrics of one generated folder (main process; None elsewhere). Work is split between processes by batch.

    ``ref_folder`` holds same-named, same-seed images (the float run) for PSNR/SSIM/LPIPS.
    """
    state = dist.state()
    folder, ref = Path(folder), (Path(ref_folder) if ref_folder is not None else None)
    batches = _batches(list(records), scorers.batch_size)
    with state.split_between_processes(batches) as mine:
        parts = [_score_batch(b, folder, scorers, ref) for b in tqdm(mine, desc=f"score {folder.name}",
                                                                      disable=not scorers.progress)]
    parts = gather_object(parts) if state.num_processes > 1 else parts
    if not state.is_main_process:
        return None
    cat = {k: torch.cat([p[k] for p in parts]) for k in (parts[0] if parts else {})}
    metrics: dict[str, Any] = {"n_images": len(records)}
    if "features" in cat and scorers.reference is not None:
        stats = FeatureStats.from_features(cat["features"], network_name(scorers.fid_net))
        metrics["fid"] = frechet_distance(stats, scorers.reference)
        if min(stats.n, scorers.reference.n) <= stats.mean.numel():
            # rank-deficient covariances: FID is biased upwards; compare only within one run, same n
            log.warning("FID on %d images with %d-d features is biased; compare within a run only", stats.n,
                        stats.mean.numel())
            metrics["fid_small_n"] = True
        metrics["fid_network"] = stats.network
        metrics["fid_reference_n"] = scorers.reference.n
    if "clip" in cat:
        metrics["clip_score"] = float(cat["clip"].mean())
        metrics["clip_network"] = scorers.clip.name
    for key in ("psnr", "ssim", "lpips"):
        if key in cat:
            metrics[key] = float(cat[key].mean())
    seconds = [r["seconds"] for r in records if "seconds" in r]
    if seconds:
        metrics["sec_per_image"] = float(np.mean(seconds))
    return metrics


@dataclass
class RunSpec:
    """Everything that determines the images of a run (saved as ``run.json``; a resume must match it)."""

    model: str
    prompts: list[str] | None = None
    classes: list[int] | None = None
    per_prompt: int = 1
    seed: int = 0
    batch_size: int = 8
    gen: GenSpec = field(default_factory=GenSpec)
    configs: list[str] = field(default_factory=lambda: ["float"])
    calib: list | None = None


def _check_run_file(out: Path, spec: RunSpec) -> None:
    """Write ``run.json`` on a fresh run; on a rerun refuse arguments that would change the images."""
    state = dist.state()
    from eval.pipes import weights_fingerprint

    path = out / "run.json"
    wanted = {**json.loads(json.dumps(asdict(spec))), "weights": weights_fingerprint(spec.model)}
    if state.is_main_process and not path.is_file():
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(wanted, indent=1))
    state.wait_for_everyone()
    found = json.loads(path.read_text())
    changed = sorted(k for k in wanted if k != "configs" and found.get(k) != wanted[k])
    if changed:
        raise ValueError(f"{out} holds a run with different {', '.join(changed)}; use a new --out to start afresh")
    if found.get("configs") != wanted["configs"] and state.is_main_process:
        path.write_text(json.dumps(wanted, indent=1))  # adding or dropping configurations is fine


def check_spec(spec: RunSpec) -> tuple[list, list | None]:
    """Validate a run before anything is loaded or generated; returns its parsed configurations and calibration data.

    Calibration data: ``spec.calib``; for class-conditional runs the class ids (labels, not images: the calibration
    runs draw their own seeds). Prompts are never borrowed from the evaluation set.
    """
    from eval import pipes

    configs = [pipes.QuantConfig.parse(t) for t in spec.configs]
    check_int("per_prompt", spec.per_prompt)
    check_int("batch_size", spec.batch_size)
    check_int("seed", spec.seed, 0)
    pipes.check_model(spec.model)
    pipes.validate(configs)
    if spec.calib is not None or spec.classes is not None:
        return configs, spec.calib if spec.calib is not None else spec.classes
    if any(c.recipe is not None for c in configs):
        raise ValueError("quantized configurations need calibration prompts other than the evaluation prompts: "
                         "pass --calib <prompt file> (for the zoo shapes-sd: eval/prompts/shapes_train.txt)")
    return configs, None


def run(
    spec: RunSpec, out: str | Path, scorers: Scorers, *, fidelity_ref: str | None = "float",
    max_images: int | None = None, on_image: Callable[[dict], None] | None = None,
) -> dict[str, Any] | None:
    """Generate every configuration of ``spec`` into ``out``, score them, write metrics.json and report.md.

    Returns the metrics (main process) or None (other processes, or stopped early by ``max_images``, which is for
    single-process use). ``fidelity_ref`` names the configuration the others are compared to pixel by pixel.
    """
    from eval import pipes, report
    from eval.manifest import plan, read_manifest

    state, out = dist.state(), Path(out)
    configs, calib = check_spec(spec)
    _check_run_file(out, spec)
    items = plan(spec.prompts, spec.classes, spec.per_prompt, spec.seed)
    for cfg in configs:
        folder = out / cfg.name

        def load(cfg: pipes.QuantConfig = cfg, folder: Path = folder) -> Any:
            options = {"num_inference_steps": spec.gen.steps, "guidance_scale": spec.gen.guidance}
            pipe = pipes.prepare(spec.model, cfg, out / "_models", calib, options)
            if state.is_main_process:
                info = {**asdict(cfg), "model": spec.model, **pipes.model_size(pipe),
                        **pipes.calibration_seconds(out / "_models", cfg)}
                (folder / "config.json").write_text(json.dumps(info, indent=1))
            return pipe

        merged = generate(items, folder, load, batch_size=spec.batch_size, gen=spec.gen, config=asdict(cfg),
                          max_images=max_images, on_image=on_image, progress=scorers.progress)
        if merged is None and state.is_main_process:
            log.info("stopped after max_images=%s; rerun to finish", max_images)
            return None
    names = [c.name for c in configs]
    results: dict[str, Any] = {}
    for cfg in configs:
        folder = out / cfg.name
        ref = out / fidelity_ref if fidelity_ref in names and fidelity_ref != cfg.name else None
        metrics = score(read_manifest(folder / "manifest.jsonl"), folder, scorers, ref)
        if metrics is not None:
            info = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
            size = {k: info[k] for k in ("size_mb", "weight_bits", "params_m", "calib_seconds") if k in info}
            results[cfg.name] = {**metrics, **size}
            results[cfg.name]["fidelity_reference"] = fidelity_ref if ref is not None else None
    if not state.is_main_process:
        return None
    report.write_metrics(out, results, spec)
    report.write_report(out, results, spec, items)
    return results


def judge_clip() -> ClipFeatures:
    """The zoo's judge CLIP (a ``ZooClip``), through the zoo's own encoders (CLIPModel or open_clip alike)."""
    from visq import zoo
    from visq.zoo.clip import image_features, text_features

    judge = zoo.load("judge-clip")
    return ClipFeatures(judge.model, lambda images: image_features(judge.model, images),
                        lambda prompts: text_features(judge.model, judge.tokenizer, prompts), name="zoo-judge-clip")


def clip_from_arg(arg: str) -> ClipFeatures:
    """``judge`` (the zoo judge CLIP) or ``open_clip:<model>:<checkpoint path>``."""
    if arg == "judge":
        return judge_clip()
    kind, _, rest = arg.partition(":")
    model, _, checkpoint = rest.partition(":")
    if kind != "open_clip" or not checkpoint:
        raise ValueError(f"--clip {arg!r}: use 'judge' or 'open_clip:<model name>:<local checkpoint>'")
    from eval.clip_score import load_open_clip

    return load_open_clip(model, checkpoint)


def fid_net_from_args(args: Any, clip: Callable[[], ClipFeatures]) -> nn.Module | None:
    """The FID feature network the arguments ask for (``clip``, ``inception`` or ``none``)."""
    if args.fid_net == "none":
        return None
    if args.fid_net == "inception":
        from eval.fid import inception

        return inception(args.inception_weights, antialias=not args.tf1_resize)
    return clip()


def reference_from_arg(arg: str, fid_net: nn.Module, n: int, cache_dir: str | None, strict: bool) -> FeatureStats:
    """Reference statistics: ``shapes`` (held-out visq-shapes images), an image folder, or a saved stats file."""
    from eval.io import scan_images
    from eval.stats import reference_stats

    if arg == "shapes":
        from visq.zoo import shapes

        return reference_stats(fid_net, shapes.generate(n, seed=0, split="heldout").images, cache_dir)
    path = Path(arg)
    if path.is_file():
        return FeatureStats.load(path)
    if path.is_dir():
        return reference_stats(fid_net, scan_images(path, strict).paths, cache_dir)
    raise FileNotFoundError(f"--reference {arg}: not 'shapes', an image folder or a .safetensors stats file")


def _parser() -> Any:
    import argparse

    p = argparse.ArgumentParser(prog="python -m eval.images", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp: Any) -> None:
        sp.add_argument("--fid-net", choices=("clip", "inception", "none"), default="clip",
                        help="FID features: the CLIP given by --clip (fast), the standard Inception, or none")
        sp.add_argument("--clip", default="judge", help="'judge' or 'open_clip:<model>:<checkpoint>'")
        sp.add_argument("--inception-weights", default=None, help="torch-fidelity .pth (default: built offline)")
        sp.add_argument("--tf1-resize", action="store_true", help="torch-fidelity's resize instead of antialiased")
        sp.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "visq" / "stats"),
                        help="cache of reference statistics (by feature network and content hash)")
        sp.add_argument("--strict", action="store_true", help="error on unreadable files instead of skipping")
        sp.add_argument("--batch-size", type=int, default=8, help="images per generation / feature batch")

    r = sub.add_parser("run", help="generate and score configurations of a pipeline")
    r.add_argument("--model", required=True, help="zoo name or local diffusers folder")
    g = r.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompts", help="prompt file: .txt (one per line), .jsonl or .csv with a 'prompt' field")
    g.add_argument("--classes", help="class ids for class-conditional pipelines, e.g. '0-9' or '1,5,7'")
    r.add_argument("--configs", nargs="+", default=["float"], help="float | <recipe>[@<method>] | load:<folder>")
    r.add_argument("--calib", help="prompt file for calibration, needed by recipe configurations with --prompts "
                   "(never the evaluation prompts); default with --classes: the class ids")
    r.add_argument("--per-prompt", type=int, default=1, help="images per prompt (or class), each its own seed")
    r.add_argument("--seed", type=int, default=0, help="base seed of the per-image generators")
    r.add_argument("--steps", type=int, default=20, help="sampling steps per image (and per calibration run)")
    r.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale")
    r.add_argument("--reference", default=None, help="'shapes', a folder of real images, or a stats file")
    r.add_argument("--reference-n", type=int, default=500, help="images drawn for --reference shapes")
    r.add_argument("--fidelity-ref", default="float", help="configuration the others are compared to")
    r.add_argument("--max-images", type=int, default=None, help="stop after this many new images (smoke runs)")
    r.add_argument("--out", required=True, help="run folder (rerun the same command to resume)")
    r.add_argument("--no-progress", action="store_true", help="hide progress bars")
    common(r)

    f = sub.add_parser("fid", help="FID between an image folder and a folder or saved statistics")
    f.add_argument("folder", help="folder of generated images")
    f.add_argument("--reference", required=True, help="folder of real images or a .safetensors stats file")
    f.add_argument("--save-stats", help="also write the folder's statistics here")
    common(f)

    c = sub.add_parser("clip", help="CLIP score of a folder with a captions manifest (jsonl: path, prompt)")
    c.add_argument("folder", help="folder of generated images")
    c.add_argument("--captions", required=True, help="manifest.jsonl of the run (path and prompt per image)")
    common(c)
    return p


def _cmd_run(args: Any) -> dict | None:
    from eval.io import parse_classes, read_prompts

    spec = RunSpec(
        model=args.model, prompts=read_prompts(args.prompts) if args.prompts else None,
        classes=parse_classes(args.classes) if args.classes else None, per_prompt=args.per_prompt, seed=args.seed,
        batch_size=args.batch_size, gen=GenSpec(args.steps, args.guidance), configs=args.configs,
        calib=read_prompts(args.calib) if args.calib else None,
    )
    check_spec(spec)  # fail on a bad model or configuration before loading scorers or generating anything
    state, clip = dist.state(), None
    if spec.prompts is not None and args.clip != "none":
        clip = clip_from_arg(args.clip)
    fid_net = fid_net_from_args(args, lambda: clip if clip is not None else clip_from_arg(args.clip))
    reference = None
    if fid_net is not None and args.reference is not None and state.is_main_process:
        reference = reference_from_arg(args.reference, fid_net, args.reference_n, args.cache_dir, args.strict)
    scorers = Scorers(fid_net, reference, clip, batch_size=max(args.batch_size, 32), progress=not args.no_progress)
    return run(spec, args.out, scorers, fidelity_ref=args.fidelity_ref, max_images=args.max_images)


def _cmd_fid(args: Any) -> dict:
    from eval.fid import fid_images
    from eval.io import scan_images
    from eval.stats import reference_stats

    fid_net = fid_net_from_args(args, lambda: clip_from_arg(args.clip))
    if fid_net is None:
        raise ValueError("fid needs a feature network: --fid-net clip or inception")
    found = scan_images(args.folder, args.strict)
    reference = reference_from_arg(args.reference, fid_net, 0, args.cache_dir, args.strict)
    if args.save_stats:
        reference_stats(fid_net, found.paths).save(args.save_stats)
    value = fid_images(fid_net, found.paths, reference, batch_size=args.batch_size)
    return {"fid": value, "fid_network": network_name(fid_net), "n_images": len(found.paths),
            "n_reference": reference.n, "skipped": len(found.skipped)}


def _cmd_clip(args: Any) -> dict:
    from eval.clip_score import clip_scores
    from eval.manifest import read_manifest

    clip = clip_from_arg(args.clip)
    folder = Path(args.folder)
    records = [r for r in read_manifest(args.captions) if r.get("prompt")]
    missing = [r["path"] for r in records if not (folder / r["path"]).is_file()]
    if missing and args.strict:
        raise FileNotFoundError(f"{len(missing)} captioned images missing in {folder}, e.g. {missing[:3]}")
    records = [r for r in records if (folder / r["path"]).is_file()]
    if not records:
        raise ValueError(f"no captioned images of {args.captions} found in {folder}")
    images = load_images([folder / r["path"] for r in records])
    scores = clip_scores(clip, images, [r["prompt"] for r in records], args.batch_size)
    return {"clip_score": float(scores.mean()), "clip_network": clip.name, "n_images": len(records),
            "skipped": len(missing)}


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Command-line entry point (see the module docstring)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    result = {"run": _cmd_run, "fid": _cmd_fid, "clip": _cmd_clip}[args.cmd](args)
    if result is not None and dist.state().is_main_process:
        print(json.dumps(result, indent=1, sort_keys=True))
    return result


if __name__ == "__main__":
    main()
