"""Quantization doctor: the error each quantizer site adds on its own, at each candidate bit width.

For every site of a recipe, the model runs on the calibration calls with only that site quantized (every other
site float), once per candidate width. The site's error is measured on the whole model's output (MSE and SQNR
against the float output) and on the output of the layer that owns it (the layer's input is float, so this is the
layer's own error). Weight and activation sites are separate sites, so they are ranked separately. For a diffusion
denoiser the calls are the float trajectory (one call per sampling step, classifier-free-guidance halves
included), so the error is a one-step error per timestep, also reported per timestep; with ``over="trajectory"``
it is instead the error of the final latents of whole sampling runs (only that site quantized at every step), which
counts how a site's error compounds over the steps (one-step errors of different sites do not rank alike there:
the shapes-sd benchmark in eval/bench_mixed.py measures both). With labelled evaluation
data (a classifier), the top-1 change when only one layer (all its sites) is quantized is measured for the
``top_k`` most sensitive layers.

Cost: one calibration pass per width, then ``widths x sites`` forward passes over the calibration calls (plus one
re-run of each owning layer per call), or a full sampling run per site and width and batch for ``over="trajectory"``;
keep the calibration small (a few batches / prompts).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from visq import hosts, methods, recipes
from visq.api import _eval_mode, quantize
from visq.calibrate import CalibSet
from visq.guard import check_int, check_options
from visq.hosts.base import Host
from visq.mixed import BITS, allocate, at_bits, is_weight_site, mean_bits, mixed_recipe, spec_bits
from visq.quantizers import Quantizer, Uniform
from visq.recipes import Recipe

logger = logging.getLogger(__name__)
_SAMPLE = 8192  # activation values kept per site for histograms


@dataclass
class SiteReport:
    """What one quantizer site costs on its own.

    Attributes:
        site: the site name (``<layer>.weight_quantizer``, ``<attention>.probs_quantizer``...).
        layer: the module that owns it.
        role: "weight" or "activation".
        size: weight elements, or activation elements per calibration call (the budget's weights).
        spec: the recipe's spec at this site (short form); ``bits`` its width.
        model_mse: width -> MSE of the whole model's output against float, only this site quantized.
        layer_mse: width -> MSE of the owning layer's output against its float output.
        timestep_mse: timestep -> model-output MSE at the recipe's width (diffusion only).
        top1_delta: top-1 (points) of the model with only this site's layer quantized, minus float top-1.
    """

    site: str
    layer: str
    role: str
    size: int
    spec: str
    bits: int
    model_mse: dict[int, float] = field(default_factory=dict)
    layer_mse: dict[int, float] = field(default_factory=dict)
    layer_power: float = 0.0
    timestep_mse: dict[float, float] = field(default_factory=dict)
    top1_delta: float | None = None

    @property
    def sensitivity(self) -> float:
        """Model-output MSE at the recipe's width: the ranking key."""
        return self.model_mse[self.bits]


@dataclass
class Histogram:
    """Values a site quantizes (the worst channel for per-channel weights) and the grid it rounds them to."""

    site: str
    edges: list[float]
    counts: list[int]
    levels: list[float]
    what: str


@dataclass
class Diagnosis:
    """Result of ``doctor``: sites sorted by sensitivity (most sensitive first), plus what is needed to allocate
    mixed precision from it (``mixed``) and to report it (``to_dict``, ``eval.report_html``)."""

    recipe: Recipe
    model: str
    host: str
    widths: tuple[int, ...]
    output_power: float
    sites: list[SiteReport]
    calls: int
    seconds: float
    histograms: list[Histogram] = field(default_factory=list)
    float_top1: float | None = None
    layer_top1: dict[str, float] = field(default_factory=dict)
    over: str = "call"

    def sqnr(self, mse: float, power: float | None = None) -> float:
        """Signal-to-quantization-noise ratio in dB (inf for an exact output)."""
        power = self.output_power if power is None else power
        return math.inf if mse <= 0 else 10 * math.log10(power / mse)

    def ranking(self, role: str | None = None) -> list[str]:
        """Site names, most sensitive first (only ``role``'s sites when given)."""
        return [s.site for s in self.sites if role is None or s.role == role]

    def table(self, top: int | None = 20) -> str:
        """The ranking as a markdown table (model and layer SQNR at the recipe's width)."""
        lines = ["| rank | site | role | spec | model MSE | model SQNR (dB) | layer SQNR (dB) | top-1 change |",
                 "|---|---|---|---|---|---|---|---|"]
        for rank, s in enumerate(self.sites[:top], 1):
            top1 = f"{s.top1_delta:+.2f}" if s.top1_delta is not None else "-"
            lines.append(f"| {rank} | `{s.site}` | {s.role} | {s.spec} | {s.sensitivity:.3g} | "
                         f"{self.sqnr(s.sensitivity):.1f} | {self.sqnr(s.layer_mse[s.bits], s.layer_power):.1f} | "
                         f"{top1} |")
        return "\n".join(lines)

    def mixed(self, weight_bits: float | None = None, activation_bits: float | None = None,
              widths: tuple[int, ...] | None = None) -> Recipe:
        """A mixed-precision ``Recipe`` meeting the mean-bit budgets (size-weighted; None keeps that role at the
        recipe's width) with the least summed model-output MSE over the measured widths (or ``widths``)."""
        chosen: dict[str, int] = {}
        for role, budget in (("weight", weight_bits), ("activation", activation_bits)):
            if budget is None:
                continue
            items = [s for s in self.sites if s.role == role]
            if not items:
                raise ValueError(f"the diagnosed recipe {self.recipe.name!r} quantizes no {role}s")
            allowed = tuple(widths or self.widths)
            missing = sorted(set(allowed) - set(self.widths))
            if missing:
                raise ValueError(f"widths {missing} were not measured; run doctor with bits={sorted(allowed)}")
            bits = allocate([s.size for s in items], [{b: s.model_mse[b] for b in allowed} for s in items], budget)
            chosen.update({s.site: b for s, b in zip(items, bits)})
            logger.info("mixed %ss: mean %.3f bits (budget %g)", role, mean_bits([s.size for s in items], bits),
                        budget)
        if not chosen:
            raise ValueError("give weight_bits and/or activation_bits: the mean-bit budget to allocate")
        own = _recipe_widths(self.recipe)
        w = weight_bits if weight_bits is not None else own.get("weight", 16)
        a = activation_bits if activation_bits is not None else own.get("activation", 16)
        return mixed_recipe(self.recipe, chosen, name=f"mixed-w{w:g}a{a:g}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``from_dict`` reads it back)."""
        out = asdict(self)
        out["recipe"] = self.recipe.to_dict()
        return out

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Diagnosis:
        data = dict(data)
        data["recipe"] = Recipe.from_dict(data["recipe"])
        data["widths"] = tuple(data["widths"])
        data["histograms"] = [Histogram(**h) for h in data.get("histograms", [])]
        data["sites"] = [_site_from_json(s) for s in data["sites"]]
        return Diagnosis(**data)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @staticmethod
    def load(path: str | Path) -> Diagnosis:
        return Diagnosis.from_dict(json.loads(Path(path).read_text()))


def _site_from_json(data: dict[str, Any]) -> SiteReport:
    data = dict(data)
    for key in ("model_mse", "layer_mse"):
        data[key] = {int(k): v for k, v in data[key].items()}
    data["timestep_mse"] = {float(k): v for k, v in data["timestep_mse"].items()}
    return SiteReport(**data)


def doctor(
    obj: Any,
    recipe: str | Recipe = "w4a8",
    *,
    calib: Any = None,
    method: str | None = None,
    bits: tuple[int, ...] = BITS,
    calib_options: dict[str, Any] | None = None,
    eval_data: tuple[Tensor, Tensor] | None = None,
    top_k: int = 5,
    histograms: int = 4,
    max_calls: int | None = None,
    roles: tuple[str, ...] = ("weight", "activation"),
    over: str = "call",
    progress: bool = True,
    **method_kwargs: Any,
) -> Diagnosis:
    """Measure the error every quantizer site of ``recipe`` adds on its own; ``obj`` itself stays float.

    Args:
        obj: a diffusers pipeline, a timm model or any ``nn.Module`` (as for ``visq.quantize``).
        recipe, method, calib, calib_options, method_kwargs: as for ``visq.quantize``.
        bits: candidate widths measured for every site (the recipe's own widths are always added); ``bits=()``
            measures the recipe's widths only (a quick diagnosis; no mixed precision from it).
        eval_data: (preprocessed inputs, labels) of a classifier: adds the top-1 change of the ``top_k`` most
            sensitive layers, each quantized alone.
        histograms: how many of the most sensitive sites get a value histogram with their grid (per role).
        max_calls: use at most this many calibration calls, evenly spaced (cost grows linearly with them).
        roles: which sites to measure: "weight" and / or "activation" (the others stay float while measuring).
        over: what a site's model-output error is measured on. "call": each calibration call (one denoiser step
            of the float trajectory; errors per timestep). "trajectory" (diffusion pipelines only): the final
            latents of whole sampling runs over the calibration prompts with ``calib_options``, so the error
            includes how it compounds over the steps; each site then costs a full sampling run per batch.
        progress: show a progress bar.

    Raises:
        ValueError: the model is already quantized, top-1 asked of a model without labels, or as ``quantize``.
    """
    start = time.perf_counter()
    recipe = recipes.resolve(recipe, method, **method_kwargs)
    host = hosts.detect(obj)
    model = host.target(obj)
    if getattr(model, "visq_state", None) is not None:
        raise ValueError("doctor needs the float model: this one is already quantized; load a fresh float model")
    _check_counts(bits, max_calls, top_k, histograms)
    unknown = set(roles) - {"weight", "activation"}
    if unknown or not roles or isinstance(roles, str):
        raise ValueError(f"roles must be a non-empty subset of ('weight', 'activation'), got {roles!r}")
    options = check_options(calib_options)
    _source(over, obj, host, calib, None, options)  # fail before the calibration runs
    calib_set = methods.get(recipe.method, **recipe.method_kwargs).collect(obj, calib, options)
    calib_set = calib_set or host.collect(obj, calib, options)
    if max_calls is not None and len(calib_set) > max_calls:
        step = len(calib_set) / max_calls
        calib_set = calib_set.subset(int(i * step) for i in range(max_calls))
    source = _source(over, obj, host, calib, calib_set, options)
    with _eval_mode(model):
        refs = [out for _, out in source.outputs(model)]
    power = sum(r.pow(2).sum().item() for r in refs) / sum(r.numel() for r in refs)
    own = {role: b for role, b in _recipe_widths(recipe).items() if role in roles}
    widths = tuple(sorted(set(bits) | set(own.values())))
    state = _Measured(recipe, own)
    bar = tqdm(desc="doctor", total=None, disable=not progress)
    for width in widths:
        state.run_width(model, calib_set, source, refs, width, bar, histograms)
    bar.close()
    diagnosis = Diagnosis(recipe, type(model).__name__, host.name, widths, power, state.reports(),
                          len(calib_set), 0.0, state.histograms, over=over)
    if eval_data is not None:
        _top1_of_layers(diagnosis, state, eval_data, top_k, model)
    diagnosis.seconds = time.perf_counter() - start
    logger.info("doctor: %d sites x %d widths on %d calls in %.1fs", len(diagnosis.sites), len(widths),
                len(calib_set), diagnosis.seconds)
    return diagnosis


def _check_counts(bits: Any, max_calls: Any, top_k: Any, histograms: Any) -> None:
    """Raise on candidate widths and counts that would give an empty or NaN diagnosis."""
    if isinstance(bits, (str, int)) or not all(isinstance(b, int) and not isinstance(b, bool) for b in bits):
        raise TypeError(f"bits must be a tuple of ints (e.g. (2, 3, 4, 6, 8)), got {bits!r}")
    bad = [b for b in bits if not 2 <= b <= 8]
    if bad:
        raise ValueError(f"candidate widths {bad} are outside 2..8 (1 bit has no symmetric grid); e.g. bits=(2, 4, 8)")
    if max_calls is not None:
        check_int("max_calls", max_calls)
    check_int("top_k", top_k)
    check_int("histograms", histograms, 0)


def _recipe_widths(recipe: Recipe) -> dict[str, int]:
    """The recipe's width per role (the first quantizing rule of each role)."""
    widths: dict[str, int] = {}
    for rule in recipe.rules:
        if rule.spec is not None:
            widths.setdefault("weight" if is_weight_site(rule.pattern) else "activation", spec_bits(rule.spec))
    return widths


def _role(site: str) -> str:
    return "weight" if is_weight_site(site) else "activation"


def _first_tensor(out: Any) -> Tensor:
    """The main output of a model call: a tensor, the first item of a tuple, or the first field of a ModelOutput."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, dict):
        return _first_tensor(next(iter(out.values())))
    if isinstance(out, (tuple, list)) and out:
        return _first_tensor(out[0])
    raise TypeError(f"cannot find the output tensor in a {type(out).__name__}")


class _Calls:
    """Measure on the calibration calls: (timestep or -1, the model's output) per call."""

    def __init__(self, calib: CalibSet) -> None:
        self.calib = calib

    def outputs(self, model: nn.Module) -> Iterator[tuple[float, Tensor]]:
        with torch.no_grad():
            for call in self.calib:
                key = call.timestep if call.timestep is not None else -1.0
                yield key, _first_tensor(model(*call.args, **call.kwargs)).float()


class _Runs:
    """Measure on whole sampling runs of a pipeline: (-1, final latents) per calibration batch, ``model`` as its
    denoiser."""

    def __init__(self, pipe: Any, calib: Any, options: dict[str, Any]) -> None:
        self.pipe, self.calib, self.options = pipe, calib, options

    def outputs(self, model: nn.Module) -> Iterator[tuple[float, Tensor]]:
        from visq.hosts.diffusers import sample_runs

        for out in sample_runs(self.pipe, self.calib, denoiser=model, **self.options):
            yield -1.0, out


def _source(over: str, obj: Any, host: Host, calib: Any, calib_set: CalibSet | None,
            options: dict[str, Any]) -> _Calls | _Runs:
    """What the errors are measured on; ``calib_set=None`` only validates ``over`` for ``obj`` and ``calib``."""
    if over not in ("call", "trajectory"):
        raise ValueError(f"over must be 'call' or 'trajectory', got {over!r}")
    if over == "call":
        return _Calls(calib_set)
    if host.family != "diffusion" or host.target(obj) is obj or isinstance(calib, CalibSet):
        raise ValueError("over='trajectory' samples the pipeline: pass a diffusers pipeline and calib= its prompts / "
                         "class ids (not a bare denoiser or a captured CalibSet)")
    return _Runs(obj, calib, options)


class _Measured:
    """Accumulates per-site results over the widths; keeps the recipe-width quantizers for top-1 checks."""

    def __init__(self, recipe: Recipe, own: dict[str, int]) -> None:
        self.recipe, self.own = recipe, own
        self.sites: dict[str, SiteReport] = {}
        self.keep: dict[str, Quantizer] = {}
        self.host: nn.Module | None = None  # the last width's copy, every site float (placeholders in place)
        self.histograms: list[Histogram] = []

    def run_width(self, model: nn.Module, calib: CalibSet, source: _Calls | _Runs, refs: list[Tensor], width: int,
                  bar: tqdm, n_hist: int) -> None:
        qmodel = copy.deepcopy(model)
        quantize(qmodel, at_bits(self.recipe, width, width), calib=calib, progress=False)
        qmodel.eval()
        plan = qmodel.visq_state.plan
        owner_of = {o.site(slot): o.path for o in plan.owners for slot in o.shapes}
        quantizers = {site: qmodel.get_submodule(site) for site in plan.quantized}
        for site in quantizers:
            qmodel.set_submodule(site, nn.Identity())
        measured = {s: q for s, q in quantizers.items() if _role(s) in self.own}
        bar.total = (bar.total or 0) + len(measured)
        samples: dict[str, Tensor] = {}
        for site, quantizer in measured.items():
            role = _role(site)
            at_own = self.own.get(role) == width
            probe = _Probe(qmodel, site, quantizer, owner_of[site], sample=at_own and role == "activation")
            model_mse, timestep_mse = probe.run(source, refs)
            report = self._report(qmodel, site, role, owner_of[site], probe)
            report.model_mse[width], report.layer_mse[width] = model_mse, probe.layer_mse
            if at_own:
                report.timestep_mse = timestep_mse if len(timestep_mse) > 1 else {}
                report.layer_power = probe.layer_power
                self.keep[site] = quantizer
                if probe.sample is not None:
                    samples[site] = probe.sample
            bar.update()
        for role in ("weight", "activation"):
            if self.own.get(role) == width:
                self._histograms(qmodel, role, quantizers, samples, n_hist)
        self.host = qmodel

    def _report(self, qmodel: nn.Module, site: str, role: str, owner: str, probe: _Probe) -> SiteReport:
        if site not in self.sites:
            hit = self.recipe.spec_for(site)
            spec = hit[1] if hit is not None else None
            if spec is None:
                raise ValueError(f"{site} is quantized by the method but matches no recipe rule; cannot diagnose it")
            size = qmodel.get_submodule(owner).weight.numel() if role == "weight" else probe.elements
            self.sites[site] = SiteReport(site, owner, role, max(int(size), 1), spec.short(), spec_bits(spec))
        return self.sites[site]

    def _histograms(self, qmodel: nn.Module, role: str, quantizers: dict[str, nn.Module],
                    samples: dict[str, Tensor], n: int) -> None:
        ranked = sorted((s for s in self.sites.values() if s.role == role and s.bits in s.model_mse),
                        key=lambda s: -s.sensitivity)[:n]
        for s in ranked:
            values = qmodel.get_submodule(s.layer).weight.detach() if role == "weight" else samples.get(s.site)
            if values is not None:
                self.histograms.append(histogram(s.site, quantizers[s.site], values, role))

    def reports(self) -> list[SiteReport]:
        return sorted(self.sites.values(), key=lambda s: -s.sensitivity)


class _Probe:
    """One measurement pass: only ``site`` quantized; model-output error per call, the owning layer's error (its
    output against the same call with the site float), activation sizes and a value sample."""

    def __init__(self, model: nn.Module, site: str, quantizer: nn.Module, owner: str, sample: bool) -> None:
        self.model, self.site, self.quantizer, self.owner = model, site, quantizer, owner
        self.placeholder = model.get_submodule(site)
        self.want_sample = sample
        self.layer_se = self.layer_power_sum = 0.0
        self.layer_n = self.elements_sum = self.model_calls = 0
        self.busy = False
        self.parts: list[Tensor] = []
        self.gen = torch.Generator().manual_seed(0)

    @property
    def layer_mse(self) -> float:
        return self.layer_se / max(self.layer_n, 1)

    @property
    def layer_power(self) -> float:
        return self.layer_power_sum / max(self.layer_n, 1)

    @property
    def elements(self) -> int:
        return round(self.elements_sum / max(self.model_calls, 1))

    @property
    def sample(self) -> Tensor | None:
        if not self.parts:
            return None
        values = torch.cat(self.parts)
        return values[torch.randperm(len(values), generator=self.gen)[:_SAMPLE]]

    def run(self, source: _Calls | _Runs, refs: list[Tensor]) -> tuple[float, dict[float, float]]:
        handles = [self.model.get_submodule(self.owner).register_forward_hook(self._layer, with_kwargs=True),
                   self.quantizer.register_forward_pre_hook(self._input)]
        self.model.set_submodule(self.site, self.quantizer)
        per_t: dict[float, list[float]] = defaultdict(lambda: [0.0, 0])
        try:
            for (key, out), ref in zip(source.outputs(self.model), refs):
                err = (out - ref).pow(2)
                acc = per_t[key]
                acc[0] += err.sum().item()
                acc[1] += err.numel()
                self.model_calls += 1
        finally:
            self.model.set_submodule(self.site, self.placeholder)
            for h in handles:
                h.remove()
        total = sum(a[0] for a in per_t.values()) / sum(a[1] for a in per_t.values())
        return total, {t: a[0] / a[1] for t, a in per_t.items()}

    def _input(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.busy or not isinstance(args[0], Tensor):
            return
        x = args[0].detach()
        self.elements_sum += x.numel()
        if self.want_sample:
            flat = x.flatten().float()
            self.parts.append(flat[torch.randint(len(flat), (min(len(flat), _SAMPLE),), generator=self.gen)].cpu())

    def _layer(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if self.busy:
            return
        self.busy = True
        self.model.set_submodule(self.site, self.placeholder)
        try:
            with torch.no_grad():
                ref = _first_tensor(module(*args, **kwargs)).float()
        finally:
            self.model.set_submodule(self.site, self.quantizer)
            self.busy = False
        self.layer_se += (_first_tensor(output).float() - ref).pow(2).sum().item()
        self.layer_power_sum += ref.pow(2).sum().item()
        self.layer_n += ref.numel()


def histogram(site: str, quantizer: nn.Module, values: Tensor, role: str, bins: int = 48) -> Histogram:
    """Histogram of ``values`` with the quantizer's grid (dequantized levels). Per-channel / per-group weights: the
    row with the largest quantization MSE, with its own grid. Grids are drawn for static uniform quantizers only."""
    spec = getattr(quantizer, "spec", None)
    values = values.detach().float()
    levels: list[float] = []
    what = f"{role} values ({getattr(spec, 'kind', type(quantizer).__name__)}: grid not drawn)"
    static = isinstance(spec, Uniform) and not spec.per_timestep and spec.granularity != "token"
    if static and (role == "weight" or spec.granularity == "tensor"):
        with torch.no_grad():
            err = quantizer(values) - values
        rows = _weight_rows(values, spec)
        row = int(_weight_rows(err, spec).pow(2).mean(dim=1).argmax()) if rows.shape[0] > 1 else 0
        scale, zero = quantizer.scale.flatten()[row].item(), quantizer.zero_point.flatten()[row].item()
        qmin, qmax = spec.qrange
        levels = [(q - zero) * scale for q in range(qmin, qmax + 1)]
        values = rows[row]
        what = f"{role} values, {spec.short()}"
        what += f", worst row {row} of {rows.shape[0]}" if rows.shape[0] > 1 else ""
    lo, hi = values.min().item(), values.max().item()
    if levels:
        lo, hi = min(lo, levels[0]), max(hi, levels[-1])
    hi = hi if hi > lo else lo + 1e-6
    counts, edges = torch.histogram(values.cpu(), bins=bins, range=(lo, hi))
    return Histogram(site, edges.tolist(), [int(c) for c in counts.tolist()], levels, what)


def _weight_rows(x: Tensor, spec: Uniform) -> Tensor:
    if spec.granularity == "tensor":
        return x.reshape(1, -1)
    if spec.granularity == "group":
        return x.reshape(-1, spec.group_size)
    return x.reshape(x.shape[0], -1)


def _top1(model: nn.Module, data: tuple[Tensor, Tensor], batch: int = 250) -> float:
    inputs, labels = data
    with torch.no_grad():
        preds = torch.cat([_first_tensor(model(x)).argmax(dim=-1) for x in inputs.split(batch)])
    return 100.0 * (preds == labels).float().mean().item()


def _top1_of_layers(diagnosis: Diagnosis, state: _Measured, data: tuple[Tensor, Tensor], top_k: int,
                    model: nn.Module) -> None:
    """Top-1 of the model with only one layer quantized (all its sites, recipe widths), for the top_k layers."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError("eval_data must be (preprocessed inputs, integer labels) of a classifier")
    with _eval_mode(model):
        diagnosis.float_top1 = _top1(model, data)
    per_layer: dict[str, float] = defaultdict(float)
    for s in diagnosis.sites:
        per_layer[s.layer] += s.sensitivity
    host = state.host
    for layer in sorted(per_layer, key=lambda k: -per_layer[k])[:top_k]:
        members = [s for s in diagnosis.sites if s.layer == layer]
        placeholders = {s.site: host.get_submodule(s.site) for s in members}
        try:
            for s in members:
                host.set_submodule(s.site, state.keep[s.site])
            delta = _top1(host, data) - diagnosis.float_top1
        finally:
            for site, placeholder in placeholders.items():
                host.set_submodule(site, placeholder)
        diagnosis.layer_top1[layer] = delta
        for s in members:
            s.top1_delta = delta
