"""Calibration: captured inputs of the quantized module (``CalibSet``) replayed under ``observing(model)``.

While observing, every activation quantizer records statistics of its input and passes the input through
unchanged, so each layer is calibrated on float activations ("observe all, then fit"). Leaving the context fits
them all. Weight quantizers are fitted from the weights themselves (``fit_weights``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from visq.quantizers import Quantizer

logger = logging.getLogger(__name__)


@dataclass
class Call:
    """One captured forward call of the quantized module.

    Attributes:
        args, kwargs: the call's arguments (tensors detached).
        timestep: the denoiser timestep (diffusion models).
        run, step: which pipeline run and which of its sampling steps made the call (diffusion models).
        cfg: the batch is [unconditional half, conditional half] (classifier-free guidance).
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    timestep: float | None = None
    run: int = 0
    step: int = 0
    cfg: bool = False


def _tensors(obj: Any) -> Iterator[tuple[str, Tensor]]:
    if isinstance(obj, Tensor):
        yield "", obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from ((f".{k}{name}", t) for name, t in _tensors(v))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from ((f"[{i}]{name}", t) for name, t in _tensors(v))


class CalibSet(Sequence[Call]):
    """Captured calls, validated on construction: non-empty and free of NaN / inf."""

    def __init__(self, calls: Iterable[Call]) -> None:
        self.calls = list(calls)
        if not self.calls:
            raise ValueError("calibration set is empty: pass at least one batch (or prompt / class id)")
        for i, call in enumerate(self.calls):
            for name, t in _tensors({"args": call.args, "kwargs": call.kwargs}):
                if t.is_floating_point() and not torch.isfinite(t).all():
                    raise ValueError(
                        f"calibration call {i}: {name.lstrip('.')} contains NaN or inf; clean the calibration data"
                    )

    def __len__(self) -> int:
        return len(self.calls)

    def __getitem__(self, index):  # type: ignore[override]
        return self.calls[index]

    @property
    def timesteps(self) -> tuple[float, ...]:
        """Distinct timesteps of the captured calls, in first-seen order (empty for non-diffusion models)."""
        return tuple(dict.fromkeys(c.timestep for c in self.calls if c.timestep is not None))

    def subset(self, indices: Iterable[int]) -> CalibSet:
        """A CalibSet of the calls at ``indices`` (used by sample-selection methods)."""
        return CalibSet(self.calls[i] for i in indices)


def activation_quantizers(model: nn.Module) -> list[Quantizer]:
    """Every outermost activation quantizer in ``model`` (a composite quantizer drives its own children)."""
    found, outer = [], None
    for name, m in model.named_modules():  # pre-order: a composite's children follow it directly
        if outer is not None and name.startswith(f"{outer}."):
            continue
        if isinstance(m, Quantizer):
            outer = name
            if m.site.role == "activation":
                found.append(m)
    return found


@contextmanager
def observing(model: nn.Module) -> Iterator[None]:
    """Within the context, activation quantizers observe and pass inputs through; on a clean exit they are fit."""
    quantizers = activation_quantizers(model)
    handles = [q.register_forward_hook(_observe_and_pass) for q in quantizers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
    _fit_all(model, quantizers)


def _fit_all(model: nn.Module, quantizers: list[Quantizer]) -> None:
    """Fit every quantizer; those that saw no data are named together, with the module that bypassed them."""
    names = {id(m): name for name, m in model.named_modules()}
    failed: list[tuple[str, str]] = []
    for q in quantizers:
        try:
            q.fit()
        except RuntimeError as err:
            failed.append((names.get(id(q), type(q).__name__), str(err)))
    if not failed:
        return
    site = failed[0][0]
    layer = site.rsplit(".", 1)[0]
    parent = layer.rsplit(".", 1)[0] if "." in layer else ""
    owner = f"{parent} ({type(model.get_submodule(parent)).__name__})" if parent else type(model).__name__
    shown = ", ".join(name for name, _ in failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
    raise RuntimeError(
        f"{len(failed)} quantizer sites saw no calibration data: {shown} ({failed[0][1]}). The first is inside "
        f"{owner}: a module that uses its layer's weight directly (e.g. F.linear(x, self.qkv.weight, bias)) or a "
        "fused kernel bypasses the quantized layer. Keep those sites float with Rule('<pattern>', None) in a Recipe, "
        "or calibrate with data that reaches them."
    )


def _observe_and_pass(module: Quantizer, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
    module.observe(inputs[0])
    return inputs[0]


def run(model: nn.Module, calib: CalibSet, progress: bool = True) -> None:
    """Replay every captured call through ``model`` without gradients."""
    with torch.no_grad():
        for call in tqdm(calib, desc="calibrating", disable=not progress or len(calib) < 2, leave=False):
            model(*call.args, **call.kwargs)


def fit_weights(model: nn.Module) -> None:
    """Fit every weight quantizer on its layer's current weight (call again after changing weights)."""
    with torch.no_grad():
        for module in model.modules():
            quantizer = getattr(module, "weight_quantizer", None)
            if isinstance(quantizer, Quantizer):
                quantizer.observe(module.weight)
                quantizer.fit()
