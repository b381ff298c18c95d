"""Shared test setup: offline hub, one thread (the machines have 2 shared cores), tiny models built in code."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
