"""The Host contract, and the generic host for any ``nn.Module`` called on tensors."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from visq.calibrate import CalibSet, Call
from visq.guard import check_int
from visq.sites import FloatRule


class Host:
    """Knows one model family: what to quantize, what stays float, how to capture calibration data, and
    which runtime hooks the quantized model needs."""

    name = "module"
    family: str | None = None  # the model family methods declare (Method.family); None: unknown, any method

    def target(self, obj: Any) -> nn.Module:
        """The module whose layers get quantized."""
        return obj

    def float_rules(self, model: nn.Module) -> list[FloatRule]:
        """Layers kept float by default, with the reason ``summary`` prints."""
        return []

    def collect(self, obj: Any, calib: Any, options: dict[str, Any]) -> CalibSet:
        """Calibration calls for ``target(obj)`` from user data (tensor, list of tensors, DataLoader, CalibSet)."""
        if isinstance(calib, CalibSet):
            return calib
        unknown = sorted(set(options) - {"batch_size"})
        if unknown:
            raise ValueError(f"unknown calibration options {unknown}: a module's calibration takes batch_size only")
        batch_size = check_int("batch_size", options.get("batch_size", 32))
        calls = CalibSet(Call((x,)) for x in _batches(calib, batch_size))
        _check_first_call(self.target(obj), calls[0])
        return calls

    def activate(self, obj: Any, model: nn.Module) -> None:
        """Install runtime hooks the quantized model needs (none for plain modules)."""

    def describe(self, obj: Any) -> dict[str, Any]:
        """What identifies the architecture in ``quant.json``."""
        model = self.target(obj)
        return {"host": self.name, "class": type(model).__name__}


def _batches(calib: Any, batch_size: int) -> Iterable[Tensor]:
    if calib is None:
        raise ValueError("this model needs calibration data: pass calib= a tensor, a list of tensors or a DataLoader")
    if isinstance(calib, Tensor):
        if calib.ndim == 0 or len(calib) == 0:
            raise ValueError("calibration tensor is empty")
        return list(calib.split(batch_size))
    batches = []
    for item in calib:
        x = item[0] if isinstance(item, (tuple, list)) else item  # (inputs, labels) from a DataLoader
        if not isinstance(x, Tensor):
            raise TypeError(f"calibration batches must be tensors, got {type(x).__name__}")
        batches.append(x)
    return batches


def _check_first_call(model: nn.Module, call: Call) -> None:
    """Run one calibration batch through the float model so a shape mismatch fails before anything changes."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*call.args, **call.kwargs)
    except Exception as err:
        shapes = [tuple(a.shape) for a in call.args if isinstance(a, Tensor)]
        raise ValueError(
            f"calibration batch of shape {shapes} does not fit {type(model).__name__}: {err}. "
            "Pass inputs shaped like the model's usual input (for images: N x C x H x W, preprocessed)."
        ) from err
    finally:
        model.train(was_training)
