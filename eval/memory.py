"""Peak tensor memory of a piece of code, traced through torch's allocator events (CPU or GPU alike).

``torch.cuda.max_memory_allocated`` exists only on GPUs; on CPU the profiler's memory events (every allocation
and free with its size and time) give the same quantity: the highest net bytes allocated while ``fn`` ran, above
what was allocated when it started (model weights already resident are not counted).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def traced_peak_mb(fn: Callable[[], Any]) -> float:
    """Peak MiB of tensor memory allocated (net of frees) while ``fn()`` runs."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities, profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    level = peak = 0
    for _, nbytes in events:
        level += nbytes
        peak = max(peak, level)
    return peak / 2**20


def resident_mb(*modules: nn.Module) -> float:
    """MiB held by the parameters and buffers of ``modules`` (shared tensors counted once)."""
    seen: dict[int, int] = {}
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values()) / 2**20
