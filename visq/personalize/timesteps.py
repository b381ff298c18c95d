"""Partial Uniform Timestep Sampling (PUTS, ZOODiP section 3.4): ``t ~ U[T_L, T_U)``, by default [500, 900).

The official code draws ``torch.randint(500, 1000 - 100)``, so t is in [500, 899]; the paper writes U(T_L, T_U) with
T_L = 500, T_U = 900. Textual inversion over t ~ U(0, 500) fails to learn colour and shape (paper Fig. 4).
"""

from __future__ import annotations

import torch
from torch import Tensor


def sample_timesteps(batch: int, generator: torch.Generator, low: int = 500, high: int = 900,
                     num_train_timesteps: int = 1000) -> Tensor:
    """``batch`` integer timesteps uniform in ``[low, high)``; ``low=0, high=T`` is plain uniform sampling."""
    if not 0 <= low < high <= num_train_timesteps:
        raise ValueError(f"timestep range [{low}, {high}) must lie in [0, {num_train_timesteps}] and be non-empty")
    return torch.randint(low, high, (batch,), generator=generator)
