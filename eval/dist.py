"""The process group of a run (accelerate's PartialState), CPU-aware.

accelerate only forms a multi-process CPU group (gloo) when ``PartialState(cpu=True)``; its launcher's ``--cpu``
flag starts a single process unless MPI is set up. So on a machine without CUDA we ask for the CPU group
ourselves, and ``accelerate launch --multi_gpu --num_processes 2`` (or ``torchrun --nproc_per_node 2``) shards.
"""

from __future__ import annotations

import os

import torch
from accelerate import PartialState


def state() -> PartialState:
    """The shared PartialState (a single process when not launched by accelerate/torchrun)."""
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    return PartialState(cpu=cpu)
