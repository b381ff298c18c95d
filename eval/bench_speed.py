"""Speed, memory, size and quality of real quantized execution: visq (fake-quant and exported) against torchao and
optimum-quanto at equal scope (the rows and their scope: ``eval/speed_rows.py``).

    python -m eval.bench_speed                          # -> eval/results/speed.md, speed.json, README table
    python -m eval.bench_speed --models deit-s unet-sd15 --rows fp32 "visq export W8A8"

Each (model, row) cell runs in its own process (fresh compile caches, its own peak RSS), times the row and a float
fp32 copy interleaved (so both see the same background load) and reports medians; the speed-up is against that
interleaved fp32. Cells are cached in ``eval/results/speed.json`` as they finish and skipped on a rerun (delete a
key, or pass ``--fresh``, to remeasure). Quality cells (zoo models only): held-out top-1 of the zoo ViT, PSNR of
shapes-sd images to the float pipeline's (same prompts and seeds).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from eval.speed_rows import ROWS, Row, apply
from eval.timing import interleaved, medians, paired_ratio

RESULTS = Path(__file__).parent / "results"
README = Path(__file__).parent.parent / "README.md"
MODELS = ("deit-s", "vit-zoo", "unet-zoo", "unet-sd15")
MARK_START, MARK_END = "<!-- bench_speed:start -->", "<!-- bench_speed:end -->"


@dataclass(frozen=True)
class Config:
    models: tuple[str, ...] = ("deit-s", "vit-zoo", "unet-zoo")
    rows: tuple[str, ...] = tuple(ROWS)
    repeats: int = 7  # interleaved timed rounds per cell (row and fp32 alternately)
    warmup: int = 2  # untimed rounds first (allocator growth, oneDNN primitives), after the compile call
    threads: int = 1  # one thread: on a shared, oversubscribed machine two threads mostly wait at OpenMP barriers
    batch: dict[str, int] | None = None  # per model; defaults in BATCH
    quality: bool = True  # top-1 / PSNR cells on the zoo models
    quality_n: int = 8  # shapes-sd prompts for PSNR (x 20 steps); the ViT uses 1000 held-out images
    cache: str = str(RESULTS / "speed.json")
    out: str = str(RESULTS / "speed.md")
    readme: bool = True
    seed: int = 0


BATCH = {"deit-s": 4, "vit-zoo": 64, "unet-zoo": 8, "unet-sd15": 2}
SD_STEPS, SD_GUIDANCE = 20, 4.0


# -- models ----------------------------------------------------------------------------------------------------
@dataclass
class Subject:
    """A model to benchmark: the object rows quantize, the timed call, calibration data."""

    obj: Any
    call: Callable[[Any, torch.dtype], Any]  # (obj, dtype) -> output, one timed forward
    calib: Any
    calib_options: dict[str, Any]
    calib_forward: Callable[[Any], Any]  # one calibration pass through the target (quanto)


def build(model: str, batch: int, seed: int) -> Subject:
    """A fresh float subject. Random-weight architectures for speed; the zoo for quality."""
    torch.manual_seed(seed)
    if model == "deit-s":
        import timm

        net = timm.create_model("deit_small_patch16_224", pretrained=False).eval()
        x = torch.randn(batch, 3, 224, 224)
        return Subject(net, lambda m, dt: m(x.to(dt)), x[:4], {}, lambda m: m(x[:4]))
    if model == "vit-zoo":
        from eval.bench_vit import calibration
        from visq.zoo import load

        x, calib = calibration(batch, seed + 7), calibration(32, seed)
        return Subject(load("shapes-vit"), lambda m, dt: m(x.to(dt)), calib, {}, lambda m: m(calib))
    if model == "unet-zoo":
        from visq.zoo import load
        from visq.zoo.shapes import ShapesDataset

        pipe = load("shapes-sd")
        prompts = ShapesDataset("train", size=8, seed=seed + 2).captions
        return Subject(pipe, _unet_call(pipe.unet, 2 * batch, pipe.tokenizer.model_max_length), prompts,
                       {"num_inference_steps": 10}, lambda p: p(prompts[:2], num_inference_steps=4,
                                                                output_type="latent"))
    if model == "unet-sd15":
        from diffusers import UNet2DConditionModel

        from visq import CalibSet, Call

        # SD-1.5's UNet config (860M parameters) at a 16 x 16 latent (128 px): speed only, random weights
        unet = UNet2DConditionModel(sample_size=16, cross_attention_dim=768, attention_head_dim=8).eval()
        call = _unet_call(unet, batch, 77)
        calls = CalibSet([Call((torch.randn(batch, 4, 16, 16), torch.tensor(t), torch.randn(batch, 77, 768)),
                               timestep=float(t)) for t in (900, 500, 100)])
        return Subject(unet, call, calls, {}, lambda m: [m(*c.args) for c in calls])
    raise ValueError(f"unknown model {model!r}; known: {MODELS}")


def _unet_call(unet: torch.nn.Module, n: int, tokens: int) -> Callable[[Any, torch.dtype], Any]:
    cfg = unet.config
    sample = torch.randn(n, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    context = torch.randn(n, tokens, cfg.cross_attention_dim)

    def call(obj: Any, dtype: torch.dtype) -> Any:
        denoiser = getattr(obj, "unet", obj)
        return denoiser(sample.to(dtype), torch.tensor(500), context.to(dtype)).sample

    return call


# -- one cell (runs in a child process) ------------------------------------------------------------------------
def measure(model: str, row: Row, cfg: Config) -> dict[str, Any]:
    """Time ``row`` against an interleaved fp32 copy; size, peak RSS, compile time and (zoo) quality."""
    torch.set_num_threads(cfg.threads)
    batch = (cfg.batch or BATCH)[model]
    subject = build(model, batch, cfg.seed)
    start = time.perf_counter()
    obj = apply(row, subject.obj, subject.calib, subject.calib_options, lambda: subject.calib_forward(subject.obj))
    result: dict[str, Any] = {"prepare_s": time.perf_counter() - start, "batch": batch, "cpu": cpu(),
                              "repeats": cfg.repeats, "warmup": cfg.warmup}
    with torch.no_grad():
        start = time.perf_counter()
        subject.call(obj, row.dtype)
        first = time.perf_counter() - start
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        reference = build(model, batch, cfg.seed)
        times = interleaved({"row": lambda: subject.call(obj, row.dtype),
                             "fp32": lambda: reference.call(reference.obj, torch.float32)}, cfg.repeats, cfg.warmup)
    ms, ratio = medians(times), paired_ratio(times["fp32"], times["row"])
    result.update(ms=ms["row"], fp32_ms=ms["fp32"], speedup=ratio["median"], speedup_min=ratio["min"],
                  speedup_max=ratio["max"])
    if row.compiled:
        result["compile_s"] = first - ms["row"] / 1e3
    result["checkpoint_mb"] = _checkpoint_mb(row, obj)
    if cfg.quality and model in ("vit-zoo", "unet-zoo"):
        result.update(_quality(model, row, obj, reference.obj, cfg))
    return result


def cpu() -> str:
    """The CPU's model name and its widest matmul instruction sets: bf16 and int8 kernels (and so every speed-up
    here) depend on them, so cells measured on different machines are labelled apart."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")),
                platform.processor() or platform.machine())
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    isa = [f for f in ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx512f", "avx_vnni", "avx2")
           if f in flags]
    return f"{name} ({', '.join(isa) or 'no AVX2'})"


def _checkpoint_mb(row: Row, obj: Any) -> float:
    """Size on disk: visq.save's model.safetensors for visq rows, else the target's state dict (safetensors for
    plain tensors; torch.save for the peers' tensor subclasses, which safetensors cannot hold)."""
    from safetensors.torch import save_file

    import visq
    from visq import hosts

    model = hosts.detect(obj).target(obj)
    with tempfile.TemporaryDirectory() as tmp:
        if row.library == "visq":
            return (visq.save(obj, tmp) / "model.safetensors").stat().st_size / 2**20
        path = Path(tmp) / "model.bin"
        if row.library == "torch":
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
        else:
            torch.save(model.state_dict(), path)
        return path.stat().st_size / 2**20


def _quality(model: str, row: Row, obj: Any, reference: Any, cfg: Config) -> dict[str, Any]:
    if model == "vit-zoo":
        from eval.bench_vit import Config as VitConfig
        from eval.bench_vit import heldout, top1

        data = heldout(VitConfig())
        target = obj if row.dtype == torch.float32 else _Cast(obj, row.dtype)
        return {"top1": top1(target, data), "top1_float": top1(reference, data)}
    from eval.fidelity import psnr
    from visq.zoo.shapes import ShapesDataset

    prompts = ShapesDataset("heldout", size=cfg.quality_n, seed=cfg.seed + 1).captions

    def images(pipe: Any) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(cfg.seed + i) for i in range(len(prompts))]
        return pipe(prompts, num_inference_steps=SD_STEPS, guidance_scale=SD_GUIDANCE, generator=gens,
                    output_type="pt").images

    with _cast_unet(obj.unet, row.dtype):
        quantized = images(obj)
    return {"psnr": float(psnr(quantized, images(reference)).mean())}


@contextmanager
def _cast_unet(unet: torch.nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """Run a ``dtype`` UNet inside the fp32 pipeline: float inputs cast to ``dtype``, outputs back to fp32."""
    if dtype == torch.float32:
        yield
        return

    def cast(x: Any, to: torch.dtype) -> Any:
        return x.to(to) if isinstance(x, torch.Tensor) and x.is_floating_point() else x

    def before(_: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return tuple(cast(a, dtype) for a in args), {k: cast(v, dtype) for k, v in kwargs.items()}

    def after(_: Any, __: Any, out: Any) -> Any:
        if isinstance(out, torch.Tensor):
            return cast(out, torch.float32)
        if isinstance(out, tuple):
            return tuple(cast(o, torch.float32) for o in out)
        out.sample = cast(out.sample, torch.float32)
        return out

    handles = [unet.register_forward_pre_hook(before, with_kwargs=True), unet.register_forward_hook(after)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class _Cast(torch.nn.Module):
    """Feeds a bf16 model and returns float logits (for the top-1 helper, which passes fp32 images)."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


# -- driver ----------------------------------------------------------------------------------------------------
def run_cell(model: str, row: str, cfg: Config) -> dict[str, Any]:
    """Measure one cell in a child process; failures become an ``error`` entry (a row that does not run here)."""
    args = [sys.executable, "-m", "eval.bench_speed", "--cell", model, row, "--config", json.dumps(_cfg_json(cfg))]
    proc = subprocess.run(args, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("CELL ")]
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": tail[:300]}
    return json.loads(lines[-1][5:])


def _cfg_json(cfg: Config) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.__dict__.items()}


def main(cfg: Config, fresh: bool = False) -> dict[str, Any]:
    cache_path = Path(cfg.cache)
    cache = {} if fresh or not cache_path.exists() else json.loads(cache_path.read_text())
    for model in cfg.models:
        for row in cfg.rows:
            key = f"{model}|{row}"
            if key in cache:
                continue
            print(f"[bench_speed] {key} ...", flush=True)
            cache[key] = run_cell(model, row, cfg)
            print(f"[bench_speed] {key}: {cache[key]}", flush=True)
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            cache_path.write_text(json.dumps(cache, indent=1, sort_keys=True))
            _write(cfg, cache)
    _write(cfg, cache)
    return cache


def _write(cfg: Config, cache: dict[str, Any]) -> None:
    from eval.speed_report import readme_block, render

    Path(cfg.out).write_text(render(cache, cfg, _machine()))
    if cfg.readme:
        text = README.read_text()
        if MARK_START in text and MARK_END in text:
            head, rest = text.split(MARK_START, 1)
            tail = rest.split(MARK_END, 1)[1]
            README.write_text(f"{head}{MARK_START}\n{readme_block(cache)}\n{MARK_END}{tail}")


def _machine() -> str:
    try:
        load = ", ".join(f"{x:.1f}" for x in __import__("os").getloadavg())
    except OSError:
        load = "unknown"
    return (f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
            f"load average at write time {load}")


def _parse(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    p = argparse.ArgumentParser(description="Speed / size / quality of visq exported models vs torchao and quanto.")
    p.add_argument("--models", nargs="+", default=list(Config.models), choices=MODELS, help="models to run")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), help="rows to run")
    p.add_argument("--repeats", type=int, default=Config.repeats, help="interleaved timed rounds per cell")
    p.add_argument("--warmup", type=int, default=Config.warmup, help="untimed rounds before the timed ones")
    p.add_argument("--cache", default=Config.cache, help="cell cache (JSON) read and written as cells finish")
    p.add_argument("--out", default=Config.out, help="the results markdown file")
    p.add_argument("--no-readme", action="store_true", help="leave README.md as it is")
    p.add_argument("--threads", type=int, default=Config.threads, help="torch threads")
    p.add_argument("--no-quality", action="store_true", help="skip the top-1 / PSNR cells")
    p.add_argument("--fresh", action="store_true", help="ignore the cache and remeasure every cell")
    p.add_argument("--write-only", action="store_true", help="rewrite the results file and README from the cache")
    p.add_argument("--cell", nargs=2, metavar=("MODEL", "ROW"), help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.config:
        data = json.loads(a.config)
        cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    else:
        if a.repeats < 1 or a.warmup < 0:
            p.error(f"--repeats must be >= 1 and --warmup >= 0, got {a.repeats} and {a.warmup}")
        cfg = Config(models=tuple(a.models), rows=tuple(a.rows), repeats=a.repeats, warmup=a.warmup,
                     threads=a.threads, quality=not a.no_quality, cache=a.cache, out=a.out, readme=not a.no_readme)
    return cfg, a


if __name__ == "__main__":
    config, args = _parse()
    if args.cell:
        out = measure(args.cell[0], ROWS[args.cell[1]], config)
        print("CELL " + json.dumps(out))
    elif args.write_only:
        _write(config, json.loads(Path(config.cache).read_text()))
    else:
        main(config, fresh=args.fresh)
