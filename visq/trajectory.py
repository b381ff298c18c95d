"""Samplers over the trajectory cache: picking, splitting and re-batching captured denoiser calls.

``capture_trajectory`` (hosts/diffusers.py) records one ``Call`` per denoiser call of each float calibration run.
A *sample* is one trajectory inside a call: row k of the batch, plus row k + B/2 (its unconditional twin) under
classifier-free guidance. Every calibration sampler (uniform over steps, EDA-DM density + diversity, per step)
selects samples from this one cache and re-batches them for replay.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from visq.calibrate import CalibSet, Call


def batch_size(call: Call) -> int:
    """Rows in the call's batch (the first tensor argument's first dimension)."""
    first = next(a for a in (*call.args, *call.kwargs.values()) if isinstance(a, Tensor))
    return first.shape[0]


def samples_per_call(call: Call) -> int:
    """Trajectories in a call: half the rows under classifier-free guidance."""
    return batch_size(call) // 2 if call.cfg else batch_size(call)


def sample_rows(call: Call, k: int) -> list[int]:
    """Batch rows of trajectory ``k`` in ``call`` (both CFG halves)."""
    n = samples_per_call(call)
    return [k, k + n] if call.cfg else [k]


def _take(value: Any, rows: Tensor, size: int) -> Any:
    if isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == size:
        return value.index_select(0, rows)
    if isinstance(value, dict):
        return {k: _take(v, rows, size) for k, v in value.items()}
    return value


def select(call: Call, samples: Iterable[int]) -> Call:
    """The call restricted to some trajectories (tensors with the batch dimension are indexed, others kept)."""
    samples = list(samples)
    size = batch_size(call)
    if call.cfg:  # keep the [uncond..., cond...] layout
        n = samples_per_call(call)
        rows = torch.tensor(samples + [k + n for k in samples])
    else:
        rows = torch.tensor(samples)
    return Call(tuple(_take(a, rows, size) for a in call.args), {k: _take(v, rows, size) for k, v in
                call.kwargs.items()}, call.timestep, call.run, call.step, call.cfg)


def _cat(values: list[Any], sizes: list[int], halves: bool) -> Any:
    first = values[0]
    if isinstance(first, Tensor) and first.ndim > 0 and first.shape[0] == sizes[0]:
        if halves:  # concatenate unconditional halves, then conditional halves
            pairs = list(zip(values, sizes))
            return torch.cat([v[: s // 2] for v, s in pairs] + [v[s // 2 :] for v, s in pairs])
        return torch.cat(values)
    if isinstance(first, dict):
        return {k: _cat([v[k] for v in values], sizes, halves) for k in first}
    return first


def merge(calls: list[Call]) -> Call:
    """One call holding the samples of several calls at the same timestep."""
    if len({c.timestep for c in calls}) > 1 or len({c.cfg for c in calls}) > 1:
        raise ValueError("only calls at the same timestep and with the same CFG layout can be merged")
    sizes = [batch_size(c) for c in calls]
    first = calls[0]
    args = tuple(_cat([c.args[i] for c in calls], sizes, first.cfg) for i in range(len(first.args)))
    kwargs = {k: _cat([c.kwargs[k] for c in calls], sizes, first.cfg) for k in first.kwargs}
    return Call(args, kwargs, first.timestep, first.run, first.step, first.cfg)


def rebatch(calls: Iterable[Call], max_samples: int = 16) -> CalibSet:
    """Merge calls of equal timestep into batches of at most ``max_samples`` trajectories, in timestep order."""
    by_t: dict[float | None, list[Call]] = {}
    for call in calls:
        by_t.setdefault(call.timestep, []).append(call)
    out = []
    for group in by_t.values():
        chunk, count = [], 0
        for call in group:
            if chunk and count + samples_per_call(call) > max_samples:
                out.append(merge(chunk))
                chunk, count = [], 0
            chunk.append(call)
            count += samples_per_call(call)
        out.append(merge(chunk))
    return CalibSet(out)


def uniform_steps(calib: CalibSet, num_steps: int) -> CalibSet:
    """Q-Diffusion's sampler: all calls at ``num_steps`` timesteps spread uniformly over the trajectory."""
    timesteps = calib.timesteps
    if num_steps >= len(timesteps):
        return calib
    stride = len(timesteps) / num_steps
    keep = {timesteps[int(i * stride)] for i in range(num_steps)}
    return CalibSet(c for c in calib if c.timestep in keep)
