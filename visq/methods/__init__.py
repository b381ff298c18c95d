"""Quantization methods, one file each; importing this package registers them."""

from visq.methods import baseline, dgq, eda, qdiff, temporal  # noqa: F401  (registration)
from visq.methods.base import METHODS, Method, get, register


def names() -> list[str]:
    """Registered method names."""
    return sorted(METHODS)


__all__ = ["METHODS", "Method", "get", "names", "register"]
