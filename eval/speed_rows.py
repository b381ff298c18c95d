"""The rows of ``eval.bench_speed``: each turns a fresh float model into the object to time, at equal scope.

Scope (every row but the ``full`` ones): the ``nn.Linear`` layers visq's host quantizes (ViT: every block linear,
not the patch embedding or the head; UNet: every linear except the time / class embeddings). Convolutions and
attention matmuls stay float in those rows; torchao and quanto get the same layer list through ``filter_fn`` /
``include``. The ``full`` rows run visq's own ``w8a8`` recipe, which also quantizes what no peer row does: the
convolutions (int8 oneDNN convolutions after ``visq.export``) and the attention products (q.k^T and probs.v as int8
GEMMs); a second ``full`` row keeps those two as float kernels around the fake quantizers, to price the kernels.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

import visq
from visq import Recipe, Rule, hosts
from visq.kernels import onednn
from visq.recipes import parse


@dataclass(frozen=True)
class Row:
    """One benchmark row: its library, scheme, whether it is compiled, and the activations' dtype."""

    name: str
    library: str
    scheme: str
    compiled: bool = False
    dtype: torch.dtype = torch.float32
    note: str = ""  # the exact quantizers (grouping, symmetry, layers left float) where the scheme is not enough


W4_GROUPS = ("quanto's grouping (per channel when K <= 128, else groups of 128 or the largest of 96 / 64 / 32 "
             "dividing K)")


def _w4_rows(grid: str) -> list[Row]:
    """visq's W4A16, W4A8 and quanto-grouped bf16 W4A16 rows on the default (asymmetric) or ``-sym`` grid."""
    weights = ("asymmetric per output channel (unsigned grid, zero point)" if not grid
               else "symmetric per output channel")
    default = "visq's default " if not grid else ""
    return [
        Row(f"visq export W4A16{grid}", "visq", "W4 weight-only", note=f"{default}`w4a16{grid}`: {weights}, min-max"),
        Row(f"visq export W4A8{grid}", "visq", "W4A8 static",
            note=f"{default}`w4a8{grid}`: {weights} 4-bit weights, static per-tensor 8-bit activations"),
        Row(f"visq export W4A16-g128{grid} bf16", "visq", "W4 weight-only", dtype=torch.bfloat16,
            note=f"`w4a16{grid}` weights (min-max) in {W4_GROUPS}" + ("" if grid else ": quanto's W4 scheme exactly")),
    ]


ROWS = {r.name: r for r in [
    Row("fp32", "torch", "float"),
    Row("bf16", "torch", "float", dtype=torch.bfloat16),
    Row("visq fake-quant W8A8", "visq", "W8A8 static"),
    Row("visq export W8A8", "visq", "W8A8 static"),
    Row("visq export W8A8 compiled", "visq", "W8A8 static", compiled=True),
    Row("visq export W8A8 full", "visq", "W8A8 static",
        note="visq's own `w8a8` recipe, wider than the peer rows: the scoped linears plus every convolution with "
             "quantized inputs (oneDNN int8 convolution) and the attention products (q / k / v / probs static "
             "per-tensor 8-bit, q.k^T and probs.v as int8 GEMMs)"),
    Row("visq export W8A8 full, fake-quant attention + convs", "visq", "W8A8 static",
        note="as `full`, with the attention products and the convolutions left fake-quant around float kernels "
             "(what `visq.export` ran before its int8 attention and convolutions)"),
    Row("visq export W8A8 full compiled", "visq", "W8A8 static", compiled=True,
        note="as `full`, under `torch.compile` (`visq.export(compile=True)`): the linears and both attention "
             "products run `torch._int_mm`, inductor fuses the quantization, zero-point sums and rescales around "
             "them"),
    Row("visq export W8A8 full bf16", "visq", "W8A8 static", dtype=torch.bfloat16,
        note="as `full`, on bf16 activations (`model.to(torch.bfloat16)` after `visq.export`: the int8 kernels read "
             "bf16 and oneDNN writes bf16; norms, softmax and the other float ops run in bf16)"),
    Row("visq export W8A8-dyn", "visq", "W8A8 dynamic per-token"),
    Row("visq export W8A16", "visq", "W8 weight-only"),
    *(row for grid in ("", "-sym") for row in _w4_rows(grid)),
    Row("torchao int8 dynamic", "torchao", "W8A8 dynamic per-token"),
    Row("torchao int8 dynamic compiled", "torchao", "W8A8 dynamic per-token", compiled=True),
    Row("torchao int8 weight-only", "torchao", "W8 weight-only"),
    Row("torchao int8 weight-only compiled", "torchao", "W8 weight-only", compiled=True),
    Row("torchao int4 weight-only bf16", "torchao", "W4 weight-only", dtype=torch.bfloat16,
        note="asymmetric groups of 128, else the largest of 64 / 32 dividing K (torchao's group sizes; its default "
             "of 128 alone would leave narrower layers float); CPU: `PrototypeInt4WeightOnlyConfig` (tinygemm CPU "
             "kernel), since the default `Int4WeightOnlyConfig` needs the CUDA-only mslk"),
    Row("quanto W8A8", "quanto", "W8A8 static"),
    Row("quanto W8 weight-only", "quanto", "W8 weight-only"),
    Row("quanto W4 weight-only", "quanto", "W4 weight-only",
        note=f"quanto's default qint4: asymmetric min-max, {W4_GROUPS}"),
    Row("quanto W4A8", "quanto", "W4A8 static",
        note="qint4 weights as in the quanto W4 rows, qint8 activations calibrated static per tensor"),
    Row("quanto W4 weight-only bf16", "quanto", "W4 weight-only", dtype=torch.bfloat16,
        note=f"quanto's default qint4: asymmetric min-max, {W4_GROUPS}"),
]}
VISQ_RECIPES = {"visq fake-quant W8A8": "w8a8", "visq export W8A8": "w8a8", "visq export W8A8 compiled": "w8a8",
                "visq export W8A8 full": "w8a8", "visq export W8A8 full, fake-quant attention + convs": "w8a8",
                "visq export W8A8 full bf16": "w8a8", "visq export W8A8 full compiled": "w8a8",
                "visq export W8A8-dyn": "w8a8-dyn", "visq export W8A16": "w8a16", "visq export W4A16": "w4a16",
                "visq export W4A8": "w4a8", "visq export W4A16-g128 bf16": "w4a16",
                "visq export W4A16-sym": "w4a16-sym", "visq export W4A8-sym": "w4a8-sym",
                "visq export W4A16-g128-sym bf16": "w4a16-sym"}
# visq rows at visq's own recipe scope (convolutions and attention products too), not the peers' linear scope
FULL_SCOPE = {"visq export W8A8 full", "visq export W8A8 full, fake-quant attention + convs",
              "visq export W8A8 full bf16", "visq export W8A8 full compiled"}
# visq rows grouped per layer as quanto groups (quanto_group)
PEER_GROUPED = {"visq export W4A16-g128 bf16", "visq export W4A16-g128-sym bf16"}


def quanto_group(k: int) -> int | None:
    """The weight group size optimum-quanto 0.2.7 gives a 2/4-bit layer with ``k`` inputs per output channel
    (``QModuleMixin.__init__``): 128, stepping down by 32 to the first that divides ``k``; per channel (None)
    when ``k <= 128`` or nothing divides."""
    if k <= 128:
        return None
    return next((g for g in (128, 96, 64, 32) if k % g == 0), None)


def torchao_group(k: int) -> int | None:
    """The largest int4 group size torchao's kernels accept (128, 64, 32) that divides ``k``; None: none does."""
    return next((g for g in (128, 64, 32) if k % g == 0), None)


def linear_scope(model: nn.Module) -> list[str]:
    """Paths of the linear layers every row quantizes: visq's host defaults decide what stays float."""
    rules = hosts.detect(model).float_rules(model)
    return [p for p, m in model.named_modules()
            if type(m) is nn.Linear and not any(fnmatch.fnmatchcase(p, r.pattern) for r in rules)]


def scoped_recipe(text: str, scope: list[str], groups: dict[str, int | None] | None = None) -> Recipe:
    """``text``'s weight and input specs on exactly the ``scope`` linears; every other site float. ``groups``
    (path -> group size, None = per channel) overrides the weight grouping layer by layer."""
    base = parse(text)
    weight, act = base.spec_for("x.weight_quantizer")[1], base.spec_for("x.input_quantizer")[1]

    def weight_for(path: str) -> Any:
        if groups is None:
            return weight
        g = groups[path]
        return replace(weight, granularity="group" if g else "channel", group_size=g or 0)

    rules = [r for p in scope
             for r in (Rule(f"{p}.weight_quantizer", weight_for(p)), Rule(f"{p}.input_quantizer", act))]
    return Recipe((*rules, Rule("*", None, optional=True)), name=f"{text} (linears)")


@contextmanager
def _float_kernels_for_attention_and_convs(model: nn.Module) -> Iterator[None]:
    """While ``visq.export`` runs inside: no int8 convolution kernel (as on a CPU without one); afterwards the
    attention products go back to float matmuls around the fake quantizers. For the benchmark's `before` row."""
    available = onednn.conv_available
    onednn.conv_available = lambda: False
    try:
        yield
    finally:
        onednn.conv_available = available
    for module in model.modules():
        module.__dict__.pop("int8_attention", None)


def apply(row: Row, obj: Any, calib: Any, calib_options: dict[str, Any], forward: Callable[[], Any]) -> Any:
    """Quantize ``obj`` (a model or pipeline) as ``row`` says, in place; returns it. ``forward`` runs a
    calibration pass of the target module (quanto's static activations)."""
    model = hosts.detect(obj).target(obj)
    scope = linear_scope(model)
    if row.library == "visq":
        modules = dict(model.named_modules())
        groups = {p: quanto_group(modules[p].in_features) for p in scope} if row.name in PEER_GROUPED else None
        recipe = VISQ_RECIPES[row.name] if row.name in FULL_SCOPE else scoped_recipe(VISQ_RECIPES[row.name], scope,
                                                                                      groups)
        visq.quantize(obj, recipe, calib=calib, calib_options=calib_options, progress=False)
        visq.freeze(obj)
        if "fake-quant attention + convs" in row.name:
            with _float_kernels_for_attention_and_convs(model):
                visq.export(obj, compile=row.compiled)
        elif "export" in row.name:
            visq.export(obj, compile=row.compiled)
    elif row.library == "torchao":
        _torchao(row, model, set(scope))
    elif row.library == "quanto":
        _quanto(row, model, scope, forward)
    if row.dtype != torch.float32:
        model.to(row.dtype)
    return obj


def _torchao(row: Row, model: nn.Module, scope: set[str]) -> None:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

    if row.dtype != torch.float32:
        model.to(row.dtype)
    if row.scheme == "W4 weight-only":
        _torchao_int4(model, scope)
    else:
        config = {"W8A8 dynamic per-token": Int8DynamicActivationInt8WeightConfig(),
                  "W8 weight-only": Int8WeightOnlyConfig()}[row.scheme]
        quantize_(model, config, filter_fn=lambda m, fqn: fqn in scope)
    if row.compiled:
        model.compile()


def _torchao_int4(model: nn.Module, scope: set[str]) -> None:
    """torchao int4 weight-only, one ``quantize_`` per group size so every scoped layer is quantized."""
    from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig
    from torchao.quantization import Int4WeightOnlyConfig, quantize_

    on_cpu = next(model.parameters()).device.type == "cpu"
    modules = dict(model.named_modules())
    groups = {p: torchao_group(modules[p].in_features) for p in scope}
    if None in groups.values():
        bad = sorted(p for p, g in groups.items() if g is None)
        raise ValueError(f"torchao int4: no group size of 128 / 64 / 32 divides the inputs of {bad[:3]}")
    for g in sorted(set(groups.values())):
        config = PrototypeInt4WeightOnlyConfig(group_size=g) if on_cpu else Int4WeightOnlyConfig(group_size=g)
        quantize_(model, config, filter_fn=lambda m, fqn, g=g: groups.get(fqn) == g)


def _quanto(row: Row, model: nn.Module, scope: list[str], forward: Callable[[], Any]) -> None:
    from optimum.quanto import Calibration, freeze, qint4, qint8, quantize

    if row.dtype != torch.float32:
        model.to(row.dtype)
    weights = qint4 if row.scheme.startswith("W4") else qint8
    activations = qint8 if "A8" in row.scheme.split()[0] else None
    quantize(model, weights=weights, activations=activations, include=scope)
    if activations is not None:
        with torch.no_grad(), Calibration():
            forward()
    freeze(model)
