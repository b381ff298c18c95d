"""Quantization methods, one file each; importing this package registers them."""

# importing registers each method
from visq.methods import baseline, dgq, dopq, eda, ias, noisyquant, ptq4vit, qdiff, repq, temporal  # noqa: F401
from visq.methods.base import METHODS, Method, get, register


def names() -> list[str]:
    """Registered method names."""
    return sorted(METHODS)


__all__ = ["METHODS", "Method", "get", "names", "register"]
