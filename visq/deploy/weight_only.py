"""Weight-only exported layers: int8 linear weights (``aten._weight_int8pack_mm``), packed 4-bit linear weights, and
int8 convolution weights (storage only: dequantized per call).

Activations stay float. The 4-bit layer stores two codes a byte (``visq.kernels.int4``); the kernel follows the
activation dtype: bf16 runs tinygemm (CPU or CUDA), anything else dequantizes and calls ``F.linear``, bit-equal
to the fake-quant forward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visq.kernels import int4


class Int8WeightLinear(nn.Module):
    """Exported W8A16 ``nn.Linear``: ``qweight`` (N, K) int8 and ``weight_scale`` (N,), activations float."""

    kernel = "int8 weight-only (_weight_int8pack_mm for bf16 activations, else dequant + F.linear)"

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_codes(cls, codes: Tensor, scale: Tensor, bias: Tensor | None) -> Int8WeightLinear:
        n, k = codes.shape
        new = cls(k, n, bias is not None)
        new.qweight.copy_(codes)
        new.weight_scale.copy_(scale.float().expand(n))
        if bias is not None:
            new.bias.copy_(bias.detach())
        return new

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        if x.dtype != torch.bfloat16:  # the fused kernel's fp32 path is ~20x slower than dequant + F.linear here
            return F.linear(x, (self.qweight.float() * self.weight_scale[:, None]).to(x.dtype), bias)
        x2 = x.reshape(-1, self.in_features)
        y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.weight_scale.to(x.dtype))
        y = y + bias if bias is not None else y
        return y.reshape(*x.shape[:-1], self.out_features)


class Int8WeightConv2d(nn.Module):
    """Exported weight-only ``nn.Conv2d`` (<= 8-bit per-channel weights, float activations): ``qweight`` int8 codes
    of the kernel's shape and ``weight_scale`` (out_channels,). With float activations an integer kernel does not
    apply, so the weights are dequantized per call; what this buys is storage, a quarter of fp32 in memory and on
    disk (W8A8 convolutions run ``w8a8.Int8Conv2d``)."""

    kernel = "int8 weight storage (dequantized per call + F.conv2d)"

    def __init__(self, shape: tuple[int, ...], bias: bool, conv: dict[str, Any]) -> None:
        super().__init__()
        self.conv = conv  # stride, padding, dilation, groups: F.conv2d's arguments
        self.register_buffer("qweight", torch.zeros(shape, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(shape[0]))
        self.register_buffer("bias", torch.zeros(shape[0]) if bias else None)

    @classmethod
    def from_codes(cls, codes: Tensor, scale: Tensor, bias: Tensor | None, layer: nn.Conv2d) -> Int8WeightConv2d:
        conv = {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation, "groups": layer.groups}
        new = cls(tuple(codes.shape), bias is not None, conv)
        new.qweight.copy_(codes)
        new.weight_scale.copy_(scale.float().expand(codes.shape[0]))
        if bias is not None:
            new.bias.copy_(bias.detach())
        return new

    def forward(self, x: Tensor) -> Tensor:
        weight = (self.qweight.float() * self.weight_scale[:, None, None, None]).to(x.dtype)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return F.conv2d(x, weight, bias, **self.conv)


class Int4Linear(nn.Module):
    """Exported W4A16 ``nn.Linear``: ``packed`` uint8 (N, ceil(K / 2)), ``weight_scale`` and ``weight_zero``
    (N, K / group), float and int8; the weight is ``(q - weight_zero) * weight_scale`` with q the signed stored codes
    (the zero is 0 for symmetric weights).

    A non-persistent ``kernel_weight`` holds tinygemm's own layout when the shape allows it; it is rebuilt after
    ``load_state_dict`` and when the layer moves to another device type.
    """

    def __init__(self, in_features: int, out_features: int, group_size: int, bias: bool) -> None:
        super().__init__()
        if in_features % group_size:
            raise ValueError(f"group size {group_size} does not divide in_features {in_features}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("packed", torch.zeros(out_features, (in_features + 1) // 2, dtype=torch.uint8))
        self.register_buffer("weight_scale", torch.ones(out_features, in_features // group_size))
        self.register_buffer("weight_zero", torch.zeros(out_features, in_features // group_size, dtype=torch.int8))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.register_buffer("kernel_weight", None, persistent=False)
        self.register_buffer("kernel_scales", None, persistent=False)
        self.layout_device = "cpu"  # the device type kernel_weight was laid out for (.to() moves it unchanged)
        self.register_load_state_dict_post_hook(lambda module, _: module.prepare())

    @classmethod
    def from_codes(cls, codes: Tensor, scale: Tensor, bias: Tensor | None, zero: Tensor | None = None) -> Int4Linear:
        """Build from codes (N, K) in [-8, 7], scales (N, groups) (groups 1: per channel) and, for asymmetric
        weights, integer zero points (N, groups) on the same signed grid (stored as int8)."""
        n, k = codes.shape
        scale = scale.reshape(n, -1)
        new = cls(k, n, k // scale.shape[1], bias is not None)
        new.packed.copy_(int4.pack(codes))
        new.weight_scale.copy_(scale)
        if zero is not None:
            if int(zero.min()) < -128 or int(zero.max()) > 127:
                raise ValueError("4-bit zero points must fit int8 (a weight range that excludes 0 by far)")
            new.weight_zero.copy_(zero.reshape(n, -1))
        if bias is not None:
            new.bias.copy_(bias.detach())
        new.prepare()
        return new

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        # checkpoints written before asymmetric 4-bit weights were exported have no zero points: all 0
        state_dict.setdefault(prefix + "weight_zero", torch.zeros_like(self.weight_zero))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def tinygemm(self) -> bool:
        return int4.tinygemm_ok(self.in_features, self.out_features, self.group_size)

    @property
    def kernel(self) -> str:
        if self.tinygemm:
            return f"int4 packed g{self.group_size}: tinygemm for bf16 activations, else dequant + F.linear"
        return f"int4 packed g{self.group_size}: dequant + F.linear (shape unsupported by tinygemm)"

    def prepare(self) -> None:
        """(Re)build tinygemm's weight layout for the device the packed weight is on."""
        if not self.tinygemm:
            return
        self.kernel_weight = int4.tinygemm_pack(self.packed, self.in_features, self.packed.device)
        self.layout_device = self.packed.device.type
        self.kernel_scales = int4.tinygemm_scales(self.weight_scale, self.weight_zero)

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.bfloat16 and self.kernel_weight is not None:
            if self.layout_device != x.device.type:  # moved with .to(): the layouts differ per device
                self.prepare()
            y = int4.tinygemm_mm(x, self.kernel_weight, self.kernel_scales, self.group_size, self.out_features)
            return y + self.bias.to(y.dtype) if self.bias is not None else y
        weight = int4.dequantize(self.packed, self.weight_scale, self.in_features, x.dtype, self.weight_zero)
        return F.linear(x, weight, self.bias.to(x.dtype) if self.bias is not None else None)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}"
