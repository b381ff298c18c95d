"""QKR: OFQ's query-key reparameterisation of timm attention (research/vit_methods.md 5.4). Imports timm.

Per head h with W_q^h, W_k^h in R^{d x C} (rows of the pretrained ``qkv`` weight), the logits are
    logits^h_ij = x_i^T W_qk^h x_j * d^-0.5,   W_qk^h = (W_q^h)^T W_k^h in R^{C x C}
and QKR quantizes the product instead of q and k separately:
    W_hat = weight_quantizer(stack_h W_qk^h)            (the [H*C, C] stack; StatsQ per row in OFQ)
    t^h_j = W_hat^h x_hat_j  -> kx_quantizer             (the key-side product, quantized as an activation)
    logits^h_ij = x_hat_i . t_hat^h_j * d^-0.5,  probs -> probs_quantizer,  out = probs @ v_quantizer(v) -> proj
``x_hat`` is the block input quantized once by the ``v`` layer's input quantizer and shared by v and the product;
gradients reach the latent W_q, W_k through the product. Deviations from OFQ's code:
- Every layer starts from the pretrained weights (OFQ's converted attention re-initialises ``proj``).
- The query bias is kept exactly: it adds (W_k^h^T b_q^h) . x_hat_j to every logit of key j (a per-key term the
  softmax does not cancel); OFQ drops it and lets training recover it. The key bias cancels in the softmax.
- OFQ shares the product's StatsQ scale over heads; here each row of the [H*C, C] stack has its own.
Cost: H*C^2 parameters and MACs per block for q.k instead of 2*C^2 (DeiT-S: 0.88M vs 0.29M).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.layers.attention import maybe_add_mask, resolve_self_attn_mask
from torch import Tensor, nn

from visq.modules import rebind
from visq.quantizers import SiteShape
from visq.sites import ADAPTERS, AttentionAdapter

SLOTS = ("weight_quantizer", "kx_quantizer", "probs_quantizer", "v_quantizer")


def _slot(module: nn.Module, name: str, x: Tensor) -> Tensor:
    quantizer = getattr(module, name, None)
    return quantizer(x) if quantizer is not None else x


class QKRAttention(Attention):
    """timm ``Attention`` with q / k reparameterised into per-head products (module doc).

    Parameters ``q_weight``, ``k_weight`` (attn_dim, C), ``q_bias`` (attn_dim or None) and the ``v`` Linear come from
    the pretrained ``qkv``. Quantizer slots: ``weight_quantizer`` (the product), ``kx_quantizer``,
    ``probs_quantizer``, ``v_quantizer``; the shared input quantizer is ``v.input_quantizer``.
    """

    @classmethod
    def from_attention(cls, attn: Attention) -> QKRAttention:
        """A QKR copy of ``attn`` (same outputs in float; ``attn`` itself is left unchanged)."""
        if type(attn) is not Attention:
            raise ValueError(f"QKR converts timm Attention modules, got {type(attn).__name__}")
        if not isinstance(attn.q_norm, nn.Identity) or not isinstance(attn.k_norm, nn.Identity):
            raise ValueError("QKR needs attention without q/k normalisation (qk_norm=False): a norm between the "
                             "projections and the product cannot be folded into W_q^T W_k")
        new = rebind(cls, attn)
        del new._modules["qkv"]
        d, weight, bias = attn.attn_dim, attn.qkv.weight.detach(), attn.qkv.bias
        new.q_weight = nn.Parameter(weight[:d].clone())
        new.k_weight = nn.Parameter(weight[d:2 * d].clone())
        new.q_bias = nn.Parameter(bias[:d].detach().clone()) if bias is not None else None
        v = nn.Linear(weight.shape[1], d, bias=bias is not None, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            v.weight.copy_(weight[2 * d:])
            if bias is not None:
                v.bias.copy_(bias[2 * d:])
        new.v = v
        return new

    @property
    def weight(self) -> Tensor:
        """The [H*C, C] stack of per-head products W_q^h^T W_k^h (what ``weight_quantizer`` quantizes)."""
        H, d = self.num_heads, self.head_dim
        q = self.q_weight.reshape(H, d, -1)
        k = self.k_weight.reshape(H, d, -1)
        return torch.einsum("hdc,hde->hce", q, k).reshape(-1, q.shape[-1])

    def _input(self, x: Tensor) -> Tensor:
        quantizer = getattr(self.v, "input_quantizer", None)
        return quantizer(x) if quantizer is not None else x

    def _v_weight(self) -> Tensor:
        return self.v.quantized_weight() if hasattr(self.v, "quantized_weight") else self.v.weight

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        B, N, C = x.shape
        H = self.num_heads
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        xq = self._input(x)
        v = F.linear(xq, self._v_weight(), self.v.bias).reshape(B, N, H, self.head_dim).transpose(1, 2)
        w_qk = _slot(self, "weight_quantizer", self.weight).reshape(H, C, C)
        kx = _slot(self, "kx_quantizer", torch.einsum("bnc,hec->bhne", xq, w_qk))  # t_j = W_qk x_j
        attn = torch.einsum("bnc,bhmc->bhnm", xq, kx)
        if self.q_bias is not None:
            u = torch.einsum("hd,hdc->hc", self.q_bias.reshape(H, -1), self.k_weight.reshape(H, self.head_dim, C))
            attn = attn + torch.einsum("hc,bmc->bhm", u, xq)[:, :, None, :]
        attn = maybe_add_mask(attn * self.scale, resolve_self_attn_mask(N, attn, attn_mask, is_causal))
        probs = _slot(self, "probs_quantizer", attn.softmax(dim=-1))
        out = (self.attn_drop(probs) @ _slot(self, "v_quantizer", v)).transpose(1, 2).reshape(B, N, self.attn_dim)
        out = self.norm(out)
        if gate is not None:
            out = out * gate
        return self.proj_drop(self.proj(out))


class QKRAdapter(AttentionAdapter):
    """Quantizer slots of ``QKRAttention`` (sites ``<path>.{weight,kx,probs,v}_quantizer``)."""

    def matches(self, module: nn.Module) -> bool:
        return type(module) is QKRAttention

    def shapes(self, module: nn.Module) -> dict[str, SiteShape]:
        C = module.q_weight.shape[1]
        return {
            "weight_quantizer": SiteShape("weight", module.num_heads * C, 0, C),
            "kx_quantizer": SiteShape("activation", C, -1),
            "probs_quantizer": SiteShape("activation", 1, -1),  # key count varies: per-tensor only
            "v_quantizer": SiteShape("activation", module.head_dim, -1),
        }

    def install(self, model: nn.Module, path: str, quantizers: dict[str, nn.Module | None]) -> Callable[[], None]:
        old = model.get_submodule(path)
        new = rebind(QKRAttention, old)
        for name, quantizer in quantizers.items():
            new.register_module(name, quantizer)
        model.set_submodule(path, new)
        return lambda: model.set_submodule(path, old)


ADAPTERS.append(QKRAdapter())


def reparameterize(model: nn.Module) -> Callable[[], None]:
    """Replace every timm ``Attention`` in ``model`` by a ``QKRAttention``; returns a function that undoes it.

    Raises:
        ValueError: the model has no timm ``Attention`` block (QKR has nothing to act on).
    """
    paths = [path for path, m in model.named_modules() if type(m) is Attention]
    if not paths:
        found = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.endswith("Attention")})
        raise ValueError(
            f"QKR (query-key reparameterisation) needs timm Attention blocks; {type(model).__name__} has none"
            + (f" (attention classes found: {', '.join(found)})" if found else "")
            + ". Run OFQ without it: qkr=False."
        )
    old = {path: model.get_submodule(path) for path in paths}
    for path, attn in old.items():
        model.set_submodule(path, QKRAttention.from_attention(attn))
    return lambda: [model.set_submodule(p, a) for p, a in old.items()]
