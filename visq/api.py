"""The public verbs: quantize, freeze / unfreeze, summary. Orchestration only; each step lives in its module."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from torch import nn

from visq import hosts, methods, recipes, sites
from visq.calibrate import fit_weights, observing, run
from visq.deploy.export import summary_lines
from visq.guard import check_options, restored_on_error
from visq.methods.base import check_family
from visq.modules import QUANT_LAYERS
from visq.recipes import Recipe

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class QuantState:
    """What ``quantize`` did to a model, kept on it as ``model.visq_state`` for summary / save."""

    recipe: Recipe
    plan: sites.Plan
    host: str
    timesteps: tuple[float, ...] = ()


def quantize(
    obj: T,
    recipe: str | Recipe = "w8a8",
    *,
    method: str | None = None,
    calib: Any = None,
    calib_options: dict[str, Any] | None = None,
    progress: bool = True,
    **method_kwargs: Any,
) -> T:
    """Quantize a diffusers pipeline, a timm model or any ``nn.Module`` in place, and return it.

    Args:
        obj: the pipeline or model; it is still called the usual way afterwards.
        recipe: a string such as ``"w8a8"``, ``"w4a8"``, ``"w4a16-g32"`` (see ``visq.recipes``) or a ``Recipe``.
        method: the algorithm (``visq.methods.names()``); defaults to the recipe's (min-max).
        calib: calibration data: images (tensor, list of tensors, DataLoader) for a vision model; prompts,
            class ids or a sample count for a diffusion pipeline; or a ``CalibSet``.
        calib_options: for pipelines, e.g. ``num_inference_steps`` (10), ``batch_size``, ``seed``,
            ``guidance_scale``; for modules, ``batch_size``.
        progress: show a progress bar while calibrating.
        method_kwargs: options of the method.

    Raises:
        ValueError / TypeError: bad recipe, method, model or calibration data. The model is left unchanged.
    """
    quantize_undoable(obj, recipe, method=method, calib=calib, calib_options=calib_options, progress=progress,
                      **method_kwargs)
    return obj


def quantize_undoable(obj: Any, recipe: str | Recipe = "w8a8", *, method: str | None = None, calib: Any = None,
                      calib_options: dict[str, Any] | None = None, progress: bool = True,
                      **method_kwargs: Any) -> Callable[[], None]:
    """``quantize``, returning a function that puts the float modules back (for training verbs that must leave the
    caller's model as it was when they fail). The function holds the float modules: drop it once not needed (an
    exported model would otherwise keep its float weights alive)."""
    recipe = recipes.resolve(recipe, method, **method_kwargs)
    host = hosts.detect(obj)
    model = host.target(obj)
    if getattr(model, "visq_state", None) is not None:
        raise ValueError("this model is already quantized; load a fresh float model to quantize again")
    algo = methods.get(recipe.method, **recipe.method_kwargs)
    check_family(algo, host.family, type(model).__name__)
    options = check_options(calib_options)
    calib_set = algo.collect(obj, calib, options) or host.collect(obj, calib, options)
    undo_prepare = algo.prepare(model) or (lambda: None)
    undo_sites = lambda: None  # noqa: E731
    with restored_on_error(model):  # a method that failed mid-way (e.g. a reconstruction) leaves no flag flipped
        try:
            plan = sites.plan(model, replace(recipe, rules=algo.rules(recipe.rules)), host.float_rules(model),
                              calib_set.timesteps)
            undo_sites = sites.install(model, plan)
            host.activate(obj, model)
            fit_weights(model)
            with _eval_mode(model), observing(model):
                run(model, calib_set, progress)
            algo.refine(obj, model, calib_set)
            sites.sync_specs(model, plan)
        except BaseException:
            undo_sites()
            undo_prepare()
            host.activate(obj, model)
            raise

    model.visq_state = QuantState(recipe, plan, host.name, calib_set.timesteps)
    logger.info("quantized %d sites of %s with %s", len(plan.quantized), type(model).__name__, recipe.name)

    def undo() -> None:
        undo_sites()
        undo_prepare()
        host.activate(obj, model)
        del model.visq_state

    return undo


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Calibrate without dropout; restore the caller's train / eval mode afterwards."""
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


def _quantized_layers(obj: Any) -> list[nn.Module]:
    model = hosts.detect(obj).target(obj)
    return [m for m in model.modules() if type(m) in QUANT_LAYERS.values()]


def freeze(obj: T) -> T:
    """Cache fake-quantized weights so inference does not re-quantize them at every call."""
    quant_state(obj)  # raises on a model that was never quantized: there would be nothing to freeze
    for layer in _quantized_layers(obj):
        layer.freeze()
    return obj


def unfreeze(obj: T) -> T:
    """Drop cached weights (before training or changing weights)."""
    for layer in _quantized_layers(obj):
        layer.unfreeze()
    return obj


def quant_state(obj: Any) -> QuantState:
    """The ``QuantState`` of a quantized pipeline or model; raises if it was never quantized."""
    model = hosts.detect(obj).target(obj)
    state = getattr(model, "visq_state", None)
    if state is None:
        raise ValueError(f"{type(model).__name__} is not quantized: call visq.quantize or visq.load first")
    return state


def summary(obj: Any) -> str:
    """Every quantizer site with its spec, and every layer kept float with the reason."""
    state = quant_state(obj)
    model = hosts.detect(obj).target(obj)
    quantized = state.plan.quantized
    width = max([len(s) for s in quantized] + [len(s) for s in state.plan.float_layers] + [10])
    lines = [
        f"visq: {type(model).__name__} (host {state.host}), recipe {state.recipe.name}, method {state.recipe.method}",
        f"quantized sites: {len(quantized)}",
    ]
    lines += [f"  {site:<{width}}  {spec.short()}" for site, spec in quantized.items()]
    lines.append(f"float layers: {len(state.plan.float_layers)}")
    lines += [f"  {path or '<root>':<{width}}  {why}" for path, why in state.plan.float_layers.items()]
    if state.plan.adjusted:
        lines.append(f"sites fitted to their layer: {len(state.plan.adjusted)}")
        lines += [f"  {site:<{width}}  {why}" for site, why in state.plan.adjusted.items()]
    if state.timesteps:
        lines.append(f"calibrated timesteps: {', '.join(f'{t:g}' for t in state.timesteps)}")
    lines += summary_lines(model)
    return "\n".join(lines)
