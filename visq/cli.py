"""``visq`` command line: quantize a zoo model or a local diffusers folder and save it; show a saved summary.

    visq quantize shapes-sd w4a8 --calib prompts.txt --out out/sd-w4a8
    visq summary out/sd-w4a8
    visq doctor shapes-sd w4a8 --calib prompts.txt --roles weight --out diag.json --mixed-weight-bits 4 --save out/m
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import visq
import visq.io


def _load_source(source: str) -> Any:
    from visq import zoo

    if source in zoo.names():
        return zoo.load(source)
    folder = Path(source)
    if not (folder / "model_index.json").is_file():
        raise SystemExit(f"{source!r} is neither a zoo model ({', '.join(zoo.names())}) nor a diffusers folder")
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(folder)


def _read_calib(path: str) -> list[Any]:
    lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines:
        raise SystemExit(f"{path} holds no calibration prompts")
    return [int(x) for x in lines] if all(x.isdigit() for x in lines) else lines


def _calib_options(obj: Any, args: argparse.Namespace) -> dict[str, Any]:
    """--steps for a pipeline's calibration runs; a classifier's calibration has no sampling steps."""
    return {"num_inference_steps": args.steps} if hasattr(obj, "scheduler") else {}


def cmd_quantize(args: argparse.Namespace) -> None:
    visq.io.check_folder(args.out)  # before the minutes of calibration, not after
    obj = _load_source(args.source)
    calib = _read_calib(args.calib)
    visq.quantize(obj, args.recipe, method=args.method, calib=calib, calib_options=_calib_options(obj, args))
    visq.save(obj, args.out)
    state = visq.quant_state(obj)
    if args.summary:
        print(visq.summary(obj))
    else:
        print(f"quantized {len(state.plan.quantized)} sites with {state.recipe.name} (method {state.recipe.method}), "
              f"{len(state.plan.float_layers)} layers kept float; every site: -v, or `visq summary {args.out}`")
    print(f"saved to {args.out}")


def cmd_summary(args: argparse.Namespace) -> None:
    meta = visq.io.read_meta(Path(args.folder))
    print(f"{meta['model']['class']} ({meta['model']['host']}), recipe {meta['recipe']['name']}, "
          f"method {meta['recipe']['method']}")
    print(f"quantized sites: {len(meta['sites'])}, float layers: {len(meta['float_layers'])}")
    for path, why in meta["float_layers"].items():
        print(f"  {path}: {why}")


def _doctor_calib(obj: Any, args: argparse.Namespace) -> Any:
    if args.calib:
        return _read_calib(args.calib)
    if args.source == "shapes-vit":  # the zoo classifier: training-split images, as eval.bench_vit calibrates
        from visq.zoo import shapes
        from visq.zoo.vit import VIT_DATA, normalize

        return normalize(shapes.generate(args.calib_n, 1000, "train", VIT_DATA).images)
    raise SystemExit("--calib is required: a text file with one prompt (or class id) per line")


def cmd_doctor(args: argparse.Namespace) -> None:
    if args.out and Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a folder; give the path of the diagnosis JSON file to write")
    if args.save:
        visq.io.check_folder(args.save)
    obj = _load_source(args.source)
    calib = _doctor_calib(obj, args)
    diag = visq.doctor(obj, args.recipe, method=args.method, calib=calib, bits=tuple(args.bits),
                       roles=tuple(args.roles), max_calls=args.max_calls, over=args.over,
                       calib_options=_calib_options(obj, args))
    print(diag.table(args.top))
    if args.out:
        diag.save(args.out)
        print(f"diagnosis saved to {args.out}; HTML page: python -m eval.report_html --diagnosis {args.out} "
              "--out report.html (from a visq checkout)")
    if args.mixed_weight_bits is None and args.mixed_activation_bits is None:
        return
    recipe = diag.mixed(weight_bits=args.mixed_weight_bits, activation_bits=args.mixed_activation_bits)
    if not args.save:
        raise SystemExit("--mixed-*-bits needs --save FOLDER for the mixed-precision model")
    fresh = _load_source(args.source)
    visq.quantize(fresh, recipe, calib=calib, calib_options=_calib_options(fresh, args))
    visq.save(fresh, args.save)
    print(f"{recipe.name}: saved to {args.save} (`visq summary {args.save}` lists every site's bits)")


def _doctor_parser(sub: Any) -> None:
    d = sub.add_parser("doctor", help="per-site sensitivity ranking, and optionally a mixed-precision model",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d.add_argument("source", help="zoo name (visq.zoo.names()) or a local diffusers pipeline folder")
    d.add_argument("recipe", help="the recipe to diagnose, e.g. w4a8")
    d.add_argument("--calib", help="text file: one prompt (or class id) per line (shapes-vit: zoo images if absent)")
    d.add_argument("--calib-n", type=int, default=32, help="calibration images for shapes-vit without --calib")
    d.add_argument("--method", default=None, help="method name (visq.methods.names()); default min-max")
    d.add_argument("--steps", type=int, default=10, help="sampling steps of each calibration run")
    d.add_argument("--bits", type=int, nargs="*", default=[2, 3, 4, 6, 8], help="candidate widths to measure")
    d.add_argument("--roles", nargs="+", default=["weight", "activation"], choices=["weight", "activation"],
                   help="which sites to measure")
    d.add_argument("--max-calls", type=int, default=None, help="use at most this many calibration calls")
    d.add_argument("--over", default="call", choices=["call", "trajectory"],
                   help="errors per calibration call (one denoiser step), or on the final latents of whole sampling "
                        "runs (diffusion pipelines; ranks by how errors compound, costs a run per site and width)")
    d.add_argument("--top", type=int, default=20, help="rows of the printed ranking")
    d.add_argument("--out", default=None, help="write the diagnosis JSON here")
    d.add_argument("--mixed-weight-bits", type=float, default=None, help="mean weight bits of a mixed recipe")
    d.add_argument("--mixed-activation-bits", type=float, default=None, help="mean activation bits of a mixed recipe")
    d.add_argument("--save", default=None, help="quantize with the mixed recipe and save it here")
    d.set_defaults(func=cmd_doctor)


def parser() -> argparse.ArgumentParser:
    """The ``visq`` argument parser (every flag has a help line)."""
    parser = argparse.ArgumentParser(prog="visq", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(required=True)
    q = sub.add_parser("quantize", help="quantize and save a pipeline",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("source", help="zoo name (visq.zoo.names()) or a local diffusers pipeline folder")
    q.add_argument("recipe", help="w<W>a<A>[-g<G>], e.g. w8a8, w4a8")
    q.add_argument("--calib", required=True, help="text file: one prompt (or class id) per line")
    q.add_argument("--out", required=True, help="folder to write (model.safetensors + quant.json)")
    q.add_argument("--method", default=None, help="method name (visq.methods.names()); default min-max")
    q.add_argument("--steps", type=int, default=10, help="sampling steps of each calibration run")
    q.add_argument("-v", "--summary", action="store_true", help="print every quantized site and float layer")
    q.set_defaults(func=cmd_quantize)
    s = sub.add_parser("summary", help="what a saved folder holds")
    s.add_argument("folder", help="a folder written by visq quantize / visq.save")
    s.set_defaults(func=cmd_summary)
    _doctor_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``visq`` command."""
    cli = parser()
    args = cli.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as err:  # bad input: its message, not a traceback
        cli.exit(2, f"visq: error: {err}\n")


if __name__ == "__main__":
    main()
