"""One way into every diffusers attention: wrap the model's own processor and quantize inside its SDPA call.

Modern diffusers transformers (FLUX, SD3, Sana, Qwen-Image, Z-Image, Lumina2, HunyuanDiT, AuraFlow...) each ship
their own attention processor: joint (image, text) attention, RoPE, masks, q / k norms, GQA. Re-implementing each one
would copy its logic and drift from it. Instead ``QuantizedProcessor`` runs the model's own processor unchanged and
intercepts the one call they all make, ``torch.nn.functional.scaled_dot_product_attention`` (directly, or through
diffusers' ``dispatch_attention_fn`` on its native backend), with a ``TorchFunctionMode`` that is active only inside
the processor call. There q, k and v arrive after projection, norm and RoPE, laid out (batch, heads, tokens,
head_dim), which is exactly what an integer attention kernel would consume: q / k / v are quantized there, the
softmax probabilities after it. Everything else the processor does (the returned (image, text) pair included) is its
own code, so a model needs no per-class adapter, and with no quantizer the call is bit-identical to float.

A processor whose ``__call__`` never reaches SDPA (Sana's linear attention: ReLU kernels, no softmax) cannot be
covered this way; ``attention_gap`` says why, and the planner names it in ``summary`` or refuses (sites.py).
"""

from __future__ import annotations

import functools
from typing import Any

from torch import nn

from visq.hosts.sdpa import QuantizedSDPA, calls_sdpa
from visq.sites import ATTENTION_SLOTS

# Processors whose attention has no softmax: q / k / v / probs slots do not apply (their projections, to_q ... to_out,
# are ordinary Linear layers and are quantized as such).
LINEAR_ATTENTION = ("SanaLinearAttnProcessor2_0", "SanaLinearAttnProcessor3_0", "PAGCFGSanaLinearAttnProcessor2_0",
                    "PAGIdentitySanaLinearAttnProcessor2_0", "SanaMultiscaleAttnProcessor2_0")


def attention_gap(processor: Any) -> str | None:
    """Why this processor's attention cannot get quantizer slots (None when it can)."""
    name = type(processor).__name__
    if name in LINEAR_ATTENTION:
        return (f"linear attention ({name}): no softmax probabilities or q.k^T for the q / k / v / probs slots, so "
                "its two matmuls stay float (to_q / to_k / to_v / to_out are quantized)")
    if not calls_sdpa(type(processor).__call__):
        return (f"attention class with processor {name} has no visq adapter: its __call__ never calls "
                "scaled_dot_product_attention / dispatch_attention_fn, where visq quantizes q / k / v / probs")
    return None


class QuantizedProcessor(nn.Module):
    """A model's own attention processor, run with q / k / v / probs quantized at its SDPA call.

    Build it with ``QuantizedProcessor.wrap(processor, quantizers)``: the class it returns has the wrapped
    processor's ``__call__`` signature, because diffusers' attention modules drop keyword arguments (``temb``,
    ``image_rotary_emb``...) that the processor's signature does not name.
    """

    exports_int8_attention = True  # quantized_sdpa runs the products in int8 once visq.export sets int8_attention

    def __init__(self, processor: Any, quantizers: dict[str, nn.Module | None]) -> None:
        super().__init__()
        self.processor = processor
        for name in ATTENTION_SLOTS:
            self.register_module(name, quantizers.get(name))

    @staticmethod
    def wrap(processor: Any, quantizers: dict[str, nn.Module | None]) -> QuantizedProcessor:
        """``processor`` wrapped with these quantizers (None entries stay float)."""
        return _wrapper_class(type(processor))(processor, quantizers)

    def forward(self, attn: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if all(getattr(self, name) is None for name in ATTENTION_SLOTS):
            return self.processor(attn, *args, **kwargs)
        # pin diffusers' dispatcher to its native backend (torch SDPA) for this call, whatever backend is active
        backend = getattr(self.processor, "_attention_backend", None)
        if hasattr(self.processor, "_attention_backend"):
            self.processor._attention_backend = "native"
        try:
            with QuantizedSDPA(self):
                return self.processor(attn, *args, **kwargs)
        finally:
            if hasattr(self.processor, "_attention_backend"):
                self.processor._attention_backend = backend


@functools.cache
def _wrapper_class(processor_cls: type) -> type[QuantizedProcessor]:
    @functools.wraps(processor_cls.__call__)  # inspect.signature follows __wrapped__ to the processor's parameters
    def __call__(self: QuantizedProcessor, *args: Any, **kwargs: Any) -> Any:
        return nn.Module.__call__(self, *args, **kwargs)

    return type(f"Quantized{processor_cls.__name__}", (QuantizedProcessor,),
                {"__call__": __call__, "__module__": __name__, "__doc__": QuantizedProcessor.__doc__})
