"""Which exported layer class (if any) runs each fake-quant layer, and why the others stay fake-quant.

A layer is exported only when its integer form reproduces the fake-quant weight exactly (checked, not assumed):
- ``QuantLinear`` with per-channel / per-tensor uniform weights (<= 8 bits; asymmetric ones when their codes minus
  the zero point fit int8, e.g. <= 7 bits) and a uniform input quantizer (<= 8 bits, static per tensor or dynamic
  per token) -> ``Int8Linear``;
- ``QuantLinear`` without an input quantizer: <= 4-bit per-channel / per-group weights (symmetric or asymmetric)
  -> ``Int4Linear``; 5-8 bits per channel -> ``Int8WeightLinear``;
- ``QuantConv2d`` with an 8-bit static per-tensor uniform input quantizer and <= 8-bit per-channel / per-tensor
  weights -> ``Int8Conv2d`` (oneDNN's int8 convolution, where a probe finds it exact on this CPU);
- ``QuantConv2d`` without an input quantizer, <= 8-bit per-channel / per-tensor weights -> ``Int8WeightConv2d``
  (int8 storage, dequantized per call);
- everything else (other activation grids on convolutions, log2 / twin / split quantizers) keeps its fake-quant
  forward.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from visq.deploy.w8a8 import Int8Conv2d, Int8Linear
from visq.deploy.weight_only import Int4Linear, Int8WeightConv2d, Int8WeightLinear
from visq.kernels import onednn
from visq.modules import QuantConv2d, QuantLinear
from visq.quantizers.uniform import UniformQuantizer

KINDS = ("w8a8", "int8-weight", "int4-weight", "int8-weight-conv", "w8a8-conv")


def weight_codes(layer: QuantLinear | QuantConv2d) -> tuple[Tensor, Tensor, Tensor] | str:
    """(codes (N, K), scale (N, G), zero (N, G)) of a uniform weight quantizer, or why there are none; K is the
    number of inputs per output channel (a convolution's kernel flattened per output channel).

    ``codes`` lie on the spec's grid (signed for symmetric specs, unsigned for asymmetric ones) and the weight is
    ``(codes - zero) * scale`` per group of ``K / G`` inputs (G = 1: per channel or per tensor); ``zero`` is 0 for
    symmetric specs. The codes are checked to reproduce the fake-quant weight bit for bit.
    """
    wq = layer.weight_quantizer
    if type(wq) is not UniformQuantizer:
        return f"weight quantizer {type(wq).__name__} has no integer kernel"
    spec = wq.spec
    if spec.bits > 8 or spec.granularity not in ("channel", "tensor", "group"):
        return f"weight spec {spec.short()} has no integer kernel (needs <= 8 bits, per channel / group / tensor)"
    qmin, qmax = spec.qrange
    n = layer.weight.shape[0]
    with torch.no_grad():
        w = layer.weight.detach().float()
        rows = w.reshape(-1, spec.group_size) if spec.granularity == "group" else w.reshape(n, -1)
        shape = (-1, 1) if spec.granularity != "tensor" else (1, 1)
        scale, zero = wq.scale.float().reshape(shape), wq.zero_point.float().reshape(shape)
        codes = torch.clamp(torch.round(rows / scale) + zero, qmin, qmax)
        if not torch.equal(((codes - zero) * scale).reshape(w.shape).to(layer.weight.dtype),
                           layer.quantized_weight()):
            return "integer weight codes do not reproduce the fake-quant weight"
    scale, zero = (t.expand(n, 1) if spec.granularity == "tensor" else t.reshape(n, -1) for t in (scale, zero))
    return codes.reshape(n, -1).to(torch.int16), scale.contiguous(), zero.contiguous()


def _int8_codes(codes: Tensor, zero: Tensor) -> Tensor | str:
    """``codes - zero`` as int8 (one scale per row: the int8 kernels take no zero point for weights)."""
    centred = codes - zero.to(codes.dtype)
    if int(centred.min()) < -128 or int(centred.max()) > 127:
        return "weight codes minus their zero point do not fit int8 (asymmetric 8-bit weights): runs fake-quant"
    return centred.to(torch.int8)


def choose(layer: nn.Module) -> tuple[str | None, str]:
    """(kind, reason): the export kind for ``layer`` (None: stays fake-quant) and the reason ``summary`` shows."""
    if isinstance(layer, QuantConv2d):
        return _choose_conv(layer)
    if not isinstance(layer, QuantLinear):
        return None, f"{type(layer).__name__} has no exported form"
    if layer.weight_quantizer is None:
        return None, "weights float (activation-only quantization): runs fake-quant"
    spec = layer.weight_quantizer.spec
    iq = layer.input_quantizer
    if iq is None:
        if spec.bits <= 4:
            return "int4-weight", ""
        if spec.granularity == "group":
            return None, "int8 weight-only kernel has one scale per channel, not per group: runs fake-quant"
        return "int8-weight", ""
    if type(iq) is not UniformQuantizer:
        return None, f"input quantizer {type(iq).__name__} has no int8 kernel: runs fake-quant"
    aspec = iq.spec
    if aspec.bits > 8 or aspec.granularity not in ("tensor", "token"):
        return None, f"activation spec {aspec.short()} has no int8 kernel (needs <= 8 bit, tensor or token)"
    if aspec.granularity == "tensor" and getattr(aspec, "dynamic", False):
        return None, "dynamic per-tensor activations have no exported kernel (static or per-token do): runs fake-quant"
    if spec.granularity == "group":
        return None, "group-wise weights with quantized activations have no int8 kernel: runs fake-quant"
    return "w8a8", ""


def _choose_conv(layer: QuantConv2d) -> tuple[str | None, str]:
    if layer.weight_quantizer is None:
        return None, "weights float (activation-only quantization): runs fake-quant"
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        return None, f"convolution with padding {layer.padding!r}, mode {layer.padding_mode!r}: runs fake-quant"
    if type(layer.weight_quantizer) is not UniformQuantizer:
        return None, f"weight quantizer {type(layer.weight_quantizer).__name__} has no integer kernel: runs fake-quant"
    if layer.weight_quantizer.spec.granularity == "group":
        return None, "group-wise convolution weights: runs fake-quant"
    iq = layer.input_quantizer
    if iq is None:
        return "int8-weight-conv", ""
    if type(iq) is not UniformQuantizer:
        return None, f"input quantizer {type(iq).__name__} has no int8 kernel: runs fake-quant"
    aspec = iq.spec
    if aspec.bits != 8 or aspec.granularity != "tensor" or aspec.dynamic:
        return None, f"activation spec {aspec.short()}: the int8 convolution takes static per-tensor 8-bit inputs"
    if not onednn.conv_available():
        return None, "no exact int8 convolution kernel on this CPU (oneDNN's needs VNNI): runs fake-quant"
    return "w8a8-conv", ""


def build(layer: QuantLinear | QuantConv2d, kind: str) -> nn.Module | str:
    """The exported module of ``kind`` for ``layer``, or why it cannot be built."""
    found = weight_codes(layer)
    if isinstance(found, str):
        return found
    codes, scale, zero = found
    bias = layer.bias
    if kind == "int4-weight":
        # the packer stores signed codes in [-8, 7]: an unsigned grid [0, 15] shifts there, its zero point with it
        shift = 0 if layer.weight_quantizer.spec.symmetric else 8
        zero = zero - shift
        if float(zero.min()) < -128 or float(zero.max()) > 127:
            return "4-bit zero points do not fit int8 (a free weight range far from 0): runs fake-quant"
        return Int4Linear.from_codes(codes - shift, scale, bias, zero=zero.to(torch.int8))
    centred = _int8_codes(codes, zero)
    if isinstance(centred, str):
        return centred
    if kind == "w8a8":
        return Int8Linear.from_codes(centred, scale.reshape(-1), bias, layer.input_quantizer)
    if kind == "int8-weight":
        return Int8WeightLinear.from_codes(centred, scale.reshape(-1), bias)
    if kind == "int8-weight-conv":
        return Int8WeightConv2d.from_codes(centred.reshape(layer.weight.shape), scale.reshape(-1), bias, layer)
    if kind == "w8a8-conv":
        return Int8Conv2d.from_codes(centred.reshape(layer.weight.shape), scale.reshape(-1), bias, layer)
    raise ValueError(f"unknown export kind {kind!r}; known: {KINDS}")
