"""Quantized layers: the float module plus ``input_quantizer`` and ``weight_quantizer`` slots.

A quantized layer shares its float parameters with the layer it replaces (no copy), so swapping is cheap and the
state dict keeps the float weights next to the quantizer buffers. ``freeze`` caches the fake-quantized weight in a
non-persistent buffer so inference does not re-quantize it at every call.
"""

from __future__ import annotations

from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visq.quantizers import Quantizer

M = TypeVar("M", bound=nn.Module)


def rebind(cls: type[M], module: nn.Module) -> M:
    """A ``cls`` instance sharing ``module``'s parameters, buffers and children (containers copied, so adding
    children to the new module leaves the old one untouched and the swap can be undone)."""
    new = cls.__new__(cls)
    new.__dict__.update({k: v.copy() if isinstance(v, (dict, set)) else v for k, v in module.__dict__.items()})
    return new


class _QuantLayer:
    """Shared behaviour of QuantLinear / QuantConv2d (a mixin over the float class)."""

    input_quantizer: Quantizer | None
    weight_quantizer: Quantizer | None
    frozen_weight: Tensor | None
    weight: nn.Parameter

    @classmethod
    def from_float(cls, module: nn.Module, input_quantizer: Quantizer | None, weight_quantizer: Quantizer | None):
        """Wrap ``module`` (an instance of the float class) with the given quantizers."""
        new = rebind(cls, module)
        new.register_module("input_quantizer", input_quantizer)
        new.register_module("weight_quantizer", weight_quantizer)
        new.register_buffer("frozen_weight", None, persistent=False)
        return new

    def quantized_weight(self) -> Tensor:
        """The weight as the forward uses it: cached if frozen, fake-quantized otherwise."""
        if self.frozen_weight is not None:
            return self.frozen_weight
        if self.weight_quantizer is None:
            return self.weight
        return self.weight_quantizer(self.weight)

    def freeze(self) -> None:
        """Cache the fake-quantized weight (call again after changing weights or weight quantizers)."""
        self.frozen_weight = None
        with torch.no_grad():
            self.frozen_weight = self.quantized_weight().detach().clone() if self.weight_quantizer else None

    def unfreeze(self) -> None:
        """Drop the cached weight, so training updates reach the forward again."""
        self.frozen_weight = None

    def _quantize_input(self, x: Tensor) -> Tensor:
        return self.input_quantizer(x) if self.input_quantizer is not None else x


class QuantLinear(_QuantLayer, nn.Linear):
    """``nn.Linear`` with quantized input activations and weights."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self._quantize_input(x), self.quantized_weight(), self.bias)


class QuantConv2d(_QuantLayer, nn.Conv2d):
    """``nn.Conv2d`` with quantized input activations and weights."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self._quantize_input(x), self.quantized_weight(), self.bias)


QUANT_LAYERS: dict[type[nn.Module], type[nn.Module]] = {nn.Linear: QuantLinear, nn.Conv2d: QuantConv2d}


def quant_class_for(module: nn.Module) -> type[nn.Module] | None:
    """The quantized class for a float layer (exact float types only: subclasses may change the forward)."""
    return QUANT_LAYERS.get(type(module))
