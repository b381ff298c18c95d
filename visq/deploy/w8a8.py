"""W8A8 linear: int8 weights x int8 activations -> int32 (``torch._int_mm``), rescaled to float.

Activations use the layer's calibrated ``UniformQuantizer`` (kept as the ``input_quantizer`` child, so per-timestep
scales and ``visq.set_timestep`` work unchanged): static per tensor, or dynamic per token. Weights are stored
transposed, (in_features, out_features) int8, the layout ``torch._int_mm`` reads fastest on CPU.

Kernels: 8-bit static activations in eager mode on CPU run oneDNN's fused quantized linear
(``visq.kernels.onednn``: zero point, rescale and bias inside the GEMM). Everything else (per-token activations,
fewer bits, CUDA, and any forward traced by ``torch.compile``, where inductor fuses the elementwise work) runs
``torch._int_mm`` with the arithmetic of ``visq.kernels.int8``, including the exact zero-point correction. A CPU
without VNNI has no fast int8 GEMM in torch: there the same integer sums come from exact fp32 GEMMs on the codes
(``int8.int_mm_fp32``), near fp32's speed instead of a scalar loop 46x slower.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from visq.kernels import int8, onednn
from visq.quantizers.uniform import UniformQuantizer


def _keep_fp32(module: nn.Module, fn, recurse: bool, names: tuple[str, ...]) -> nn.Module:
    """``nn.Module._apply`` that moves the named per-channel scales to the new device but keeps them fp32: they
    are the kernels' own parameters (oneDNN requires fp32 weight scales), so ``model.to(torch.bfloat16)`` changes
    the activations' dtype without rounding the weights' scales to bf16."""
    kept = {n: module._buffers[n] for n in names}
    nn.Module._apply(module, fn, recurse)
    for n, value in kept.items():
        module._buffers[n] = value.to(module._buffers[n].device)
    return module


class Int8Linear(nn.Module):
    """Exported W8A8 ``nn.Linear``: buffers ``qweight`` (K, N) int8, ``weight_scale`` (N,), ``weight_sum`` (N,)
    int32 (column sums of ``qweight``, for the zero-point correction), ``bias``, and the ``input_quantizer``."""

    def __init__(self, in_features: int, out_features: int, bias: bool, input_quantizer: UniformQuantizer) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(in_features, out_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("weight_sum", torch.zeros(out_features, dtype=torch.int32))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.input_quantizer = input_quantizer
        spec = input_quantizer.spec
        self.use_onednn = onednn.available() and spec.bits == 8 and spec.granularity == "tensor"
        self.onednn_weight: onednn.PackedWeight | None = None
        self.register_load_state_dict_post_hook(lambda module, _: module.prepare())

    @classmethod
    def from_codes(cls, codes: Tensor, scale: Tensor, bias: Tensor | None, input_quantizer: UniformQuantizer):
        """Build from integer weight codes (N, K) and their per-channel (or single) scale."""
        n, k = codes.shape
        new = cls(k, n, bias is not None, input_quantizer)
        new.qweight.copy_(codes.t())
        new.weight_scale.copy_(scale.float().expand(n))
        new.weight_sum.copy_(codes.to(torch.int32).sum(dim=1))
        if bias is not None:
            new.bias.copy_(bias.detach())
        new.prepare()
        return new

    def _apply(self, fn, recurse: bool = True) -> nn.Module:
        return _keep_fp32(self, fn, recurse, ("weight_scale",))

    def prepare(self) -> None:
        """(Re)pack the weight for oneDNN (after loading or moving the int8 weight)."""
        cpu = self.qweight.device.type == "cpu"
        self.onednn_weight = onednn.PackedWeight(self.qweight.t()) if self.use_onednn and cpu else None

    @property
    def kernel(self) -> str:
        """What ``summary`` prints for this layer."""
        spec = self.input_quantizer.spec
        act = "dynamic per-token" if spec.granularity == "token" else "static per-tensor"
        if self.use_onednn:
            return f"int8 oneDNN qlinear W8A8 ({act} act; torch._int_mm when compiled or on CUDA)"
        zp = "symmetric" if spec.symmetric else "zero point via row-sum correction"
        if int8.fp32_route(self.qweight):
            return f"int8 W8A8, exact fp32 GEMM on the codes ({act} act, {zp}; no VNNI int8 kernel on this CPU)"
        return f"int8 _int_mm W8A8 ({act} act, {zp})"

    def forward(self, x: Tensor) -> Tensor:
        spec = self.input_quantizer.spec
        if spec.granularity == "token":
            return int8.linear_dynamic(x, self.qweight, self.weight_scale, self.weight_sum.float(), self.bias, spec)
        if self.onednn_weight is not None and not x.is_cuda and not torch.compiler.is_compiling():
            scale, zero = self.input_quantizer._current()  # the calibrated (per-timestep) scale and zero point
            u8_zero = int(zero) + (128 if spec.symmetric else 0)  # a signed grid shifted onto uint8
            if 0 <= u8_zero <= 255:
                return self._onednn_forward(x, scale.reshape(()), u8_zero)
        codes, d, scale = int8.static_codes(x, self.input_quantizer)
        return int8.linear_static(codes, d, scale, self.qweight, self.weight_scale, self.weight_sum, self.bias,
                                  x.dtype)

    def _onednn_forward(self, x: Tensor, scale: Tensor, zero: int) -> Tensor:
        x2 = x.reshape(-1, self.in_features)
        y = onednn.linear(onednn.quantize_u8(x2, scale, zero), float(scale), zero, self.onednn_weight,
                          self.weight_scale, self.bias, onednn.out_dtype(x.dtype))
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel!r}"


class Int8Conv2d(nn.Module):
    """Exported W8A8 ``nn.Conv2d`` on oneDNN's int8 convolution (``onednn::qconv2d_pointwise``): uint8 codes of the
    input from the layer's static per-tensor 8-bit ``input_quantizer`` (per-timestep scales included), symmetric
    per-channel int8 weights prepacked, fp32 out with the bias added inside. Buffers ``qweight`` (int8, the
    kernel's shape), ``weight_scale`` (out_channels,), ``bias``."""

    kernel = "int8 oneDNN qconv2d W8A8 (static per-tensor act)"

    def __init__(self, shape: tuple[int, ...], bias: bool, conv: dict, input_quantizer: UniformQuantizer) -> None:
        super().__init__()
        self.conv = conv  # stride, padding, dilation, groups
        self.register_buffer("qweight", torch.zeros(shape, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(shape[0]))
        self.register_buffer("bias", torch.zeros(shape[0]) if bias else None)
        self.input_quantizer = input_quantizer
        self.packed: onednn.PackedConvWeight | None = None
        self.register_load_state_dict_post_hook(lambda module, _: module.prepare())

    @classmethod
    def from_codes(cls, codes: Tensor, scale: Tensor, bias: Tensor | None, layer: nn.Conv2d) -> Int8Conv2d:
        conv = {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation, "groups": layer.groups}
        new = cls(tuple(codes.shape), bias is not None, conv, layer.input_quantizer)
        new.qweight.copy_(codes)
        new.weight_scale.copy_(scale.float().expand(codes.shape[0]))
        if bias is not None:
            new.bias.copy_(bias.detach())
        new.prepare()
        return new

    def _apply(self, fn, recurse: bool = True) -> nn.Module:
        return _keep_fp32(self, fn, recurse, ("weight_scale",))

    def prepare(self) -> None:
        """(Re)pack the weight for oneDNN (after loading the int8 weight)."""
        self.packed = onednn.PackedConvWeight(self.qweight, self.conv)

    def forward(self, x: Tensor) -> Tensor:
        spec = self.input_quantizer.spec
        scale, zero = self.input_quantizer._current()
        scale = scale.reshape(())
        u8_zero = int(zero.reshape(())) + (128 if spec.symmetric else 0)  # a signed grid shifted onto uint8
        codes = onednn.quantize_u8(x, scale, u8_zero)
        return onednn.conv2d(codes, float(scale), u8_zero, self.packed, self.weight_scale, self.bias,
                             onednn.out_dtype(x.dtype)).to(x.dtype)
