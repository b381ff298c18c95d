"""oneDNN's fused W8A8 linear for CPU (``onednn::qlinear_pointwise``, the kernel inductor's x86 int8 path lowers to).

It takes uint8 activations with a per-tensor scale and zero point, symmetric per-channel int8 weights prepacked
into oneDNN's blocked layout, and returns fp32 with the bias added: zero-point compensation, requantization and
bias happen inside the GEMM, so eager inference pays one extra pass (quantizing the input) instead of five.
Activations are divided by their scale exactly as the fake quantizer divides (``x / s``, not a reciprocal
multiply, which flips a code near ties), then rounded, shifted and clamped by ``torch.quantize_per_tensor`` with
scale 1 in one fused pass, so the codes equal the fake quantizer's.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor


def available() -> bool:
    """Whether this torch build has the oneDNN quantized linear."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")


class PackedWeight:
    """oneDNN's opaque prepacked weight, with the int8 (N, K) weight it came from (a deepcopy repacks: opaque
    tensors have no storage to copy)."""

    def __init__(self, weight: Tensor) -> None:
        self.source = weight
        self.packed = torch.ops.onednn.qlinear_prepack(weight.contiguous(), None)
        self.zero_points = torch.zeros(weight.shape[0], dtype=torch.long)

    def __deepcopy__(self, memo: dict) -> PackedWeight:
        return PackedWeight(self.source.clone())


def quantize_u8(x: Tensor, scale: Tensor, zero: int) -> Tensor:
    """uint8 codes ``clamp(round(x / scale) + zero, 0, 255)`` (``scale`` 0-dim, as the fake quantizer uses it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the quantized-tensor constructors warn that they are deprecated
        return torch.quantize_per_tensor(torch.div(x, scale).float(), 1.0, zero, torch.quint8).int_repr()


def linear(
    x_u8: Tensor, scale: float, zero: int, weight: PackedWeight, w_scale: Tensor, bias: Tensor | None
) -> Tensor:
    """fp32 ``(x_u8 - zero) * scale @ (w * w_scale).T + bias`` for 2-d ``x_u8``."""
    return torch.ops.onednn.qlinear_pointwise(
        x_u8, scale, zero, weight.packed, w_scale, weight.zero_points, bias, 1.0, 0, torch.float32, "none", [], ""
    )
