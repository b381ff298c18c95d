"""Packed 4-bit weights: two signed codes a byte, group scales, and the matmuls that read them.

Storage (what ``visq.save`` writes): ``packed`` uint8 (N, ceil(K / 2)) holding ``u = q + 8`` (q in [-8, 7]),
element 2j in the low nibble and 2j + 1 in the high one; ``scale`` (N, K / group) float and ``zero`` (N, K / group)
int8 (0 for symmetric weights; an asymmetric grid [0, 15] with zero point z is stored as q = u - 8 with zero
z - 8). The dequantized weight is ``(q - zero) * scale``, exactly what the fake quantizer produces.

Kernels:
- ``tinygemm-cpu``: ``aten._weight_int4pack_mm_for_cpu`` for bf16 activations on CPU (scales rounded to bf16,
  so it is close to, not bit-equal with, the fake-quant forward).
- ``tinygemm-cuda``: ``aten._weight_int4pack_mm`` for bf16 activations on CUDA (same caveat).
- ``dequant``: unpack, scale, ``F.linear`` in the activation dtype; bit-equal to the fake-quant forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

TINYGEMM_GROUPS = (32, 64, 128, 256)


def pack(q: Tensor) -> Tensor:
    """Pack signed 4-bit codes (N, K) (any integer dtype, values in [-8, 7]) into uint8 (N, ceil(K / 2))."""
    if q.numel() and (int(q.min()) < -8 or int(q.max()) > 7):
        raise ValueError("4-bit codes must lie in [-8, 7]")
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    if u.shape[1] % 2:
        u = F.pad(u, (0, 1), value=8)  # a zero code pads odd K
    return u[:, 0::2] | (u[:, 1::2] << 4)


def unpack(packed: Tensor, k: int) -> Tensor:
    """Inverse of ``pack``: int8 codes (N, k)."""
    low = (packed & 0x0F).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack((low, high), dim=-1).reshape(packed.shape[0], -1)[:, :k]


def dequantize(packed: Tensor, scale: Tensor, k: int, dtype: torch.dtype, zero: Tensor | None = None) -> Tensor:
    """The float weight (N, k): codes minus their group's zero point times its scale, in fp32 as the fake
    quantizer computes it."""
    q = unpack(packed, k).float()
    groups = scale.shape[1]
    q = q.reshape(q.shape[0], groups, k // groups)
    if zero is not None:
        q = q - zero.float()[..., None]
    w = q * scale.float()[..., None]
    return w.reshape(q.shape[0], k).to(dtype)


def tinygemm_ok(k: int, n: int, group: int) -> bool:
    """Whether the tinygemm int4 kernels accept this shape and group size."""
    return group in TINYGEMM_GROUPS and k % group == 0 and k % 16 == 0 and n % 8 == 0


def tinygemm_pack(packed: Tensor, k: int, device: torch.device) -> Tensor:
    """The kernel's own layout of the weight, for ``device`` (it differs between CPU and CUDA)."""
    u = unpack(packed, k).to(torch.int32) + 8
    if device.type == "cuda":
        # the CUDA converter reads element 2j from the high nibble (the reverse of visq's storage order)
        nibbles = (u[:, 0::2] << 4 | u[:, 1::2]).to(torch.uint8).to(device)
        return torch.ops.aten._convert_weight_to_int4pack(nibbles, 8)
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(u.to(device), 1)


def tinygemm_scales(scale: Tensor, zero: Tensor | None = None) -> Tensor:
    """Scales and offsets as tinygemm reads them: (K / group, N, 2) bf16. tinygemm computes
    ``(u - 8) * scale + offset`` from the stored nibble u = q + 8, so visq's ``(q - zero) * scale`` needs
    ``offset = -zero * scale``."""
    offset = torch.zeros_like(scale) if zero is None else -zero.float() * scale.float()
    return torch.stack((scale.t(), offset.t()), dim=-1).to(torch.bfloat16).contiguous()


def tinygemm_mm(x: Tensor, kernel_weight: Tensor, scales_zeros: Tensor, group: int, n: int) -> Tensor:
    """bf16 ``x`` (..., K) times the packed weight: (..., N) bf16."""
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    if x2.is_cuda:
        y = torch.ops.aten._weight_int4pack_mm(x2, kernel_weight, group, scales_zeros)
    else:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, kernel_weight, group, scales_zeros)
    return y.reshape(*x.shape[:-1], n)
