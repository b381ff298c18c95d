"""Quantized attention at the one call most attention code makes: ``torch.nn.functional.scaled_dot_product_attention``.

``QuantizedSDPA`` is a ``TorchFunctionMode``: while it is active, every SDPA call goes through ``quantized_sdpa``,
which quantizes q, k and v (laid out (..., heads, tokens, head_dim), after any projection, norm, RoPE or pooling the
caller applied) and the softmax probabilities, and otherwise computes what torch's SDPA computes (masks, causal,
scale, grouped-query heads, dropout). The hosts enter it around an attention module's own code (a diffusers
processor, a timm attention's fused path), so the module needs no re-implementation. All other calls pass through.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from visq.kernels import int8

_SDPA_CALLS = ("scaled_dot_product_attention", "dispatch_attention_fn")  # the latter: diffusers' dispatcher


@functools.cache
def calls_sdpa(fn: Callable) -> bool:
    """Whether ``fn`` calls SDPA itself (read from its source: the attention code of diffusers and timm does)."""
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        return False
    return any(name in source for name in _SDPA_CALLS)


def quantized_sdpa(
    slots: nn.Module, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
    dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False,
) -> Tensor:
    """``F.scaled_dot_product_attention`` with q / k / v quantized before the product and the probabilities after
    the softmax (the slots of ``slots`` that are None are skipped). Same arguments and semantics as torch's."""
    exported = getattr(slots, "int8_attention", False)  # visq.export: both products as int8 GEMMs on the codes
    q, k, v = (query, key, value) if exported else (
        _slot(slots, f"{n}_quantizer", t) for n, t in (("q", query), ("k", key), ("v", value)))
    if enable_gqa and k.shape[-3] != q.shape[-3]:  # grouped-query attention: each kv head serves several q heads
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)
    scale = scale if scale is not None else 1 / math.sqrt(q.shape[-1])
    if exported:
        scores = int8.matmul_static(q, slots.q_quantizer, k.transpose(-2, -1), slots.k_quantizer, scale,
                                     softmax_next=True)  # only masks are added before the softmax
    else:
        scores = (q @ k.transpose(-2, -1)) * scale
    if is_causal:
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    if exported:
        return int8.matmul_static(scores.softmax(dim=-1), slots.probs_quantizer, v, slots.v_quantizer)
    probs = _slot(slots, "probs_quantizer", scores.softmax(dim=-1))
    if dropout_p > 0:
        probs = F.dropout(probs, dropout_p)
    return probs @ v


def _slot(module: nn.Module, name: str, x: Tensor) -> Tensor:
    quantizer = getattr(module, name, None)
    return quantizer(x) if quantizer is not None else x


class QuantizedSDPA(TorchFunctionMode):
    """Routes every SDPA call made while it is active through ``quantized_sdpa``; all other calls pass through."""

    def __init__(self, slots: nn.Module) -> None:
        super().__init__()
        self.slots = slots

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func is F.scaled_dot_product_attention:
            return quantized_sdpa(self.slots, *args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))
