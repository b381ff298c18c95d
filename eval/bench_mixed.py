"""Mixed precision from the doctor's sensitivities vs uniform bits, on the zoo ViT and shapes-sd.

    python -m eval.bench_mixed                  # -> eval/results/mixed.md (+ mixed.json, the resumable cell cache)
    python -m eval.bench_mixed --parts vit      # one model only
    python -m eval.bench_mixed --readme README.md   # also rewrite the README's mixed-precision block

ViT (``shapes-vit``): ``visq.doctor`` measures every weight and activation site alone at 2/3/4/6/8 bits on the
calibration images; ``Diagnosis.mixed`` allocates weights and activations each at a mean of 4.0 and of 3.5 bits
(size-weighted: weight elements, activation elements per image). Each recipe is then quantized with min-max
activation ranges and with RepQ-ViT (the best PTQ method of ``eval/results/vit_ptq.md`` at W4A4) and scored by
held-out top-1. shapes-sd: the doctor measures the weight sites two ways, one-step errors on calls of a short float
trajectory (``over="call"``) and whole-run errors on the final latents of short sampling runs
(``over="trajectory"``); from each, weights get a mean of 4.0 and of 4.5 bits with activations at 8, quantized with
min-max activation ranges and with EDA-DM (the best method at W4A8 of ``eval/results/diffusion_ptq.md``); scored by
PSNR of same-seed images against float. Every row's weights use per-channel ranges with ``Config.weight_range``
clipping (MSE search: the setting these results were measured with). Every cell is written to the cache as soon as
it is measured, with a digest of its recipe; a rerun skips cells measured for the same recipe. The diagnoses are
kept beside the results (``eval/results/mixed_*_doctor.json``), so a rerun on another machine reuses them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

import visq
from eval import report_html
from eval.bench_vit import load_cache, save_cache
from eval.report import replace_block
from visq.doctor import Diagnosis
from visq.mixed import is_weight_site, mean_bits
from visq.recipes import Recipe, parse
from visq.zoo.vit import normalize

OUT = Path(__file__).parent / "results" / "mixed.md"
WIDTHS = (2, 3, 4, 6, 8)
BLOCK = "mixed"  # the README block this benchmark writes


@dataclass(frozen=True)
class Config:
    parts: tuple[str, ...] = ("vit", "sd")
    seed: int = 0
    threads: int = 1
    vit_calib: int = 32
    vit_eval: int = 1000
    vit_budgets: tuple[float, ...] = (4.0, 3.5)
    vit_methods: tuple[str, ...] = ("minmax", "repq")
    sd_prompts: int = 16
    sd_calib_prompts: int = 8
    sd_doctor_prompts: int = 2
    sd_doctor_steps: int = 10
    sd_doctor_calls: int = 3  # the one-step doctor's denoiser calls (the trajectory doctor samples whole runs)
    sd_doctors: tuple[str, ...] = ("call", "trajectory")  # visq.doctor(over=...): one-step or whole-run errors
    sd_steps: int = 20
    sd_guidance: float = 4.0
    sd_budgets: tuple[float, ...] = (4.0, 4.5)  # mean weight bits of the mixed rows
    sd_methods: tuple[str, ...] = ("minmax", "eda")
    runs: str = "runs/bench_mixed"
    # weight clipping range of every row (uniform, doctor, mixed): the results were measured with MSE-searched
    # weight ranges (FQ-ViT's OMSE grid); activations keep min-max (or the method's own rule)
    weight_range: str = "mse"


# -- the ViT ---------------------------------------------------------------------------------------------------------
def _vit_cells(cfg: Config, cache: dict[str, Any], save) -> None:
    from eval import bench_vit

    vcfg = bench_vit.Config(eval_n=cfg.vit_eval)
    data = bench_vit.heldout(vcfg)
    calib = bench_vit.calibration(cfg.vit_calib, cfg.seed)
    cell = cache
    if "float" not in cell:
        cell["float"] = {"top1": bench_vit.top1(bench_vit.load_vit(vcfg), data)}
        save()
    diag = _diagnosis(doctor_path("vit"), lambda: visq.doctor(
        bench_vit.load_vit(vcfg), uniform("w4a4", cfg), calib=calib, bits=WIDTHS,
        eval_data=(normalize(data[0]), data[1]), top_k=5), uniform("w4a4", cfg))
    cell["doctor_seconds"] = diag.seconds
    recipes = {name: uniform(name, cfg) for name in ("w8a8", "w4a4", "w3a3")}
    for budget in cfg.vit_budgets:
        recipes[f"mixed-w{budget:g}a{budget:g}"] = diag.mixed(weight_bits=budget, activation_bits=budget)
    for method in cfg.vit_methods:
        for name, recipe in recipes.items():
            key = f"{name}@{method}"
            if _done(cell, key, recipe):
                continue
            model = bench_vit.load_vit(vcfg)
            start = time.perf_counter()
            visq.quantize(model, recipe, method=method, calib=calib, progress=False)
            seconds = time.perf_counter() - start
            visq.freeze(model)
            cell[key] = {"top1": bench_vit.top1(model, data), "calib_s": seconds, **_bits(diag, recipe),
                         "recipe": digest(recipe)}
            logging.info("vit %s: top-1 %.2f", key, cell[key]["top1"])
            save()
    report_html.write(Path(cfg.runs) / "vit_report.html", diag, title="visq doctor: zoo ViT, w4a4 min-max",
                      mixed=_chosen(diag, recipes[f"mixed-w{cfg.vit_budgets[0]:g}a{cfg.vit_budgets[0]:g}"]))


def doctor_path(name: str) -> Path:
    """Where a diagnosis is kept: beside the results (committed), so a rerun on another machine reuses it."""
    return OUT.with_name(f"mixed_{name}_doctor.json")


def _diagnosis(path: Path, run, recipe: Recipe) -> Diagnosis:
    """The cached diagnosis at ``path`` when it diagnosed ``recipe``, else run it (``run()``) and save it."""
    if path.is_file():
        diag = Diagnosis.load(path)
        if digest(diag.recipe) == digest(recipe):
            return diag
        logging.info("%s diagnosed other rules than %s (a recipe default changed?): diagnosing again", path,
                     recipe.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    diag = run()
    diag.save(path)
    return diag


def digest(recipe: Recipe) -> str:
    """A short fingerprint of a recipe's rules: a cached cell is reused only for the very recipe it measured."""
    return hashlib.sha256(json.dumps(recipe.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _done(cache: dict[str, Any], key: str, recipe: Recipe) -> bool:
    """Whether ``key`` is cached for ``recipe`` (a cell of another allocation, or of none recorded, is measured
    again)."""
    return key in cache and cache[key].get("recipe") == digest(recipe)


def uniform(name: str, cfg: Config) -> Recipe:
    """The preset ``name`` with the configured weight clipping range on its weight rules."""
    recipe = parse(name)
    rules = tuple(replace(r, spec=replace(r.spec, range=cfg.weight_range)) if is_weight_site(r.pattern) else r
                  for r in recipe.rules)
    return replace(recipe, rules=rules)


def _chosen(diag: Diagnosis, recipe: Recipe) -> dict[str, int]:
    return {s.site: recipe.spec_for(s.site)[1].bits for s in diag.sites}


def _bits(diag: Diagnosis, recipe: Recipe) -> dict[str, float]:
    """Size-weighted mean weight / activation bits of the diagnosed sites under ``recipe``."""
    out = {}
    for role in ("weight", "activation"):
        sites = [s for s in diag.sites if s.role == role]
        if sites:
            out[f"{role}_bits"] = mean_bits([s.size for s in sites], [recipe.spec_for(s.site)[1].bits for s in sites])
    return out


# -- shapes-sd -------------------------------------------------------------------------------------------------------
def _sd_images(pipe: Any, prompts: list[str], cfg: Config) -> torch.Tensor:
    """uint8 (N, 3, H, W) images, image i from generator seed cfg.seed + i."""
    out = []
    for i in range(0, len(prompts), 16):
        chunk = prompts[i : i + 16]
        gens = [torch.Generator().manual_seed(cfg.seed + i + k) for k in range(len(chunk))]
        with torch.no_grad():
            images = pipe(prompt=chunk, generator=gens, num_inference_steps=cfg.sd_steps,
                          guidance_scale=cfg.sd_guidance, output_type="np").images
        out.append(torch.from_numpy((images.clip(0, 1) * 255).round().astype("uint8")).permute(0, 3, 1, 2))
    return torch.cat(out)


def mixed_name(budget: float, over: str) -> str:
    """Row name of a shapes-sd mixed recipe: its budget and which doctor allocated it."""
    return f"mixed-w{budget:g}a8" + ("-traj" if over == "trajectory" else "")


def predicted_gain_db(diag: Diagnosis, recipe: Recipe) -> float:
    """The doctor's own forecast of ``recipe`` against the diagnosed uniform recipe: summed site MSEs, uniform over
    mixed, in dB (the additive model the allocation optimises)."""
    uniform_mse = sum(s.model_mse[s.bits] for s in diag.sites)
    mixed_mse = sum(s.model_mse[recipe.spec_for(s.site)[1].bits] for s in diag.sites)
    return 10 * math.log10(uniform_mse / mixed_mse)


def _sd_cells(cfg: Config, cache: dict[str, Any], save) -> None:
    from eval.fidelity import psnr, ssim
    from visq import zoo
    from visq.zoo.shapes import ShapesDataset

    prompts = ShapesDataset("heldout", size=cfg.sd_prompts, seed=cfg.seed + 1).captions
    calib = ShapesDataset("train", size=cfg.sd_calib_prompts, seed=cfg.seed + 2).captions
    options = {"num_inference_steps": cfg.sd_steps, "guidance_scale": cfg.sd_guidance}
    reference = _sd_images(zoo.load("shapes-sd"), prompts, cfg)
    cell = cache
    recipes = {"w8a8": uniform("w8a8", cfg), "w4a8": uniform("w4a8", cfg)}
    diags = {}
    for over in cfg.sd_doctors:
        diags[over] = diag = _diagnosis(doctor_path(f"sd_{over}"), lambda over=over: visq.doctor(
            zoo.load("shapes-sd"), uniform("w4a8", cfg), calib=calib[: cfg.sd_doctor_prompts], bits=WIDTHS,
            roles=("weight",), over=over, max_calls=cfg.sd_doctor_calls if over == "call" else None,
            calib_options={**options, "num_inference_steps": cfg.sd_doctor_steps}), uniform("w4a8", cfg))
        mixed = {b: diag.mixed(weight_bits=b) for b in cfg.sd_budgets}
        cell.setdefault("doctors", {})[over] = {"seconds": diag.seconds, "calls": diag.calls, "predicted_db": {
            f"{b:g}": predicted_gain_db(diag, r) for b, r in mixed.items()}}
        recipes |= {mixed_name(b, over): r for b, r in mixed.items()}
    for method in cfg.sd_methods:
        # after the baseline, the mixed rows first: a method's calibration takes minutes, and w8a8 only bounds the gap
        order = list(recipes.items()) if method == cfg.sd_methods[0] else list(recipes.items())[::-1]
        for name, recipe in order:
            key = f"{name}@{method}"
            if _done(cell, key, recipe):
                continue
            pipe = zoo.load("shapes-sd")
            start = time.perf_counter()
            visq.quantize(pipe, recipe, method=method, calib=calib,
                          calib_options=options, progress=False)
            seconds = time.perf_counter() - start
            visq.freeze(pipe)
            images = _sd_images(pipe, prompts, cfg)
            cell[key] = {"psnr": psnr(images, reference).mean().item(), "ssim": ssim(images, reference).mean().item(),
                         "calib_s": seconds, **_bits(next(iter(diags.values())), recipe), "recipe": digest(recipe)}
            logging.info("sd %s: PSNR %.2f", key, cell[key]["psnr"])
            save()
    over = cfg.sd_doctors[-1]
    report_html.write(Path(cfg.runs) / "sd_report.html", diags[over],
                      title=f"visq doctor: shapes-sd, w4a8 min-max (weights, over={over})",
                      mixed=_chosen(diags[over], recipes[mixed_name(cfg.sd_budgets[0], over)]))


# -- the results file ------------------------------------------------------------------------------------------------
def _row(name: str, cells: dict[str, Any], metric: str, methods: tuple[str, ...], fmt: str) -> str:
    values = [cells.get(f"{name}@{m}", {}).get(metric) for m in methods]
    any_cell = next((cells[f"{name}@{m}"] for m in methods if f"{name}@{m}" in cells), {})
    bits = " / ".join(f"{any_cell[k]:.2f}" for k in ("weight_bits", "activation_bits") if k in any_cell)
    shown = [fmt.format(v) if v is not None else "-" for v in values]
    return f"| {name} | {bits or '-'} | " + " | ".join(shown) + " |"


def _gap_closed(cells: dict[str, Any], metric: str, low: str, high: str, mixed: str) -> str:
    try:
        lo, hi, mid = (cells[f"{k}@minmax"][metric] for k in (low, high, mixed))
    except KeyError:
        return "not measured yet"
    return f"{100 * (mid - lo) / (hi - lo):.0f}% of the {low} -> {high} gap (column minmax)" if hi != lo else "no gap"


def _measured_gain(sd: dict[str, Any], over: str, cfg: Config) -> str:
    base = sd.get("w4a8@minmax", {}).get("psnr")
    gains = [(b, sd[f"{mixed_name(b, over)}@minmax"]["psnr"] - base) for b in cfg.sd_budgets
             if base is not None and f"{mixed_name(b, over)}@minmax" in sd]
    return " (measured: " + ", ".join(f"{g:+.1f} dB" for _, g in gains) + ")" if gains else ""


def render(cfg: Config, vit: dict[str, Any], sd: dict[str, Any], command: str) -> str:
    """The markdown results file."""
    return "\n".join(_header(cfg, command) + tables(cfg, vit, sd)) + "\n"


def _header(cfg: Config, command: str) -> list[str]:
    return ["# Mixed precision from the doctor's sensitivities", "", f"Command: `{command}` (seed {cfg.seed}; "
             f"{cfg.threads} threads on a shared 2-core CPU, torch {torch.__version__}, {platform.machine()}).", "",
             "Allocation: `visq.doctor` measures the model-output MSE each quantizer site adds alone at 2/3/4/6/8 "
             "bits (column `minmax`: min-max activation ranges; every row's weights, all methods, use per-channel "
             f"symmetric ranges with `range={cfg.weight_range!r}` clipping, the recipe the doctor diagnosed); "
             "`Diagnosis.mixed` picks one width per site minimising the summed MSE under a "
             "size-weighted mean-bit budget (exact multiple-choice knapsack). The resulting Recipe is quantized "
             "like any other, with each method. Bits columns: size-weighted mean weight / activation bits of the "
             "quantized sites (patch embedding, head and host-default float layers stay float in every row)."]


def tables(cfg: Config, vit: dict[str, Any], sd: dict[str, Any]) -> list[str]:
    """The two results tables with their setup lines (also the README block)."""
    lines: list[str] = []
    if "float" in vit:
        methods = cfg.vit_methods
        lines += ["", "### Zoo ViT (`shapes-vit`), held-out top-1 (%)", "",
                  f"{cfg.vit_eval} held-out images (`shapes.generate(n, 0, 'heldout', VIT_DATA)`); {cfg.vit_calib} "
                  f"calibration images from the training split (seed 1000 + {cfg.seed}); the doctor runs on those "
                  f"same images (w4a4 min-max, {vit.get('doctor_seconds', 0):.0f} s under the load of the time). "
                  f"Float top-1: {vit['float']['top1']:.2f}.", "",
                  "| recipe | mean bits W / A | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
        names = ["w8a8", "w4a4"] + [f"mixed-w{b:g}a{b:g}" for b in cfg.vit_budgets] + ["w3a3"]
        lines += [_row(n, vit, "top1", methods, "{:.2f}") for n in names]
        lines += ["", "Mixed W+A at a mean of 4.0 bits closes "
                  + _gap_closed(vit, "top1", "w4a4", "w8a8", "mixed-w4a4") + " (goal: at least 50%)."]
    if "doctors" in sd:
        methods = cfg.sd_methods
        doctors = sd["doctors"]
        lines += ["", "### shapes-sd, PSNR (dB) of same-seed images against float", "",
                  f"{cfg.sd_prompts} held-out captions (`ShapesDataset('heldout', size={cfg.sd_prompts}, seed="
                  f"{cfg.seed + 1})`), one image each, generator seed {cfg.seed} + i, DDIM {cfg.sd_steps} steps, "
                  f"guidance {cfg.sd_guidance}; quantization calibrated on {cfg.sd_calib_prompts} training captions "
                  "with the same sampler. The doctor measures the weight sites only (activations stay at 8 bits) on "
                  f"{cfg.sd_doctor_prompts} training captions with a {cfg.sd_doctor_steps}-step sampler, two ways: "
                  "`mixed-*` rows from one-step errors (`over='call'`: "
                  f"{doctors.get('call', {}).get('calls', '-')} evenly spaced denoiser calls, "
                  f"{doctors.get('call', {}).get('seconds', 0):.0f} s), `mixed-*-traj` rows from whole-run errors "
                  "(`over='trajectory'`: the final latents of the sampling run with only that site quantized, "
                  f"{doctors.get('trajectory', {}).get('seconds', 0):.0f} s).", "",
                  "| recipe | mean bits W / A | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
        names = ["w8a8", "w4a8"] + [mixed_name(b, o) for o in cfg.sd_doctors for b in cfg.sd_budgets]
        lines += [_row(n, sd, "psnr", methods, "{:.2f}") for n in names]
        lines.append("")
        for over in cfg.sd_doctors:
            name = mixed_name(cfg.sd_budgets[0], over)
            lines.append(f"- {name}: mixed weights at a mean of {cfg.sd_budgets[0]:g} bits with A8 (doctor over="
                         f"{over!r}) close " + _gap_closed(sd, "psnr", "w4a8", "w8a8", name)
                         + " (goal: at least 50%); the doctor's additive forecast for the allocation: "
                         + ", ".join(f"+{db:.1f} dB at {b} bits" for b, db in
                                     doctors.get(over, {}).get("predicted_db", {}).items())
                         + _measured_gain(sd, over, cfg) + ".")
    return lines


def readme_block(cfg: Config, vit: dict[str, Any], sd: dict[str, Any]) -> str:
    """The README's mixed-precision block: the tables of ``eval/results/mixed.md`` under their command."""
    return "\n".join([f"`python -m eval.bench_mixed` (seed {cfg.seed}; details in `eval/results/mixed.md`):",
                      *tables(cfg, vit, sd)])


def main(cfg: Config = Config(), command: str = "python -m eval.bench_mixed", readme: str = "") -> dict[str, Any]:
    """Run every missing cell, rewriting the part's cache and the table after each; returns the caches.

    Each part has its own cache (``mixed_vit.json``, ``mixed_sd.json``), so the two can run as separate processes.
    """
    torch.set_num_threads(cfg.threads)
    from visq import zoo

    caches = {part: load_cache(OUT.with_name(f"mixed_{part}.json")) for part in ("vit", "sd")}
    for part, model in (("vit", "shapes-vit"), ("sd", "shapes-sd")):
        setup = {k: v for k, v in asdict(cfg).items() if k.startswith(part) or k == "seed"}
        setup = json.loads(json.dumps({**setup, "weights": zoo.fingerprint(model)}))  # JSON: lists, not tuples
        if part in cfg.parts and caches[part].setdefault("setup", setup) != setup:
            raise ValueError(f"{OUT.with_name(f'mixed_{part}.json')} holds cells of another setup; delete it (and "
                             f"{doctor_path(part + '*')}) to start afresh")

    def saver(part: str):
        def save() -> None:
            save_cache(OUT.with_name(f"mixed_{part}.json"), caches[part])
            latest = {p: load_cache(OUT.with_name(f"mixed_{p}.json")) for p in ("vit", "sd")}  # the other process's
            OUT.write_text(render(cfg, latest["vit"], latest["sd"], command))
        return save

    if "vit" in cfg.parts:
        _vit_cells(cfg, caches["vit"], saver("vit"))
    if "sd" in cfg.parts:
        _sd_cells(cfg, caches["sd"], saver("sd"))
    if readme:
        path = Path(readme)
        latest = {p: load_cache(OUT.with_name(f"mixed_{p}.json")) for p in ("vit", "sd")}
        path.write_text(replace_block(path.read_text(), BLOCK, readme_block(cfg, latest["vit"], latest["sd"])))
    return caches


def _parse_args(argv: list[str]) -> tuple[Config, str]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", default=list(Config.parts), choices=("vit", "sd"),
                   help="zoo models: vit (shapes-vit) and / or sd (shapes-sd)")
    p.add_argument("--threads", type=int, default=Config.threads, help="torch CPU threads")
    p.add_argument("--readme", default="", help="also rewrite this README's mixed-precision block")
    a = p.parse_args(argv)
    return replace(Config(), parts=tuple(a.parts), threads=a.threads), a.readme


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config, readme_path = _parse_args(sys.argv[1:])
    main(config, " ".join(["python -m eval.bench_mixed", *sys.argv[1:]]), readme_path)
