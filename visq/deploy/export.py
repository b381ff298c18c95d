"""``visq.export``: swap a quantized model's fake-quant layers for integer-kernel layers, per layer.

The fake-quant model stays the reference: each exported layer is built from its fake-quant layer and checked to
reproduce its integer weight exactly; layers without a kernel keep their fake-quant forward, and ``summary``
names the kernel (or the reason) for every quantized layer. Attention whose q / k / v / probs quantizers are static
per-tensor grids is switched onto int8 products (``kernels.int8.matmul_static``: the same integer sums as the
fake-quant products). ``visq.save`` / ``visq.load`` keep the exported form.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from visq import hosts
from visq.deploy import choose
from visq.kernels import int8
from visq.modules import QUANT_LAYERS
from visq.quantizers.uniform import UniformQuantizer
from visq.sites import ATTENTION_SLOTS

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class ExportState:
    """What ``export`` did, kept on the model as ``model.visq_export``.

    Attributes:
        layers: layer path -> export kind (``choose.KINDS``) for every exported layer.
        kept: layer path -> why it still runs fake-quant.
        attention: attention modules whose q.k^T and probs.v run as int8 GEMMs on their quantizers' codes.
        attention_kept: attention module path -> why its products stay float matmuls around fake-quant.
        compiled: whether ``torch.compile`` was applied.
        compile_seconds: time of the first (compiling) call when ``example`` was given, else None.
    """

    layers: dict[str, str] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)
    attention: list[str] = field(default_factory=list)
    attention_kept: dict[str, str] = field(default_factory=dict)
    compiled: bool = False
    compile_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "kept": self.kept, "attention": self.attention,
                "attention_kept": self.attention_kept}


def export(
    obj: T,
    *,
    compile: bool = False,
    compile_options: dict[str, Any] | None = None,
    example: tuple[Any, ...] | None = None,
) -> T:
    """Run ``obj``'s quantized layers on integer kernels; returns the same pipeline / model.

    Args:
        obj: a pipeline or model returned by ``visq.quantize`` (or ``visq.load``).
        compile: also ``torch.compile`` the quantized module in place (``nn.Module.compile``).
        compile_options: keyword arguments for ``torch.compile`` (e.g. ``{"mode": "max-autotune"}``).
        example: positional arguments for one call of the quantized module; with ``compile`` the first call is
            made here, timed and logged (``visq_export.compile_seconds``), instead of on the user's first call.

    Raises:
        ValueError: ``obj`` is not quantized, or is already exported.
    """
    from visq.api import quant_state

    quant_state(obj)  # raises with the fix if obj was never quantized
    model = hosts.detect(obj).target(obj)
    if getattr(model, "visq_export", None) is not None:
        raise ValueError("this model is already exported; export a freshly quantized (or loaded) model")
    state = ExportState()
    for path, layer in _quant_layers(model):
        kind, reason = choose.choose(layer)
        built = choose.build(layer, kind) if kind is not None else reason
        if isinstance(built, str):
            state.kept[path] = built
            continue
        model.set_submodule(path, built.to(layer.weight.device))
        state.layers[path] = kind
    _export_attention(model, state)
    model.visq_export = state
    logger.info("exported %d layers (%d kept fake-quant)", len(state.layers), len(state.kept))
    integer = "w8a8" in state.layers.values() or state.attention
    if integer and _fp32_route(model):
        logger.warning("this CPU has no VNNI / AMX int8 GEMM (%s): the exported int8 products are computed exactly "
                       "as fp32 GEMMs on the codes, so they save memory but run no faster than fp32",
                       torch.backends.cpu.get_cpu_capability())
    if compile:
        _compile(model, state, compile_options or {}, example)
    return obj


def rebuild(model: nn.Module, saved: dict[str, Any]) -> None:
    """Recreate the exported layers recorded by ``save`` on a freshly installed fake-quant model (for ``load``);
    their buffers are then overwritten by the saved state dict."""
    state = ExportState(kept=dict(saved.get("kept", {})))
    for path, kind in saved["layers"].items():
        built = choose.build(model.get_submodule(path), kind)
        if isinstance(built, str):
            raise ValueError(f"cannot rebuild exported layer {path} ({kind}): {built}")
        model.set_submodule(path, built)
        state.layers[path] = kind
    for path in saved.get("attention", []):  # folders saved before int8 attention existed keep fake-quant
        model.get_submodule(path).int8_attention = True
        state.attention.append(path)
    state.attention_kept = dict(saved.get("attention_kept", {}))
    model.visq_export = state


def summary_lines(model: nn.Module) -> list[str]:
    """The kernel of every exported layer and the reason each other quantized layer runs fake-quant."""
    state: ExportState | None = getattr(model, "visq_export", None)
    if state is None:
        return []
    compiled = f", torch.compile {'on' if state.compiled else 'off'}"
    if state.compile_seconds is not None:
        compiled += f" (compiled in {state.compile_seconds:.1f} s)"
    lines = [f"exported layers: {len(state.layers)}{compiled}"]
    width = max([len(p) for p in [*state.layers, *state.kept]] + [10])
    lines += [f"  {p:<{width}}  {model.get_submodule(p).kernel}" for p in state.layers]
    lines.append(f"fake-quant layers: {len(state.kept)}")
    lines += [f"  {p:<{width}}  {why}" for p, why in state.kept.items()]
    if state.attention:
        gemm = "exact fp32 GEMMs: no VNNI on this CPU" if _fp32_route(model) else "torch._int_mm per head"
        lines.append(f"int8 attention: {len(state.attention)} modules run q.k^T and probs.v as int8 GEMMs on their "
                     f"quantizers' codes ({gemm}, exact zero-point sums)")
    if state.attention_kept:
        lines.append(f"fake-quant attention: {len(state.attention_kept)} (float matmuls around fake-quant q / k / v "
                     "/ probs)")
        lines += [f"  {p:<{width}}  {why}" for p, why in state.attention_kept.items()]
    return lines


def _fp32_route(model: nn.Module) -> bool:
    """Whether the model's int8 GEMMs take the exact fp32 route (on CPU without VNNI / AMX)."""
    return all(int8.fp32_route(t) for t in model.buffers())


def _export_attention(model: nn.Module, state: ExportState) -> None:
    """Switch every attention whose four slots are static per-tensor uniform quantizers of <= 8 bits onto int8
    products (the classes that implement it say so with ``exports_int8_attention``); record why others stay."""
    for path, module in model.named_modules():
        if not all(hasattr(module, slot) for slot in ATTENTION_SLOTS):
            continue  # not an attention
        if all(getattr(module, slot) is None for slot in ATTENTION_SLOTS):
            continue  # an attention the recipe keeps float
        reason = _attention_gap(module)
        if reason is None:
            module.int8_attention = True
            state.attention.append(path)
        else:
            state.attention_kept[path] = reason


def _attention_gap(module: nn.Module) -> str | None:
    if not getattr(type(module), "exports_int8_attention", False):
        return f"{type(module).__name__} computes its own attention (no int8 path)"
    for slot in ATTENTION_SLOTS:
        quantizer = getattr(module, slot)
        if quantizer is None:
            return f"{slot} is float"
        if type(quantizer) is not UniformQuantizer:
            return f"{slot} is a {type(quantizer).__name__} (integer kernels take uniform quantizers)"
        spec = quantizer.spec
        if spec.dynamic or spec.granularity != "tensor" or spec.bits > 8:
            return f"{slot} is {spec.short()} (integer attention takes static per-tensor grids of <= 8 bits)"
    return None


def _quant_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(p, m) for p, m in model.named_modules() if type(m) in QUANT_LAYERS.values()]


def _compile(model: nn.Module, state: ExportState, options: dict[str, Any], example: tuple[Any, ...] | None) -> None:
    model.compile(**options)
    state.compiled = True
    if example is None:
        return
    start = time.perf_counter()
    with torch.no_grad():
        model(*example)
    state.compile_seconds = time.perf_counter() - start
    logger.info("torch.compile: first call took %.1f s", state.compile_seconds)
