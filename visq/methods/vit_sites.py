"""Where the ViT PTQ methods act in a timm block (research/vit_methods.md 0), and small recipe-rule helpers.

Block anatomy (timm ViT / DeiT / Swin): ``norm1 -> attn.qkv`` (tensor A), softmax probabilities (C),
``norm2 -> mlp.fc1`` (F), GELU -> ``mlp.fc2`` (G). Site patterns below name those tensors' quantizers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from torch import nn

from visq.quantizers import QuantSpec, Uniform
from visq.recipes import Rule

POST_LN_SITES = ("*.attn.qkv.input_quantizer", "*.mlp.fc1.input_quantizer")  # tensors A and F
POST_GELU_SITE = "*.mlp.fc2.input_quantizer"  # tensor G
PROBS_SITE = "*.probs_quantizer"  # tensor C
_POST_NORM = (("norm1", "attn.qkv"), ("norm2", "mlp.fc1"))


def spec_at(rules: Iterable[Rule], site: str) -> QuantSpec | None:
    """The spec the first rule matching ``site`` gives (None: float or no rule)."""
    return next((r.spec for r in rules if r.matches(site)), None)


def uniform_at(rules: Iterable[Rule], site: str) -> Uniform | None:
    """``spec_at`` when it is a static uniform spec, else None (the site is float or already specialised)."""
    spec = spec_at(rules, site)
    return spec if isinstance(spec, Uniform) and not spec.dynamic else None


def prepend(rules: Iterable[Rule], specs: Mapping[str, QuantSpec]) -> tuple[Rule, ...]:
    """``rules`` preceded by optional rules giving ``specs`` (pattern -> spec): first match wins."""
    return tuple(Rule(p, s, optional=True) for p, s in specs.items()) + tuple(rules)


def map_weight_specs(rules: Iterable[Rule], change: Callable[[Uniform], Uniform]) -> tuple[Rule, ...]:
    """The rules with ``change`` applied to every per-channel uniform weight spec."""
    out = []
    for rule in rules:
        spec = rule.spec
        if rule.pattern.endswith("weight_quantizer") and isinstance(spec, Uniform) and spec.granularity == "channel":
            rule = Rule(rule.pattern, change(spec), rule.optional)
        out.append(rule)
    return tuple(out)


def transformer_blocks(model: nn.Module) -> list[str]:
    """Paths of the transformer blocks (modules with ``norm1``, ``attn``, ``norm2``, ``mlp``), in model order."""
    return [
        path for path, m in model.named_modules()
        if all(hasattr(m, a) for a in ("norm1", "attn", "norm2", "mlp"))
    ]


def post_norm_pairs(model: nn.Module) -> list[tuple[nn.LayerNorm, nn.Module]]:
    """(LayerNorm, following linear) pairs whose linear input (tensor A or F) is fed by that norm alone."""
    pairs = []
    for path in transformer_blocks(model):
        block = model.get_submodule(path)
        for norm_name, linear_path in _POST_NORM:
            norm = getattr(block, norm_name)
            linear = block.get_submodule(linear_path)
            if isinstance(norm, nn.LayerNorm) and norm.elementwise_affine and isinstance(linear, nn.Linear):
                pairs.append((norm, linear))
    return pairs
