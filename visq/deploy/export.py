"""``visq.export``: swap a quantized model's fake-quant layers for integer-kernel layers, per layer.

The fake-quant model stays the reference: each exported layer is built from its fake-quant layer and checked to
reproduce its integer weight exactly; layers without a kernel keep their fake-quant forward, and ``summary``
names the kernel (or the reason) for every quantized layer. ``visq.save`` / ``visq.load`` keep the exported form.
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
from visq.modules import QUANT_LAYERS
from visq.quantizers import Quantizer
from visq.sites import ATTENTION_SLOTS

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class ExportState:
    """What ``export`` did, kept on the model as ``model.visq_export``.

    Attributes:
        layers: layer path -> export kind (``choose.KINDS``) for every exported layer.
        kept: layer path -> why it still runs fake-quant.
        compiled: whether ``torch.compile`` was applied.
        compile_seconds: time of the first (compiling) call when ``example`` was given, else None.
    """

    layers: dict[str, str] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)
    compiled: bool = False
    compile_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "kept": self.kept}


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
    model.visq_export = state
    logger.info("exported %d layers (%d kept fake-quant)", len(state.layers), len(state.kept))
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
    slots = sum(1 for p, m in model.named_modules() if isinstance(m, Quantizer) and p.endswith(ATTENTION_SLOTS))
    if slots:
        lines.append(f"attention q / k / v / probs quantizers: {slots}, fake-quant around float matmuls (no int8 "
                     "batched matmul is exported)")
    return lines


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
