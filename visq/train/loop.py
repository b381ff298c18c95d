"""The one training loop every training method runs on (DESIGN.md section 11).

``fit(task, settings)`` owns what is common: device placement and processes (``accelerate``), the optimizer and
its learning-rate schedule, gradient synchronisation across processes, clipping, checkpoints with resume, metrics
written as they are produced, the progress bar and seeding. A method (``visq.train.TrainTask``) supplies its
parameter groups and the loss of one step.

Determinism: step ``i`` reseeds torch's global generator and the generator handed to the task from
``(seed, i, process)``, so a run killed and resumed from a checkpoint takes exactly the steps an uninterrupted run
takes (same data draws, noise and dropout), and ends with the same weights.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from visq.train.run_dir import RunDir
from visq.train.task import TrainTask

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("constant", "linear", "cosine")
# Settings that change neither the result nor the files' meaning: a run may resume with other values.
_FREE_SETTINGS = ("out_dir", "progress", "desc", "checkpoint_every")


@dataclass(frozen=True)
class TrainSettings:
    """How long and how to train; shared by every training method.

    Attributes:
        steps: optimizer updates in the whole run.
        out_dir: run folder for ``checkpoint.pt``, ``metrics.jsonl`` and ``run.json``; None keeps nothing on disk
            (and cannot resume). Rerunning with the same folder and settings resumes.
        seed: seeds every step's randomness (see the module docstring).
        optimizer: "adamw", "adam" or "sgd" (momentum 0.9).
        weight_decay: default weight decay of groups that do not set their own.
        schedule: learning-rate factor over the run: "constant", "linear" (to 0) or "cosine" (to ``min_lr_ratio``).
        warmup_steps: linear warm-up from 0 before the schedule.
        min_lr_ratio: final factor of the cosine schedule.
        grad_clip: clip the global gradient norm to this value (None: no clipping).
        checkpoint_every: steps between checkpoints (the last step always checkpoints).
        log_every: steps between metrics records (mean of the window's losses).
        eval_every: steps between ``task.evaluate`` calls; 0 evaluates at the end only.
        progress: show a progress bar.
        desc: the progress bar's label.
    """

    steps: int
    out_dir: str | None = None
    seed: int = 0
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_clip: float | None = None
    checkpoint_every: int = 100
    log_every: int = 10
    eval_every: int = 0
    progress: bool = True
    desc: str = "train"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if min(self.checkpoint_every, self.log_every) < 1 or self.eval_every < 0 or self.warmup_steps < 0:
            raise ValueError("checkpoint_every and log_every must be >= 1; eval_every and warmup_steps >= 0")

    def lr_factor(self, step: int) -> float:
        """Factor applied to every group's peak learning rate at optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        t = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        if self.schedule == "linear":
            return max(0.0, 1.0 - t)
        if self.schedule == "cosine":
            return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        return 1.0


@dataclass
class TrainResult:
    """What a call of ``fit`` did: the step reached, the last metrics, time and peak memory of this call."""

    step: int
    metrics: dict[str, float]
    seconds: float
    peak_memory_mb: float
    out_dir: Path | None


def fit(task: TrainTask, settings: TrainSettings, accelerator: Any = None) -> TrainResult:
    """Train ``task`` for ``settings.steps`` optimizer updates, resuming from ``settings.out_dir`` if it holds a run.

    Args:
        task: the method's loss and parameters.
        settings: the loop's settings.
        accelerator: an ``accelerate.Accelerator``; one is created when None (CPU or the visible GPU; under
            ``accelerate launch`` one process per device, gradients averaged across processes).

    Returns:
        A ``TrainResult``; metrics also stream to ``out_dir/metrics.jsonl``.

    Raises:
        ValueError: the folder holds a run with other settings, or the task's parameter groups are malformed.
    """
    from accelerate import Accelerator

    # cpu=True on a machine without CUDA: accelerate then forms the gloo group under `accelerate launch`/torchrun
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    run = RunDir(settings.out_dir)
    record = {k: v for k, v in dataclasses.asdict(settings).items() if k not in _FREE_SETTINGS}
    if accelerator.is_main_process:
        run.check_settings({"task": task.name, "task_config": task.config(), "settings": record}, _FREE_SETTINGS)
    task.to(accelerator.device)
    groups = _checked_groups(task.param_groups(), settings)
    params = [p for g in groups for p in g["params"]]
    optimizer = _optimizer(settings, groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, settings.lr_factor)
    start, window = _resume(run, task, optimizer, scheduler)
    if accelerator.is_main_process:
        run.truncate_metrics(start)
    t0, metrics = time.time(), {}
    bar = tqdm(total=settings.steps, initial=start, desc=settings.desc,
               disable=not (settings.progress and accelerator.is_main_process))
    for step in range(start, settings.steps):
        generator = _seed(settings.seed, step, accelerator.process_index)
        out = task.step(step, generator)
        if out.loss.requires_grad:
            accelerator.backward(out.loss)
        _sync_gradients(params, accelerator)
        if settings.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        task.before_update(step)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(_mean_over_processes(out.loss, accelerator))
        metrics = {**out.metrics, **task.after_update(step)}
        done = step + 1
        if settings.eval_every and done % settings.eval_every == 0 or done == settings.steps:
            metrics.update(task.evaluate(done))
        if done % settings.log_every == 0 or done == settings.steps:
            metrics = {"loss": sum(window) / len(window), "lr": scheduler.get_last_lr()[0], **metrics}
            window = []
            if accelerator.is_main_process:
                run.log({"step": done, **metrics})
            bar.set_postfix(loss=f"{metrics['loss']:.4g}")
        if (done % settings.checkpoint_every == 0 or done == settings.steps) and accelerator.is_main_process:
            run.save(_checkpoint(done, window, task, optimizer, scheduler))
        bar.update(1)
    bar.close()
    accelerator.wait_for_everyone()
    return TrainResult(settings.steps, metrics, time.time() - t0, peak_memory_mb(accelerator.device), run.path)


def _checked_groups(groups: list[dict[str, Any]], settings: TrainSettings) -> list[dict[str, Any]]:
    seen: set[int] = set()
    out = []
    for i, group in enumerate(groups):
        params = list(group.get("params", ()))
        if not params:
            raise ValueError(f"parameter group {group.get('name', i)!r} has no parameters")
        for p in params:
            if id(p) in seen:
                raise ValueError(f"a parameter appears in two groups (second: {group.get('name', i)!r})")
            if not p.requires_grad:
                raise ValueError(f"parameter group {group.get('name', i)!r} holds a tensor with requires_grad=False")
            seen.add(id(p))
        out.append({"weight_decay": settings.weight_decay, **group, "params": params})
    if not out:
        raise ValueError("the task returned no parameter groups: nothing to train")
    return out


def _optimizer(settings: TrainSettings, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    lr = groups[0].get("lr", 1e-3)
    if settings.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    cls = torch.optim.AdamW if settings.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=lr)


def _seed(seed: int, step: int, process: int) -> torch.Generator:
    """Seed torch's global generator for this step and return a generator for the task's own draws."""
    value = int(np.random.SeedSequence([seed, step, process]).generate_state(1)[0])
    torch.manual_seed(value)
    return torch.Generator().manual_seed(value)


def _sync_gradients(params: list[Tensor], accelerator: Any) -> None:
    """Average gradients over processes (the task's model is never wrapped, so methods stay plain modules)."""
    if accelerator.num_processes == 1:
        return
    for p in params:
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        p.grad = accelerator.reduce(grad, reduction="mean")


def _mean_over_processes(loss: Tensor, accelerator: Any) -> float:
    loss = loss.detach().float()
    if accelerator.num_processes > 1:
        loss = accelerator.reduce(loss, reduction="mean")
    return float(loss)


def _checkpoint(step: int, window: list[float], task: TrainTask, optimizer, scheduler) -> dict[str, Any]:
    return {
        "step": step,
        "loss_window": window,  # losses since the last metrics record, so a resumed run logs the same means
        "modules": {name: module.state_dict() for name, module in task.modules().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "task": task.state_dict(),
    }


def _resume(run: RunDir, task: TrainTask, optimizer, scheduler) -> tuple[int, list[float]]:
    """Restore the last checkpoint; returns the step to continue from and the open loss window."""
    state = run.load()
    if state is None:
        return 0, []
    modules = task.modules()
    if set(state["modules"]) != set(modules):
        raise ValueError(f"checkpoint holds modules {sorted(state['modules'])}, the task has {sorted(modules)}")
    for name, module in modules.items():
        module.load_state_dict(state["modules"][name])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    task.load_state_dict(state["task"])
    return int(state["step"]), list(state["loss_window"])


def peak_memory_mb(device: torch.device | str = "cpu") -> float:
    """Peak memory: the CUDA allocator's peak on a GPU, else the process's peak resident set size (Linux)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
