"""The contract between the shared training loop and a training method (QAT, distillation, personalization).

A method supplies only what is its own: the parameter groups it trains, the loss of one step, and optional hooks
around the optimizer update. Everything else (devices and processes, the optimizer and schedule, gradient
synchronisation, checkpoints, resume, metrics, the progress bar, seeding) lives once in ``visq.train.loop``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class StepOutput:
    """What one training step returns.

    Attributes:
        loss: the scalar to minimise. If it carries a graph, the loop calls ``backward`` on it. A method that
            estimates gradients itself (zeroth order) fills ``.grad`` of its parameters and returns a loss without
            a graph; the loop then only synchronises and applies those gradients.
        metrics: floats logged with the step (the loss is logged as ``loss`` without being listed here).
    """

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


class TrainTask:
    """Base class of a training method; override what the method needs.

    Required: ``modules``, ``param_groups``, ``step``. Everything returned by ``modules`` is checkpointed through its
    ``state_dict`` and restored on resume; put any other state the method carries between steps in
    ``state_dict`` / ``load_state_dict``.
    """

    name = "task"

    def config(self) -> dict[str, Any]:
        """JSON-able settings that must match when a run resumes (a mismatch raises instead of mixing runs)."""
        return {}

    def modules(self) -> dict[str, nn.Module]:
        """The stateful modules the run changes (saved in checkpoints), e.g. ``{"student": model}``."""
        raise NotImplementedError

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups: dicts with ``params`` and optionally ``lr``, ``weight_decay``, ``name``.

        A group's ``lr`` is its peak learning rate; the loop's schedule scales every group by the same factor.
        """
        raise NotImplementedError

    def to(self, device: torch.device) -> None:
        """Move everything the task computes with to ``device`` (override when it holds more, e.g. a teacher)."""
        for module in self.modules().values():
            module.to(device)

    def step(self, step: int, generator: torch.Generator) -> StepOutput:
        """The loss of training step ``step``; draw all randomness from ``generator`` (seeded per step)."""
        raise NotImplementedError

    def before_update(self, step: int) -> None:
        """After gradients are ready and synchronised, before ``optimizer.step()`` (e.g. mask gradients)."""

    def after_update(self, step: int) -> dict[str, float]:
        """After ``optimizer.step()`` (e.g. restore frozen weights, track oscillations); returns metrics."""
        return {}

    def evaluate(self, step: int) -> dict[str, float]:
        """Periodic evaluation (every ``eval_every`` steps and at the end); returns metrics."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Method state not held by ``modules`` (e.g. the current trajectory), for checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
