"""Argument checks shared by the public verbs, and a guard that puts modules back as they were when a call fails.

Every verb validates its arguments before it changes anything; ``restored_on_error`` covers what can only fail
later (a training run interrupted, a pipeline that raises mid-way): the modules' ``requires_grad`` flags, train /
eval modes and forward hooks are restored, so a retry starts from the caller's model, not a half-changed one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

# the hook tables nn.Module keeps; restoring their contents removes hooks a failed call left behind
_HOOK_TABLES = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs")


def check_int(name: str, value: Any, low: int = 1, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]``; a bool, a float or a string raises (``TypeError`` / ``ValueError``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def check_float(name: str, value: Any, positive: bool = True) -> float:
    """``value`` as a finite float, > 0 (``positive``) or >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value}")
    return float(value)


def check_options(calib_options: Any) -> dict[str, Any]:
    """``calib_options`` as a (new) dict, None as an empty one; anything else raises ``TypeError``."""
    if calib_options is not None and not isinstance(calib_options, dict):
        raise TypeError(f"calib_options must be a dict such as {{'num_inference_steps': 10}}, got "
                        f"{type(calib_options).__name__}")
    return dict(calib_options or {})


@contextmanager
def restored_on_error(*modules: nn.Module | None) -> Iterator[None]:
    """On an exception inside the block, restore ``requires_grad``, train / eval mode and forward hooks of every
    submodule of ``modules`` (None entries are skipped) to what they were on entry, then re-raise."""
    parts = [m for m in modules if m is not None]
    params = [(p, p.requires_grad) for m in parts for p in m.parameters()]
    subs = [(s, s.training, {t: dict(getattr(s, t, {})) for t in _HOOK_TABLES}) for m in parts for s in m.modules()]
    try:
        yield
    except BaseException:
        for p, flag in params:
            p.requires_grad_(flag)
        for s, training, tables in subs:
            s.training = training
            for table, saved in tables.items():
                if hasattr(s, table):
                    getattr(s, table).clear()
                    getattr(s, table).update(saved)
        raise
