"""Finding quantizer sites, deciding their specs from rules, and installing the quantizers (undoably).

A *site* is one quantizer slot, named by the module path it will have: ``<layer>.weight_quantizer``,
``<layer>.input_quantizer`` for Linear / Conv2d, and ``<attention>.{q,k,v,probs}_quantizer`` for the attention
classes that a host adapts (timm ``Attention``, diffusers ``Attention`` through its processor...).
"""

from __future__ import annotations

import fnmatch
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from torch import nn

from visq.modules import quant_class_for
from visq.quantizers import Quantizer, QuantSpec, SiteShape, Uniform, build
from visq.recipes import Recipe

ATTENTION_SLOTS = ("q_quantizer", "k_quantizer", "v_quantizer", "probs_quantizer")


class AttentionAdapter:
    """How one attention class gets its q / k / v / probs quantizer slots. Hosts register instances in ADAPTERS."""

    def matches(self, module: nn.Module) -> bool:
        raise NotImplementedError

    def site_prefix(self, path: str) -> str:
        """Module path under which the slot quantizers live."""
        return path

    def gap(self, module: nn.Module) -> str | None:
        """Why ``module``, an attention this adapter knows but does not match, gets no slots (None: not one)."""
        return None

    def shapes(self, module: nn.Module) -> dict[str, SiteShape]:
        raise NotImplementedError

    def install(self, model: nn.Module, path: str, quantizers: dict[str, nn.Module | None]) -> Callable[[], None]:
        """Put the quantizers in place; return a function that undoes it."""
        raise NotImplementedError


ADAPTERS: list[AttentionAdapter] = []


def _load_adapters() -> None:
    # Hosts register adapters on import; only import those whose library the user already loaded,
    # so `import visq` never pulls in timm or diffusers.
    if "timm" in sys.modules:
        import visq.hosts.timm  # noqa: F401
    if "diffusers" in sys.modules:
        import visq.hosts.diffusers  # noqa: F401


@dataclass(frozen=True)
class FloatRule:
    """A host default: layers whose path matches ``pattern`` stay float, for ``reason``."""

    pattern: str
    reason: str


@dataclass(frozen=True)
class Owner:
    """A module that owns sites: a layer (``adapter`` None) or an adapted attention module."""

    path: str
    prefix: str
    shapes: dict[str, SiteShape]
    adapter: AttentionAdapter | None = None

    def site(self, slot: str) -> str:
        return f"{self.prefix}.{slot}"


@dataclass
class Plan:
    """Every site of a model with its spec (None = float), and why each float layer stays float."""

    owners: list[Owner] = field(default_factory=list)
    specs: dict[str, QuantSpec | None] = field(default_factory=dict)
    shapes: dict[str, SiteShape] = field(default_factory=dict)
    float_layers: dict[str, str] = field(default_factory=dict)
    adjusted: dict[str, str] = field(default_factory=dict)  # site -> how its spec was fitted to the layer

    @property
    def quantized(self) -> dict[str, QuantSpec]:
        return {s: spec for s, spec in self.specs.items() if spec is not None}


def _layer_shapes(module: nn.Module) -> dict[str, SiteShape]:
    if isinstance(module, nn.Linear):
        return {
            "weight_quantizer": SiteShape("weight", module.out_features, 0, module.in_features),
            "input_quantizer": SiteShape("activation", module.in_features, -1),
        }
    return {
        "weight_quantizer": SiteShape("weight", module.out_channels, 0, module.weight[0].numel(),
                                      kernel=module.weight[0, 0].numel()),
        "input_quantizer": SiteShape("activation", module.in_channels, 1),
    }


def find_owners(model: nn.Module) -> tuple[list[Owner], dict[str, str]]:
    """Every module that owns quantizer sites, plus the layers with parameters that cannot be quantized."""
    _load_adapters()
    owners: list[Owner] = []
    unsupported: dict[str, str] = {}
    for path, module in model.named_modules():
        adapter = next((a for a in ADAPTERS if a.matches(module)), None)
        if quant_class_for(module) is not None and path:
            owners.append(Owner(path, path, _layer_shapes(module)))
        elif adapter is not None:
            owners.append(Owner(path, adapter.site_prefix(path), adapter.shapes(module), adapter))
        elif (gap := next((g for a in ADAPTERS if (g := a.gap(module)) is not None), None)) is not None:
            unsupported[path] = gap
        elif _looks_like_attention(type(module).__name__):
            unsupported[path] = f"attention class {type(module).__name__} has no visq adapter"
        elif any(True for _ in module.parameters(recurse=False)):
            unsupported[path] = f"{type(module).__name__} is not a quantizable layer type"
    return owners, unsupported


# timm / diffusers attention classes: Attention, EvaAttention, ClassAttn, TalkingHeadAttn, XCA, Attention2d,
# Attention2dDownsample, MultiScaleAttention, MaskUnitAttention, ... (blocks that hold one are not attention)
_ATTENTION_NAME = re.compile(r"(Attention|Attn|XCA)(2d)?(Downsample)?$")


def _looks_like_attention(name: str) -> bool:
    return bool(_ATTENTION_NAME.search(name)) and "Block" not in name


def plan(model: nn.Module, recipe: Recipe, host_rules: list[FloatRule], timesteps: tuple[float, ...] = ()) -> Plan:
    """Decide the spec of every site: host float-keep rules first (if the recipe keeps them), then recipe rules."""
    owners, unsupported = find_owners(model)
    result = Plan(owners=owners, float_layers=dict(unsupported))
    for owner in owners:
        host_rule = next((r for r in host_rules if fnmatch.fnmatchcase(owner.path, r.pattern)), None)
        reasons = []
        for slot, shape in owner.shapes.items():
            site = owner.site(slot)
            if recipe.keep_host_defaults and host_rule is not None:
                spec, reason = None, f"host default: {host_rule.reason}"
            else:
                spec, reason = _spec_from_recipe(recipe, site)
                spec, note = fit_groups(spec, shape)
                if note:
                    result.adjusted[site] = note
            result.specs[site], result.shapes[site] = spec, _with_timesteps(site, spec, shape, timesteps)
            reasons.append(reason)
        if all(result.specs[owner.site(slot)] is None for slot in owner.shapes):
            result.float_layers[owner.path] = reasons[0]
    _check_rules(recipe, result, unsupported)
    return result


def fit_groups(spec: QuantSpec | None, shape: SiteShape) -> tuple[QuantSpec | None, str]:
    """A weight group size that does not divide the layer falls back, as peers fall back per layer: to the largest
    divisor of the group axis not above it (never coarser than asked) when that keeps at least a quarter of the
    group, else to one range per output channel. Returns the spec and a note for ``summary`` ("" when unchanged)."""
    if not isinstance(spec, Uniform) or spec.granularity != "group" or shape.role != "weight":
        return spec, ""
    conv = shape.kernel > 1 and not spec.flat_groups
    axis = shape.numel_per_channel // shape.kernel if conv else shape.numel_per_channel
    if axis % spec.group_size == 0:
        return spec, ""
    size = next(d for d in range(min(spec.group_size, axis), 0, -1) if axis % d == 0)
    what = f"{axis} input {'channels' if conv else 'elements'}"
    if 4 * size >= spec.group_size:
        return replace(spec, group_size=size), f"group {spec.group_size} does not divide its {what}: group {size}"
    return (replace(spec, granularity="channel", group_size=0),
            f"group {spec.group_size} does not divide its {what} (no divisor >= {spec.group_size // 4}): per channel")


def _with_timesteps(site: str, spec: QuantSpec | None, shape: SiteShape, timesteps: tuple[float, ...]) -> SiteShape:
    if spec is None or not getattr(spec, "per_timestep", False):
        return shape
    if shape.role == "weight":
        raise ValueError(f"{site}: per-timestep specs apply to activations only")
    if not timesteps:
        raise ValueError(f"{site}: a per-timestep spec needs the calibration timesteps of a diffusion pipeline")
    return replace(shape, timesteps=timesteps)


def _spec_from_recipe(recipe: Recipe, site: str) -> tuple[QuantSpec | None, str]:
    hit = recipe.spec_for(site)
    if hit is None:
        return None, "no recipe rule matches"
    index, spec = hit
    return spec, f"recipe rule {index} ({recipe.rules[index].pattern!r}) keeps it float"


def _check_rules(recipe: Recipe, result: Plan, unsupported: dict[str, str]) -> None:
    for i, rule in enumerate(recipe.rules):
        if not rule.optional and not any(rule.matches(site) for site in result.specs):
            examples = ", ".join(list(result.specs)[:4]) or "none"
            raise ValueError(
                f"recipe rule {i} ({rule.pattern!r}) matches no quantizer site. Site names look like: {examples}. "
                "Fix the pattern or mark the rule optional=True."
            )
    hits = [recipe.spec_for(f"x.{slot}") for slot in ATTENTION_SLOTS]  # first match wins, as for real sites
    wants_attention = any(hit is not None and hit[1] is not None for hit in hits)
    bypassed = [p for p, why in unsupported.items() if why.startswith("attention class")]
    if wants_attention and bypassed:
        raise ValueError(
            f"{bypassed[0]}: {unsupported[bypassed[0]]}, so its q/k/v/probs quantizers would be silently skipped "
            "(fused attention). Keep attention float with a Recipe whose '*.q_quantizer', '*.k_quantizer', "
            "'*.v_quantizer' and '*.probs_quantizer' rules come first with spec None (optional=True), or use "
            "activation bits 16."
        )


def install(model: nn.Module, result: Plan) -> Callable[[], None]:
    """Build the planned quantizers and put them in place; the returned function restores the float model."""
    undo: list[Callable[[], None]] = []
    try:
        for owner in result.owners:
            specs = {slot: result.specs[owner.site(slot)] for slot in owner.shapes}
            if all(spec is None for spec in specs.values()):
                continue
            quantizers = {
                slot: build(spec, result.shapes[owner.site(slot)]) if spec is not None else None
                for slot, spec in specs.items()
            }
            undo.append(_install_one(model, owner, quantizers))
    except BaseException:
        _run_undo(undo)
        raise
    return lambda: _run_undo(undo)


def _install_one(model: nn.Module, owner: Owner, quantizers: dict[str, nn.Module | None]) -> Callable[[], None]:
    if owner.adapter is not None:
        return owner.adapter.install(model, owner.path, quantizers)
    module = model.get_submodule(owner.path)
    new = quant_class_for(module).from_float(module, quantizers["input_quantizer"], quantizers["weight_quantizer"])
    model.set_submodule(owner.path, new)
    return lambda: model.set_submodule(owner.path, module)


def sync_specs(model: nn.Module, result: Plan) -> None:
    """Record in ``result`` the spec of the quantizer now at each site (a method's ``refine`` may swap one, e.g.
    channel-wise for per-tensor after a reparameterisation), so ``save`` / ``load`` rebuild what is installed."""
    for site, spec in result.specs.items():
        if spec is None:
            continue
        try:
            module = model.get_submodule(site)
        except AttributeError:
            continue
        if isinstance(module, Quantizer):
            result.specs[site] = module.spec


def _run_undo(undo: list[Callable[[], None]]) -> None:
    for fn in reversed(undo):
        fn()
