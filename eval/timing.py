"""Interleaved timing: every function is called in turn, round after round, so all see the same background load.

Warm-up rounds (first calls: allocator growth, oneDNN primitive creation, compile) are run and dropped. A ratio of
two functions is taken per round (each round's pair saw the same load), and reported as the median with its
spread over rounds, so one number comes with how far it can be trusted.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Milliseconds of each of ``repeats`` timed calls per function, after ``warmup`` untimed rounds."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    """The median of each function's times."""
    return {name: statistics.median(t) for name, t in times.items()}


def paired_ratio(numerator: list[float], denominator: list[float]) -> dict[str, float]:
    """Per-round ratios ``numerator[i] / denominator[i]``: median, min and max (e.g. a speed-up and its spread)."""
    ratios = [a / b for a, b in zip(numerator, denominator, strict=True)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
