"""timm host: ViT / DeiT (incl. distilled) / Swin / SwinV2 / BEiT / EVA / CaiT / XCiT / EfficientFormer (V2) / LeViT /
MViTv2 / Hiera and any attention with timm's fused SDPA path. Attention gets explicit q, k, v, probs quantizer slots.

The ``Quant*Attention`` classes subclass timm's and spell the attention out (timm's fused SDPA path never
materialises the probabilities, so it would bypass the slots: research/vit_methods.md 0).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from timm.layers import Attention, apply_rot_embed_cat
from timm.layers.attention import maybe_add_mask, resolve_self_attn_mask
from timm.models.beit import Attention as BeitAttention
from timm.models.cait import ClassAttn, TalkingHeadAttn
from timm.models.efficientformer import Attention as EfficientFormerAttention
from timm.models.efficientformer_v2 import Attention2d, Attention2dDownsample
from timm.models.eva import EvaAttention
from timm.models.levit import Attention as LevitAttention
from timm.models.levit import AttentionDownsample as LevitAttentionDownsample
from timm.models.mvitv2 import MultiScaleAttention, cal_rel_pos_type, reshape_post_pool, reshape_pre_pool
from timm.models.swin_transformer import WindowAttention
from timm.models.swin_transformer_v2 import WindowAttention as WindowAttentionV2
from timm.models.xcit import XCA
from torch import Tensor, nn

from visq.hosts.base import Host
from visq.hosts.sdpa import QuantizedSDPA, calls_sdpa
from visq.kernels import int8
from visq.modules import rebind
from visq.quantizers import SiteShape
from visq.sites import ADAPTERS, ATTENTION_SLOTS, AttentionAdapter, FloatRule


def _slot(module: nn.Module, name: str, x: Tensor) -> Tensor:
    quantizer = getattr(module, name, None)
    return quantizer(x) if quantizer is not None else x


def quantized_attention(
    module: nn.Module, q: Tensor, k: Tensor, v: Tensor, bias: Callable[[Tensor], Tensor],
    scale: Tensor | float | None = None,
) -> Tensor:
    """softmax(Q(q) Q(k)^T * scale + bias) quantized, times Q(v); q, k, v are (B, heads, N, head_dim); ``scale``
    defaults to ``module.scale``. After ``visq.export`` (``module.int8_attention``) both products run as int8
    GEMMs on the quantizers' codes (inference: no attention dropout)."""
    scale = module.scale if scale is None else scale
    if getattr(module, "int8_attention", False):
        # every host's bias adds (masks, position biases), so the softmax still cancels per-row terms
        attn = bias(int8.matmul_static(q, module.q_quantizer, k.transpose(-2, -1), module.k_quantizer, scale,
                                       softmax_next=True))
        return int8.matmul_static(attn.softmax(dim=-1), module.probs_quantizer, v, module.v_quantizer)
    q, k = _slot(module, "q_quantizer", q), _slot(module, "k_quantizer", k)
    attn = bias((q @ k.transpose(-2, -1)) * scale)
    probs = _slot(module, "probs_quantizer", attn.softmax(dim=-1))
    drop = getattr(module, "attn_drop", None)  # EfficientFormer's attention has no dropout
    return (drop(probs) if drop is not None else probs) @ _slot(module, "v_quantizer", v)


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


def _qkv(module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v (B, heads, N, head_dim) of BEiT / SwinV2 / EVA attention. timm passes ``self.qkv.weight`` to
    ``F.linear`` with the concatenated q / v biases, which would bypass the quantized ``qkv`` layer; here ``qkv``
    runs as a layer (input and weight quantized) and the bias is added after it, as timm's ``qkv_bias_separate``
    path does. EVA without a fused ``qkv`` runs its three projections."""
    B, N, _ = x.shape
    if getattr(module, "qkv", None) is None:
        return tuple(proj(x).reshape(B, N, module.num_heads, -1).transpose(1, 2)
                     for proj in (module.q_proj, module.k_proj, module.v_proj))
    qkv = module.qkv(x)
    if module.q_bias is not None:
        qkv = qkv + torch.cat((module.q_bias, module.k_bias, module.v_bias))
    return qkv.reshape(B, N, 3, module.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)


class QuantBeitAttention(BeitAttention):
    """BEiT ``Attention`` with quantizer slots (``_qkv`` says how its q / v biases are applied)."""

    def forward(self, x: Tensor, shared_rel_pos_bias: Tensor | None = None) -> Tensor:
        B, N, C = x.shape
        q, k, v = _qkv(self, x)

        def bias(attn: Tensor) -> Tensor:
            if self.relative_position_bias_table is not None:
                attn = attn + self._get_rel_pos_bias()
            return attn + shared_rel_pos_bias if shared_rel_pos_bias is not None else attn

        x = quantized_attention(self, q, k, v, bias).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class QuantWindowAttentionV2(WindowAttentionV2):
    """SwinV2 ``WindowAttention`` with quantizer slots: cosine attention, so the q / k slots quantize the normalised
    q and k that enter the product; log-spaced continuous position bias and shift mask as in timm."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        B_, N, C = x.shape
        q, k, v = _qkv(self, x)
        logit_scale = torch.clamp(self.logit_scale, max=math.log(1.0 / 0.01)).exp()

        def bias(attn: Tensor) -> Tensor:
            table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
            area = self.window_size[0] * self.window_size[1]
            rel = table[self.relative_position_index.view(-1)].view(area, area, -1).permute(2, 0, 1).contiguous()
            attn = attn + 16 * torch.sigmoid(rel).unsqueeze(0)
            if mask is None:
                return attn
            num_win = mask.shape[0]
            attn = attn.view(-1, num_win, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            return attn.view(-1, self.num_heads, N, N)

        x = quantized_attention(self, F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, bias, scale=logit_scale)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B_, N, C)))


class QuantEvaAttention(EvaAttention):
    """EVA ``EvaAttention`` with quantizer slots: q / k norms and rotary embeddings come before the q / k slots."""

    def forward(self, x: Tensor, rope: Tensor | None = None, attn_mask: Tensor | None = None,
                is_causal: bool = False) -> Tensor:
        B, N, C = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = _qkv(self, x)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            npt, half = self.num_prefix_tokens, getattr(self, "rotate_half", False)
            q = torch.cat([q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope, half=half)], dim=2).type_as(v)
            k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], dim=2).type_as(v)

        def bias(attn: Tensor) -> Tensor:
            return maybe_add_mask(attn, resolve_self_attn_mask(N, attn, attn_mask, is_causal=is_causal))

        x = self.norm(quantized_attention(self, q, k, v, bias).transpose(1, 2).reshape(B, N, C))
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


def _heads(x: Tensor, heads: int) -> Tensor:
    """(B, N, C) -> (B, heads, N, C / heads)."""
    B, N, C = x.shape
    return x.reshape(B, N, heads, C // heads).transpose(1, 2)


def _no_bias(attn: Tensor) -> Tensor:
    return attn


class QuantClassAttn(ClassAttn):
    """CaiT ``ClassAttn`` with quantizer slots: the class token's query against every token."""

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        q = _heads(self.q(x[:, :1]), self.num_heads)
        k, v = _heads(self.k(x), self.num_heads), _heads(self.v(x), self.num_heads)
        out = quantized_attention(self, q, k, v, _no_bias).transpose(1, 2).reshape(B, 1, C)
        return self.proj_drop(self.proj(out))


class QuantTalkingHeadAttn(TalkingHeadAttn):
    """CaiT ``TalkingHeadAttn`` with quantizer slots. Heads are mixed before and after the softmax, so the probability
    slot quantizes the mixed weights that multiply v (what the product sees)."""

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k = _slot(self, "q_quantizer", q * self.scale), _slot(self, "k_quantizer", k)
        attn = self.proj_l((q @ k.transpose(-2, -1)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2).softmax(dim=-1)
        attn = self.proj_w(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        probs = _slot(self, "probs_quantizer", attn)
        out = (self.attn_drop(probs) @ _slot(self, "v_quantizer", v)).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(out))


class QuantXCA(XCA):
    """XCiT ``XCA`` (cross-covariance attention over channels) with quantizer slots on the l2-normalised q / k (per
    channel over tokens), the channel-attention probabilities and v; ``temperature`` scales the logits."""

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 4, 1).unbind(0)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        out = quantized_attention(self, q, k, v, _no_bias, scale=self.temperature)
        return self.proj_drop(self.proj(out.permute(0, 3, 1, 2).reshape(B, N, C)))


class QuantEfficientFormerAttention(EfficientFormerAttention):
    """EfficientFormer ``Attention`` with quantizer slots (key and value widths differ; learned attention biases)."""

    def forward(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.val_dim], dim=3)
        out = quantized_attention(self, q, k, v, lambda attn: attn + self.get_attention_biases(x.device))
        return self.proj(out.transpose(1, 2).reshape(B, N, self.val_attn_dim))


def _levit_attention(module: nn.Module, q: Tensor, k: Tensor, v: Tensor, device: torch.device) -> Tensor:
    """LeViT's attention on (B, heads, tokens, dim) q / k / v with its learned biases (module doc of the callers)."""
    return quantized_attention(module, q, k, v, lambda attn: attn + module.get_attention_biases(device))


class QuantLevitAttention(LevitAttention):
    """LeViT ``Attention`` with quantizer slots, in both its linear (B, N, C) and convolution (B, C, H, W) forms."""

    def forward(self, x: Tensor) -> Tensor:
        if self.use_conv:
            B, _, H, W = x.shape
            q, k, v = self.qkv(x).view(B, self.num_heads, -1, H * W).split([self.key_dim, self.key_dim, self.val_dim],
                                                                           dim=2)
            out = _levit_attention(self, q.transpose(-2, -1), k.transpose(-2, -1), v.transpose(-2, -1), x.device)
            return self.proj(out.transpose(-2, -1).reshape(B, -1, H, W))
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, self.num_heads, -1).split([self.key_dim, self.key_dim, self.val_dim], dim=3)
        out = _levit_attention(self, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), x.device)
        return self.proj(out.transpose(1, 2).reshape(B, N, self.val_attn_dim))


class QuantLevitAttentionDownsample(LevitAttentionDownsample):
    """LeViT ``AttentionDownsample`` (queries from a strided subsample of the tokens) with quantizer slots."""

    def forward(self, x: Tensor) -> Tensor:
        if self.use_conv:
            B, _, H, W = x.shape
            HH, WW = (H - 1) // self.stride + 1, (W - 1) // self.stride + 1
            k, v = self.kv(x).view(B, self.num_heads, -1, H * W).split([self.key_dim, self.val_dim], dim=2)
            q = self.q(x).view(B, self.num_heads, self.key_dim, -1)
            out = _levit_attention(self, q.transpose(-2, -1), k.transpose(-2, -1), v.transpose(-2, -1), x.device)
            return self.proj(out.transpose(-2, -1).reshape(B, self.val_attn_dim, HH, WW))
        B, N, _ = x.shape
        k, v = self.kv(x).view(B, N, self.num_heads, -1).split([self.key_dim, self.val_dim], dim=3)
        q = self.q(x).view(B, -1, self.num_heads, self.key_dim)
        out = _levit_attention(self, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), x.device)
        return self.proj(out.transpose(1, 2).reshape(B, -1, self.val_attn_dim))


class QuantMultiScaleAttention(MultiScaleAttention):
    """MViTv2 ``MultiScaleAttention`` with quantizer slots on the pooled, normalised q / k / v; the decomposed relative
    position term is computed from the quantized q (it is a product with q); residual pooling adds the float q."""

    def _pool(self, t: Tensor, feat_size: list[int], pool: nn.Module | None, norm: nn.Module | None):
        size = feat_size
        if pool is not None:
            t, tok = reshape_pre_pool(t, feat_size, self.has_cls_token)
            t, size = reshape_post_pool(pool(t), self.num_heads, tok)
        return (norm(t) if norm is not None else t), size

    def forward(self, x: Tensor, feat_size: list[int]) -> tuple[Tensor, list[int]]:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q, q_size = self._pool(q, feat_size, self.pool_q, self.norm_q)
        k, k_size = self._pool(k, feat_size, self.pool_k, self.norm_k)
        v, _ = self._pool(v, feat_size, self.pool_v, self.norm_v)
        qq, k = _slot(self, "q_quantizer", q), _slot(self, "k_quantizer", k)
        attn = (qq * self.scale) @ k.transpose(-2, -1)
        if self.rel_pos_type == "spatial":
            attn = cal_rel_pos_type(attn, qq, self.has_cls_token, q_size, k_size, self.rel_pos_h, self.rel_pos_w)
        x = _slot(self, "probs_quantizer", attn.softmax(dim=-1)) @ _slot(self, "v_quantizer", v)
        if self.residual_pooling:
            x = x + q
        return self.proj(x.transpose(1, 2).reshape(B, -1, self.dim_out)), q_size


def _heads_last(k: Tensor, quantize: Callable[[Tensor], Tensor]) -> Tensor:
    """Quantize a (B, heads, head_dim, N) key with its head_dim last, as every other slot sees it."""
    return quantize(k.transpose(-2, -1)).transpose(-2, -1)


class QuantAttention2d(Attention2d):
    """EfficientFormerV2 ``Attention2d`` with quantizer slots: talking heads mix the logits before the softmax and the
    probabilities after it, so the probability slot quantizes the mixed weights that multiply v (as for CaiT)."""

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        if self.stride_conv is not None:
            x = self.stride_conv(x)
        q = _slot(self, "q_quantizer", self.q(x).reshape(B, self.num_heads, -1, self.N).permute(0, 1, 3, 2))
        k = _heads_last(self.k(x).reshape(B, self.num_heads, -1, self.N), lambda t: _slot(self, "k_quantizer", t))
        v = self.v(x)
        v_local = self.v_local(v)
        v = _slot(self, "v_quantizer", v.reshape(B, self.num_heads, -1, self.N).permute(0, 1, 3, 2))
        attn = self.talking_head1((q @ k) * self.scale + self.get_attention_biases(x.device)).softmax(dim=-1)
        probs = _slot(self, "probs_quantizer", self.talking_head2(attn))
        x = (probs @ v).transpose(2, 3).reshape(B, self.dh, self.resolution[0], self.resolution[1]) + v_local
        if self.upsample is not None:
            x = self.upsample(x)
        return self.proj(self.act(x))


class QuantAttention2dDownsample(Attention2dDownsample):
    """EfficientFormerV2 ``Attention2dDownsample`` (queries from a strided local-global pool) with quantizer slots."""

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        q = _slot(self, "q_quantizer", self.q(x).reshape(B, self.num_heads, -1, self.N2).permute(0, 1, 3, 2))
        k = _heads_last(self.k(x).reshape(B, self.num_heads, -1, self.N), lambda t: _slot(self, "k_quantizer", t))
        v = self.v(x)
        v_local = self.v_local(v)
        v = _slot(self, "v_quantizer", v.reshape(B, self.num_heads, -1, self.N).permute(0, 1, 3, 2))
        attn = ((q @ k) * self.scale + self.get_attention_biases(x.device)).softmax(dim=-1)
        x = (_slot(self, "probs_quantizer", attn) @ v).transpose(2, 3)
        x = x.reshape(B, self.dh, self.resolution2[0], self.resolution2[1]) + v_local
        return self.proj(self.act(x))


class _TimmAdapter(AttentionAdapter):
    def __init__(self, float_cls: type[nn.Module], quant_cls: type[nn.Module]) -> None:
        self.float_cls, self.quant_cls = float_cls, quant_cls

    def matches(self, module: nn.Module) -> bool:
        return type(module) is self.float_cls

    def shapes(self, module: nn.Module) -> dict[str, SiteShape]:
        # EfficientFormer / LeViT call it val_dim, EfficientFormerV2 d; their proj may be a Sequential
        value_dim = getattr(module, "val_dim", getattr(module, "d", None))
        head_dim = value_dim if isinstance(value_dim, int) else module.proj.in_features // module.num_heads
        shapes = {s: SiteShape("activation", head_dim, -1) for s in ATTENTION_SLOTS}
        key_dim = getattr(module, "key_dim", None)  # EfficientFormer: q / k narrower than v
        if isinstance(key_dim, int):
            shapes["q_quantizer"] = shapes["k_quantizer"] = SiteShape("activation", key_dim, -1)
        shapes["probs_quantizer"] = SiteShape("activation", 1, -1)  # key count varies: per-tensor only
        return shapes

    def install(self, model: nn.Module, path: str, quantizers: dict[str, nn.Module | None]) -> Callable[[], None]:
        old = model.get_submodule(path)
        new = rebind(self.quant_cls, old)
        for name, quantizer in quantizers.items():
            new.register_module(name, quantizer)
        model.set_submodule(path, new)
        return lambda: model.set_submodule(path, old)


# attention computed by quantized_attention (or at an SDPA call): visq.export can run its products in int8
for _cls in (QuantAttention, QuantWindowAttention, QuantBeitAttention, QuantWindowAttentionV2, QuantEvaAttention,
             QuantClassAttn, QuantXCA, QuantEfficientFormerAttention, QuantLevitAttention,
             QuantLevitAttentionDownsample):
    _cls.exports_int8_attention = True

ADAPTERS.extend([_TimmAdapter(Attention, QuantAttention), _TimmAdapter(WindowAttention, QuantWindowAttention),
                 _TimmAdapter(BeitAttention, QuantBeitAttention), _TimmAdapter(EvaAttention, QuantEvaAttention),
                 _TimmAdapter(WindowAttentionV2, QuantWindowAttentionV2), _TimmAdapter(ClassAttn, QuantClassAttn),
                 _TimmAdapter(TalkingHeadAttn, QuantTalkingHeadAttn), _TimmAdapter(XCA, QuantXCA),
                 _TimmAdapter(EfficientFormerAttention, QuantEfficientFormerAttention),
                 _TimmAdapter(LevitAttention, QuantLevitAttention),
                 _TimmAdapter(LevitAttentionDownsample, QuantLevitAttentionDownsample),
                 _TimmAdapter(MultiScaleAttention, QuantMultiScaleAttention),
                 _TimmAdapter(Attention2d, QuantAttention2d),
                 _TimmAdapter(Attention2dDownsample, QuantAttention2dDownsample)])


class _FusedPathAdapter(AttentionAdapter):
    """Any other timm attention whose forward has timm's fused path (``fused_attn`` and an SDPA call, e.g. Hiera's
    ``MaskUnitAttention``): the fused path is switched on and run under ``QuantizedSDPA``, so timm's own code
    computes everything around the attention (pooling, windows) and q / k / v / probs are quantized at the SDPA
    call. Listed after the explicit adapters, which spell out the attentions with biases or talking heads."""

    def matches(self, module: nn.Module) -> bool:
        return (hasattr(module, "fused_attn") and isinstance(getattr(module, "head_dim", None), int)
                and calls_sdpa(type(module).forward))

    def shapes(self, module: nn.Module) -> dict[str, SiteShape]:
        shapes = {s: SiteShape("activation", module.head_dim, -1) for s in ATTENTION_SLOTS}
        shapes["probs_quantizer"] = SiteShape("activation", 1, -1)  # key count varies: per-tensor only
        return shapes

    def install(self, model: nn.Module, path: str, quantizers: dict[str, nn.Module | None]) -> Callable[[], None]:
        old = model.get_submodule(path)
        new = rebind(_fused_path_class(type(old)), old)
        new.fused_attn = True
        for name, quantizer in quantizers.items():
            new.register_module(name, quantizer)
        model.set_submodule(path, new)
        return lambda: model.set_submodule(path, old)


@functools.cache
def _fused_path_class(float_cls: type[nn.Module]) -> type[nn.Module]:
    def forward(self: nn.Module, *args, **kwargs):
        with QuantizedSDPA(self):
            return float_cls.forward(self, *args, **kwargs)

    return type(f"Quant{float_cls.__name__}", (float_cls,), {"forward": forward, "__module__": __name__,
                                                            "__doc__": _FusedPathAdapter.__doc__,
                                                            "exports_int8_attention": True})


ADAPTERS.append(_FusedPathAdapter())


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


