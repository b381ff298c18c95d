"""int8 x int8 -> int32 matmul (``torch._int_mm``) and the activation / output arithmetic around it.

An activation code ``q`` on an unsigned grid [0, 2^b - 1] with zero point ``z`` is stored shifted by
``offset = 2^(b-1)`` so it fits int8: ``c = q - offset``. With symmetric int8 weights ``w`` (scale ``s_w`` per
output channel) the dequantized product is exact in integers:

    y[m, n] = s_x * s_w[n] * (sum_k c[m, k] w[k, n] + (offset - z) * sum_k w[k, n]) + bias[n]

``(offset - z) * sum_k w[k, n]`` is the row-sum correction that makes the zero point exact. Signed (symmetric)
activation grids need no shift (offset 0, z 0).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from visq.quantizers.uniform import Uniform, UniformQuantizer, range_to_params


def act_offset(spec: Uniform) -> int:
    """Shift that moves the spec's code range into int8 (0 for signed grids)."""
    return 0 if spec.symmetric else 2 ** (spec.bits - 1)


def round_to_codes(y: Tensor, zero: int, signed: bool) -> Tensor:
    """``clamp(round(y) + zero)`` over the whole int8 (``signed``) or uint8 range, as a plain int8 / uint8 tensor.

    One fused pass: ``torch.quantize_per_tensor`` at scale 1 (``y * 1`` is exact, and it rounds half to even like
    ``torch.round``). Its integer storage is then aliased, not read back with ``int_repr``, which copies element
    by element (measured 0.7-1.0 ms for a 788 x 1536 tensor, against 0.2 ms for the quantization itself).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the quantized-tensor constructors warn that they are deprecated
        q = torch.quantize_per_tensor(y.float(), 1.0, zero, torch.qint8 if signed else torch.quint8)
    plain = torch.empty(0, dtype=torch.int8 if signed else torch.uint8, device=y.device)
    return plain.set_(q.untyped_storage(), q.storage_offset(), q.shape, q.stride())


def quantize_static(x: Tensor, scale: Tensor, zero: Tensor, spec: Uniform) -> Tensor:
    """int8 codes ``clamp(round(x / s) + z, qmin, qmax) - offset`` of a per-tensor static quantizer.

    The same operations as the fake quantizer (division, not a reciprocal multiply), so codes match it exactly.
    """
    qmin, qmax = spec.qrange
    offset = act_offset(spec)
    full_range = (qmin - offset, qmax - offset) == (-128, 127)
    # one zero point over the whole int8 range: one fused pass (eager CPU; inductor fuses the general form itself)
    if full_range and zero.numel() == 1 and not x.is_cuda and not torch.compiler.is_compiling():
        return round_to_codes(torch.div(x, scale), int(zero) - offset, signed=True)
    codes = torch.div(x, scale).round_().add_(zero - offset).clamp_(qmin - offset, qmax - offset)
    return codes.to(torch.int8)


def quantize_dynamic(x: Tensor, spec: Uniform) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token (last axis) dynamic codes, with their scale and zero point (both shaped (..., 1))."""
    lo = x.amin(dim=-1, keepdim=True)
    hi = x.amax(dim=-1, keepdim=True)
    scale, zero = range_to_params(lo, hi, spec)  # in x's dtype, as the fake quantizer computes them
    return quantize_static(x, scale, zero, spec), scale, zero


# |code_a * code_b| <= 128 * 128 = 2^14, so a sum of at most 2^10 such products stays inside [-2^24, 2^24], where
# fp32 holds every integer: an fp32 GEMM over K <= 1024 returns the exact integer sum in any summation order
FP32_EXACT_K = 1024

# read once at import: dynamo refuses to trace the CPU probes themselves
_NATIVE_INT8_GEMM = torch.cpu._is_vnni_supported() or torch.cpu._is_amx_tile_supported()


def native_int8_gemm() -> bool:
    """Whether ``torch._int_mm`` has a vectorized int8 kernel on this CPU (VNNI or AMX, both exact and fast).

    Without one torch runs a scalar loop: 451 ms for a 788 x 384 x 1152 product on an AVX2-only AMD EPYC, against
    9.7 ms for the fp32 GEMM of the same shape; there ``int_mm`` takes the exact fp32 route (``int_mm_fp32``).
    """
    return _NATIVE_INT8_GEMM


def int_mm_fp32(a: Tensor, b: Tensor, as_float: bool = False) -> Tensor:
    """Exact int8 (..., M, K) x (..., K, N) -> int32 as fp32 GEMMs over K-chunks of at most ``FP32_EXACT_K``: every
    partial sum is an integer fp32 represents exactly, so the int32 result equals ``torch._int_mm``'s.

    ``as_float``: return the product as fp32 when it is one chunk (K <= ``FP32_EXACT_K``: exact already, so the
    caller's epilogue skips the round trip through int32); longer products are summed in int32 either way.

    Exact under IEEE fp32 matmuls only: a reduced ``torch.set_float32_matmul_precision`` (bf16 / TF32 inner
    products) would round, so it is refused (checked in eager calls; dynamo cannot trace the query).
    """
    if not torch.compiler.is_compiling() and torch.get_float32_matmul_precision() != "highest":  # (untraceable)
        raise RuntimeError("visq's exact fp32 route for int8 GEMMs (this CPU has no VNNI int8 kernel) needs IEEE "
                           "fp32 matmuls; call torch.set_float32_matmul_precision('highest')")
    k = a.shape[-1]
    if as_float and k <= FP32_EXACT_K:
        return torch.matmul(a.float(), b.float())
    acc = None
    for start in range(0, k, FP32_EXACT_K):
        stop = min(start + FP32_EXACT_K, k)
        part = torch.matmul(a[..., start:stop].float(), b[..., start:stop, :].float()).to(torch.int32)
        acc = part if acc is None else acc.add_(part)
    return acc


def fp32_route(x: Tensor) -> bool:
    """Whether int8 GEMMs on ``x``'s device take the exact fp32 route (a CPU without VNNI / AMX)."""
    return not x.is_cuda and not native_int8_gemm()


def int_mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for int8 (M, K) x (K, N) -> int32.

    CPU takes any shape (``torch._int_mm`` with VNNI / AMX, the exact fp32 route without). CUDA's kernel needs
    M > 16 and K, N multiples of 8: smaller or ragged operands are zero-padded (exact: padded rows / columns
    contribute zeros) and the result sliced back.
    """
    if not a.is_cuda:
        return int_mm_fp32(a, b) if fp32_route(a) else torch._int_mm(a, b)
    m, k = a.shape
    n = b.shape[1]
    pad_m, pad_k, pad_n = max(0, 17 - m), -k % 8, -n % 8
    if pad_m or pad_k:
        a = F.pad(a, (0, pad_k, 0, pad_m))
    if pad_k or pad_n:
        b = F.pad(b, (0, pad_n, 0, pad_k))
    return torch._int_mm(a, b)[:m, :n]


def linear_static(codes: Tensor, d: int | Tensor, scale: Tensor, qweight: Tensor, weight_scale: Tensor,
                  weight_sum: Tensor, bias: Tensor | None, dtype: torch.dtype) -> Tensor:
    """``y = s_x * s_w * (codes @ w + d * colsum(w)) + bias`` for static per-tensor activation codes (``d``, the
    scale: from ``static_codes``), as ``dtype`` with the codes' leading shape.

    The zero-point correction is added to the int32 accumulator (exact: an integer), so the float epilogue is one
    rescale per element; under ``torch.compile`` inductor fuses it into one pass, with no float64 per element.
    """
    # the epilogue runs on the caller's shape: inductor fuses it with the next elementwise op (GELU, the residual
    # add, the next layer's quantization) into one loop only when both have the same original sizes
    if fp32_route(codes):  # fp32 when exact already (one K-chunk): the correction adds to it, rounded once
        acc = int_mm_fp32(codes, qweight, as_float=True)
    else:
        acc = int_mm(codes.reshape(-1, codes.shape[-1]), qweight).reshape(*codes.shape[:-1], qweight.shape[1])
    if isinstance(d, Tensor) or d != 0:
        acc = acc + d * weight_sum
    y = acc.to(torch.float32) * (scale.float() * weight_scale)
    if bias is not None:
        y = y + bias
    return y.to(dtype)


def linear_dynamic(
    x: Tensor, qweight: Tensor, weight_scale: Tensor, weight_sum: Tensor, bias: Tensor | None, spec: Uniform
) -> Tensor:
    """Per-token dynamic W8A8 linear: codes, scale and zero point per row of ``x``, then the corrected product."""
    x2 = x.reshape(-1, x.shape[-1])
    codes, scale, zero = quantize_dynamic(x2, spec)
    acc = int_mm(codes, qweight).float()
    if not spec.symmetric:
        acc.add_((act_offset(spec) - zero) * weight_sum)
    y = acc.mul_(scale * weight_scale)
    if bias is not None:
        y.add_(bias)
    return y.reshape(*x.shape[:-1], qweight.shape[1]).to(x.dtype)


def _int_bmm_loop(a3: Tensor, b3: Tensor) -> Tensor:
    out = torch.empty(a3.shape[0], a3.shape[1], b3.shape[2], dtype=torch.int32, device=a3.device)
    for x, y, o in zip(a3.unbind(), b3.unbind(), out.unbind()):  # one call for all views, not one per index
        if a3.is_cuda:  # int_mm pads small operands there
            o.copy_(int_mm(x, y))
        else:
            torch._int_mm(x, y, out=o)
    return out


@torch.library.custom_op("visq::int_bmm", mutates_args=())
def _int_bmm_op(a3: Tensor, b3: Tensor) -> Tensor:
    """The per-pair ``_int_mm`` loop as one opaque op for ``torch.compile``: traced per pair, the products were
    stacked into one buffer by extra copy kernels (and one wrapper call each)."""
    return _int_bmm_loop(a3, b3)


@_int_bmm_op.register_fake
def _(a3: Tensor, b3: Tensor) -> Tensor:
    return a3.new_empty(a3.shape[0], a3.shape[1], b3.shape[2], dtype=torch.int32)


def int_bmm(a: Tensor, b: Tensor, as_float: bool = False) -> Tensor:
    """int8 (..., M, K) x (..., K, N) -> int32 (..., M, N).

    torch has no batched int8 GEMM, so each (M, K) x (K, N) pair runs ``torch._int_mm`` (``b`` may be a transposed
    view: ``_int_mm`` reads either layout), writing into one output buffer; a CPU without VNNI takes the exact fp32
    route instead (``as_float``: see ``int_mm_fp32``).
    """
    if fp32_route(a):
        return int_mm_fp32(a, b, as_float)  # batched as it stands: one fp32 bmm per K-chunk
    batch = a.shape[:-2]
    a3, b3 = a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])
    out = _int_bmm_op(a3, b3) if torch.compiler.is_compiling() else _int_bmm_loop(a3, b3)
    return out.reshape(*batch, a.shape[-2], b.shape[-1])


def static_codes(x: Tensor, quantizer: UniformQuantizer) -> tuple[Tensor, int | Tensor, Tensor]:
    """int8 codes of ``x`` under a static per-tensor quantizer, the integer ``d = offset - zero`` that turns a code
    into ``x / scale`` (``x ~ scale * (code + d)``), and the 0-dim scale.

    ``d`` is a Python int in eager mode (a zero ``d`` skips its correction sum). Under ``torch.compile`` an
    asymmetric grid's ``d`` stays a 0-dim int32 tensor, so reading the zero point breaks no graph; symmetric grids
    have ``d = 0`` by construction."""
    scale, zero = quantizer._current()  # the calibrated (per-timestep) scale and zero point
    scale, zero = scale.reshape(()), zero.reshape(())
    codes, offset = quantize_static(x, scale, zero, quantizer.spec), act_offset(quantizer.spec)
    if not torch.compiler.is_compiling():
        return codes, offset - int(zero), scale
    return codes, 0 if quantizer.spec.symmetric else (offset - zero).round().to(torch.int32), scale


def matmul_static(a: Tensor, qa: UniformQuantizer, b: Tensor, qb: UniformQuantizer, alpha: float = 1.0,
                  softmax_next: bool = False) -> Tensor:
    """``alpha * (qa(a) @ qb(b))`` for two activations, (..., M, K) @ (..., K, N), computed in integers.

    With codes ``c`` and ``d = offset - zero`` per operand, ``sum_k (c_a + d_a)(c_b + d_b) = c_a c_b
    + d_b * rowsum(c_a) + d_a * colsum(c_b) + K d_a d_b``: one int32 GEMM plus two sums, exact, then one rescale
    (``alpha``, e.g. attention's softmax scale, folded into it: no extra pass over the product).

    ``softmax_next``: the caller only adds to the result and takes a softmax over its last axis (attention scores),
    which cancels every term constant along a row, so ``d_b * rowsum(c_a)`` and ``K d_a d_b`` are left out. The
    probabilities are the same; the returned scores are then shifted per row.
    """
    ca, da, sa = static_codes(a, qa)
    cb, db, sb = static_codes(b, qb)
    acc = int_bmm(ca, cb, as_float=True)  # int32, or fp32 where exact already: the sums add to either
    apply_a, apply_b = isinstance(da, Tensor) or da != 0, isinstance(db, Tensor) or db != 0
    if apply_b and not softmax_next:
        acc += db * ca.sum(dim=-1, dtype=torch.int32).unsqueeze(-1)
    if apply_a:
        acc += da * cb.sum(dim=-2, dtype=torch.int32).unsqueeze(-2)
    if apply_a and apply_b and not softmax_next:
        acc += da * db * a.shape[-1]
    dtype = a.dtype if a.dtype.is_floating_point else torch.float32
    return acc.to(dtype).mul_((sa * sb * alpha).to(dtype))
