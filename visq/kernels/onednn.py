"""oneDNN's fused W8A8 linear for CPU (``onednn::qlinear_pointwise``, the kernel inductor's x86 int8 path lowers to).

It takes uint8 activations with a per-tensor scale and zero point, symmetric per-channel int8 weights prepacked
into oneDNN's blocked layout, and returns fp32 with the bias added: zero-point compensation, requantization and
bias happen inside the GEMM, so eager inference pays one extra pass (quantizing the input) instead of five.
Activations are divided by their scale exactly as the fake quantizer divides (``x / s``, not a reciprocal
multiply, which flips a code near ties), then rounded, shifted and clamped by ``torch.quantize_per_tensor`` with
scale 1 in one fused pass, so the codes equal the fake quantizer's.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import Tensor

from visq.kernels import int8

log = logging.getLogger(__name__)


@functools.cache
def available() -> bool:
    """Whether this torch build has the oneDNN quantized linear and it computes exactly on this CPU.

    Without VNNI (AVX2-only x86) oneDNN's u8 x s8 GEMM sums pairs of products in saturating int16, so large codes
    come out wrong (measured on an AVX2 AMD EPYC: 255 x 127 over K = 64 off by 1e6); a small probe of the worst
    case and of random codes against exact integer arithmetic decides, and visq falls back to ``torch._int_mm``.
    """
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")):
        return False
    gen = torch.Generator().manual_seed(0)
    probes = [(torch.full((4, 64), 255, dtype=torch.uint8), torch.full((8, 64), 127, dtype=torch.int8)),
              (torch.randint(0, 256, (16, 96), dtype=torch.uint8, generator=gen),
               torch.randint(-127, 128, (24, 96), dtype=torch.int8, generator=gen))]
    for x_u8, weight in probes:
        try:
            got = linear(x_u8, 1.0, 0, PackedWeight(weight), torch.ones(weight.shape[0]), None)
        except RuntimeError:  # no primitive for this CPU
            return False
        if not torch.equal(got.double(), (x_u8.double() @ weight.double().t())):
            log.info("oneDNN's int8 linear is not exact on this CPU (%s; no VNNI saturates int16 sums): W8A8 "
                     "layers use torch._int_mm", torch.backends.cpu.get_cpu_capability())
            return False
    return True


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
    return int8.round_to_codes(torch.div(x, scale), zero, signed=False)


def out_dtype(dtype: torch.dtype) -> torch.dtype:
    """The output dtype oneDNN's int8 kernels write for activations of ``dtype``: bf16 stays bf16 (the GEMM
    accumulates in int32 and rescales in fp32 either way, so a bf16 model skips a cast pass), all else fp32."""
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


def linear(
    x_u8: Tensor, scale: float, zero: int, weight: PackedWeight, w_scale: Tensor, bias: Tensor | None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``(x_u8 - zero) * scale @ (w * w_scale).T + bias`` for 2-d ``x_u8``, written as ``dtype`` (fp32 or bf16).
    ``w_scale`` must be fp32 (oneDNN requires it; the exported layers keep theirs fp32 under ``model.to``)."""
    return torch.ops.onednn.qlinear_pointwise(
        x_u8, scale, zero, weight.packed, w_scale, weight.zero_points, bias, 1.0, 0, dtype, "none", [], ""
    )


@functools.cache
def conv_available() -> bool:
    """Whether oneDNN's int8 convolution exists and is exact on this CPU (the probe of ``available``, for
    ``qconv2d_pointwise``: the worst-case codes over a wide input, and a random grouped, strided case)."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qconv2d_pointwise")):
        return False
    gen = torch.Generator().manual_seed(0)
    probes = [(torch.full((1, 96, 5, 5), 255, dtype=torch.uint8), torch.full((8, 96, 3, 3), 127, dtype=torch.int8),
               dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)),
              (torch.randint(0, 256, (2, 16, 9, 9), dtype=torch.uint8, generator=gen),
               torch.randint(-127, 128, (24, 8, 3, 3), dtype=torch.int8, generator=gen),
               dict(stride=(2, 2), padding=(1, 1), dilation=(1, 1), groups=2))]
    for x_u8, weight, conv in probes:
        try:
            got = conv2d(x_u8, 1.0, 0, PackedConvWeight(weight, conv), torch.ones(weight.shape[0]), None)
        except RuntimeError:  # no primitive for this CPU
            return False
        if not torch.equal(got.double(), torch.nn.functional.conv2d(x_u8.double(), weight.double(), **conv)):
            log.info("oneDNN's int8 convolution is not exact on this CPU (%s): W8A8 convolutions run fake-quant",
                     torch.backends.cpu.get_cpu_capability())
            return False
    return True


class PackedConvWeight:
    """oneDNN's opaque prepacked int8 convolution weight, with the int8 weight and the convolution's geometry it
    came from (a deepcopy repacks)."""

    def __init__(self, weight: Tensor, conv: dict) -> None:
        self.source, self.conv = weight, conv
        self.packed = torch.ops.onednn.qconv_prepack(weight.contiguous(), torch.ones(weight.shape[0]), 1.0, 0,
                                                     list(conv["stride"]), list(conv["padding"]),
                                                     list(conv["dilation"]), conv["groups"], None)
        self.zero_points = torch.zeros(weight.shape[0], dtype=torch.long)

    def __deepcopy__(self, memo: dict) -> PackedConvWeight:
        return PackedConvWeight(self.source.clone(), dict(self.conv))


def conv2d(x_u8: Tensor, scale: float, zero: int, weight: PackedConvWeight, w_scale: Tensor,
           bias: Tensor | None, dtype: torch.dtype = torch.float32) -> Tensor:
    """``conv2d((x_u8 - zero) * scale, w * w_scale) + bias`` for NCHW ``x_u8``, written as ``dtype`` (fp32 or
    bf16; ``w_scale`` fp32 as in ``linear``). The input's scale and zero point are taken per call: the prepacked
    weight does not depend on them."""
    c = weight.conv
    return torch.ops.onednn.qconv2d_pointwise(
        x_u8, scale, zero, weight.packed, w_scale, weight.zero_points, bias, list(c["stride"]), list(c["padding"]),
        list(c["dilation"]), c["groups"], 1.0, 0, dtype, "none", [], "")
