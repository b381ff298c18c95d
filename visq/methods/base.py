"""The Method plug-in: optional hooks around the swap-calibrate pipeline, and the registry of methods by name.

``prepare(model)`` runs before quantizers are installed (structural rewrites), ``rules(rules)`` may refine the
recipe's specs (e.g. a percentile range rule), ``collect(pipe, calib, options)`` may replace the host's calibration
capture, and ``refine(pipe, model, calib)`` runs after calibration (searches, reparameterisation, reconstruction).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from visq.calibrate import CalibSet
from visq.recipes import Rule

METHODS: dict[str, type[Method]] = {}


class Method:
    """Base class: every hook is optional and does nothing by default."""

    name = "base"
    family: str | None = None  # "vit" | "diffusion": the model family it is for; None fits any model

    def __init__(self, **kwargs: Any) -> None:
        if kwargs:
            raise TypeError(f"method {self.name!r} takes no options, got {sorted(kwargs)}")

    def rules(self, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        return rules

    def prepare(self, model: nn.Module) -> Callable[[], None] | None:
        """Before quantizers are installed; a structural rewrite returns the function that undoes it."""
        return None

    def collect(self, pipe: Any, calib: Any, options: dict[str, Any]) -> CalibSet | None:
        """Own calibration capture; None means the host's default."""
        return None

    def refine(self, pipe: Any, model: nn.Module, calib: CalibSet) -> None:
        """After calibration."""


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    METHODS[cls.name] = cls
    return cls


def check_family(method: Method, family: str | None, model_name: str) -> None:
    """Raise when ``method`` is for another model family than ``family`` (a host's; None = unknown, anything goes).

    Raises:
        ValueError: naming the methods that fit this family.
    """
    if method.family is None or family is None or method.family == family:
        return
    fit = sorted(n for n, cls in METHODS.items() if cls.family in (None, family))
    raise ValueError(
        f"method {method.name!r} is for {method.family} models, but {model_name} is a {family} model; "
        f"methods that fit: {', '.join(fit)}"
    )


def get(name: str, **kwargs: Any) -> Method:
    """Instantiate the method registered as ``name``; unknown names raise with the list of known ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name](**kwargs)
