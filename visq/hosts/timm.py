"""timm host: ViT / DeiT (incl. distilled) / Swin / BEiT. Attention gets explicit q, k, v, probs quantizer slots.

``QuantAttention`` and ``QuantWindowAttention`` subclass timm's classes and spell the attention out (timm's fused
SDPA path never materialises the probabilities, so it would bypass the slots: research/vit_methods.md 0).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.layers import Attention
from timm.layers.attention import maybe_add_mask, resolve_self_attn_mask
from timm.models.beit import Attention as BeitAttention
from timm.models.swin_transformer import WindowAttention
from torch import Tensor, nn

from visq.hosts.base import Host
from visq.modules import rebind
from visq.quantizers import SiteShape
from visq.sites import ADAPTERS, ATTENTION_SLOTS, AttentionAdapter, FloatRule


def _slot(module: nn.Module, name: str, x: Tensor) -> Tensor:
    quantizer = getattr(module, name, None)
    return quantizer(x) if quantizer is not None else x


def quantized_attention(
    module: nn.Module, q: Tensor, k: Tensor, v: Tensor, bias: Callable[[Tensor], Tensor]
) -> Tensor:
    """softmax(Q(q) Q(k)^T * scale + bias) quantized, times Q(v); q, k, v are (B, heads, N, head_dim)."""
    q, k = _slot(module, "q_quantizer", q), _slot(module, "k_quantizer", k)
    attn = bias((q @ k.transpose(-2, -1)) * module.scale)
    probs = _slot(module, "probs_quantizer", attn.softmax(dim=-1))
    return module.attn_drop(probs) @ _slot(module, "v_quantizer", v)


class QuantAttention(Attention):
    """timm ``Attention`` with quantizer slots (sites ``<path>.{q,k,v,probs}_quantizer``)."""

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)

        def bias(attn: Tensor) -> Tensor:
            return maybe_add_mask(attn, resolve_self_attn_mask(N, attn, attn_mask, is_causal))

        x = quantized_attention(self, q, k, v, bias).transpose(1, 2).reshape(B, N, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


class QuantWindowAttention(WindowAttention):
    """Swin ``WindowAttention`` with quantizer slots; relative position bias and shift mask as in timm."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        B_, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)

        def bias(attn: Tensor) -> Tensor:
            attn = attn + self._get_rel_pos_bias()
            if mask is None:
                return attn
            num_win = mask.shape[0]
            attn = attn.view(-1, num_win, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            return attn.view(-1, self.num_heads, N, N)

        x = quantized_attention(self, q, k, v, bias).transpose(1, 2).reshape(B_, N, -1)
        return self.proj_drop(self.proj(x))


class QuantBeitAttention(BeitAttention):
    """BEiT ``Attention`` with quantizer slots. timm's forward passes ``self.qkv.weight`` to ``F.linear`` with the
    concatenated q / v biases, which would bypass the quantized ``qkv`` layer; here ``qkv`` runs as a layer (input and
    weight quantized) and the bias is added after it, as timm's ``qkv_bias_separate`` path does."""

    def forward(self, x: Tensor, shared_rel_pos_bias: Tensor | None = None) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x)
        if self.q_bias is not None:
            qkv = qkv + torch.cat((self.q_bias, self.k_bias, self.v_bias))
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)

        def bias(attn: Tensor) -> Tensor:
            if self.relative_position_bias_table is not None:
                attn = attn + self._get_rel_pos_bias()
            return attn + shared_rel_pos_bias if shared_rel_pos_bias is not None else attn

        x = quantized_attention(self, q, k, v, bias).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class _TimmAdapter(AttentionAdapter):
    def __init__(self, float_cls: type[nn.Module], quant_cls: type[nn.Module]) -> None:
        self.float_cls, self.quant_cls = float_cls, quant_cls

    def matches(self, module: nn.Module) -> bool:
        return type(module) is self.float_cls

    def shapes(self, module: nn.Module) -> dict[str, SiteShape]:
        head_dim = module.qkv.out_features // 3 // module.num_heads
        shapes = {s: SiteShape("activation", head_dim, -1) for s in ATTENTION_SLOTS}
        shapes["probs_quantizer"] = SiteShape("activation", 1, -1)  # key count varies: per-tensor only
        return shapes

    def install(self, model: nn.Module, path: str, quantizers: dict[str, nn.Module | None]) -> Callable[[], None]:
        old = model.get_submodule(path)
        new = rebind(self.quant_cls, old)
        for name, quantizer in quantizers.items():
            new.register_module(name, quantizer)
        model.set_submodule(path, new)
        return lambda: model.set_submodule(path, old)


ADAPTERS.extend([_TimmAdapter(Attention, QuantAttention), _TimmAdapter(WindowAttention, QuantWindowAttention),
                 _TimmAdapter(BeitAttention, QuantBeitAttention)])


class TimmHost(Host):
    """timm models: the classifier itself is the target; patch embedding and head stay float by default."""

    name = "timm"
    family = "vit"

    def float_rules(self, model: nn.Module) -> list[FloatRule]:
        return [
            FloatRule("patch_embed*", "patch embedding (first layer) is kept float, as most ViT PTQ baselines do"),
            FloatRule("head*", "classifier head (last layer) is kept float"),
        ]

    def describe(self, obj: nn.Module) -> dict[str, object]:
        cfg = getattr(obj, "pretrained_cfg", {}) or {}
        return {"host": self.name, "class": type(obj).__name__, "architecture": cfg.get("architecture")}


