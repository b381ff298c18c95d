"""Quantization methods, one file each; importing this package registers them."""

# importing registers each method
from visq.methods import (  # noqa: F401
    baseline,
    dgq,
    dopq,
    eda,
    efficientdm,
    ias,
    noisyquant,
    ofq,
    ptq4vit,
    qdiff,
    repq,
    temporal,
)
from visq.methods.base import METHODS, Method, get, register


def names() -> list[str]:
    """Registered method names."""
    return sorted(METHODS)


__all__ = ["METHODS", "Method", "get", "names", "register"]
