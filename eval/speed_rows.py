"""The rows of ``eval.bench_speed``: each turns a fresh float model into the object to time, at equal scope.

Scope (every row): the ``nn.Linear`` layers visq's host quantizes (ViT: every block linear, not the patch embedding
or the head; UNet: every linear except the time / class embeddings). Convolutions and attention matmuls stay
float in every row; torchao and quanto get the same layer list through ``filter_fn`` / ``include``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import visq
from visq import Recipe, Rule, hosts
from visq.recipes import parse


@dataclass(frozen=True)
class Row:
    """One benchmark row: its library, scheme, whether it is compiled, and the activations' dtype."""

    name: str
    library: str
    scheme: str
    compiled: bool = False
    dtype: torch.dtype = torch.float32


ROWS = {r.name: r for r in [
    Row("fp32", "torch", "float"),
    Row("bf16", "torch", "float", dtype=torch.bfloat16),
    Row("visq fake-quant W8A8", "visq", "W8A8 static"),
    Row("visq export W8A8", "visq", "W8A8 static"),
    Row("visq export W8A8 compiled", "visq", "W8A8 static", compiled=True),
    Row("visq export W8A8-dyn", "visq", "W8A8 dynamic per-token"),
    Row("visq export W8A16", "visq", "W8 weight-only"),
    Row("visq export W4A16-g128 bf16", "visq", "W4 weight-only", dtype=torch.bfloat16),
    Row("torchao int8 dynamic", "torchao", "W8A8 dynamic per-token"),
    Row("torchao int8 dynamic compiled", "torchao", "W8A8 dynamic per-token", compiled=True),
    Row("torchao int8 weight-only", "torchao", "W8 weight-only"),
    Row("torchao int8 weight-only compiled", "torchao", "W8 weight-only", compiled=True),
    Row("torchao int4 weight-only bf16", "torchao", "W4 weight-only", dtype=torch.bfloat16),
    Row("quanto W8A8", "quanto", "W8A8 static"),
    Row("quanto W8 weight-only", "quanto", "W8 weight-only"),
    Row("quanto W4 weight-only bf16", "quanto", "W4 weight-only", dtype=torch.bfloat16),
]}
VISQ_RECIPES = {"visq fake-quant W8A8": "w8a8", "visq export W8A8": "w8a8", "visq export W8A8 compiled": "w8a8",
                "visq export W8A8-dyn": "w8a8-dyn", "visq export W8A16": "w8a16",
                "visq export W4A16-g128 bf16": "w4a16-g128"}


def linear_scope(model: nn.Module) -> list[str]:
    """Paths of the linear layers every row quantizes: visq's host defaults decide what stays float."""
    rules = hosts.detect(model).float_rules(model)
    return [p for p, m in model.named_modules()
            if type(m) is nn.Linear and not any(fnmatch.fnmatchcase(p, r.pattern) for r in rules)]


def scoped_recipe(text: str, scope: list[str]) -> Recipe:
    """``text``'s weight and input specs on exactly the ``scope`` linears; every other site float."""
    base = parse(text)
    weight, act = base.spec_for("x.weight_quantizer")[1], base.spec_for("x.input_quantizer")[1]
    rules = [r for p in scope for r in (Rule(f"{p}.weight_quantizer", weight), Rule(f"{p}.input_quantizer", act))]
    return Recipe((*rules, Rule("*", None, optional=True)), name=f"{text} (linears)")


def apply(row: Row, obj: Any, calib: Any, calib_options: dict[str, Any], forward: Callable[[], Any]) -> Any:
    """Quantize ``obj`` (a model or pipeline) as ``row`` says, in place; returns it. ``forward`` runs a
    calibration pass of the target module (quanto's static activations)."""
    model = hosts.detect(obj).target(obj)
    scope = linear_scope(model)
    if row.library == "visq":
        visq.quantize(obj, scoped_recipe(VISQ_RECIPES[row.name], scope), calib=calib, calib_options=calib_options,
                      progress=False)
        visq.freeze(obj)
        if "export" in row.name:
            visq.export(obj, compile=row.compiled)
    elif row.library == "torchao":
        _torchao(row, model, set(scope))
    elif row.library == "quanto":
        _quanto(row, model, scope, forward)
    if row.dtype != torch.float32:
        model.to(row.dtype)
    return obj


def _torchao(row: Row, model: nn.Module, scope: set[str]) -> None:
    from torchao.quantization import (
        Int4WeightOnlyConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        quantize_,
    )

    if row.dtype != torch.float32:
        model.to(row.dtype)
    config = {"W8A8 dynamic per-token": Int8DynamicActivationInt8WeightConfig(), "W8 weight-only":
              Int8WeightOnlyConfig(), "W4 weight-only": Int4WeightOnlyConfig(group_size=128)}[row.scheme]
    quantize_(model, config, filter_fn=lambda m, fqn: fqn in scope)
    if row.compiled:
        model.compile()


def _quanto(row: Row, model: nn.Module, scope: list[str], forward: Callable[[], Any]) -> None:
    from optimum.quanto import Calibration, freeze, qint4, qint8, quantize

    if row.dtype != torch.float32:
        model.to(row.dtype)
    weights = qint4 if row.scheme.startswith("W4") else qint8
    activations = qint8 if row.scheme.startswith("W8A8") else None
    quantize(model, weights=weights, activations=activations, include=scope)
    if activations is not None:
        with torch.no_grad(), Calibration():
            forward()
    freeze(model)
