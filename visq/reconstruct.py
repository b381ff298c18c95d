"""Block reconstruction: tune one block at a time so its quantized output matches the float model's.

Generic over model families: a *block* is any submodule named by its path (timm ``blocks.3``, Swin
``layers.1.blocks.0``, a UNet ``down_blocks.1`` or a DiT ``transformer_blocks.2``), and data comes from a
``CalibSet``. The loop follows I&S-ViT's ``quant/block_recon.py`` (research/vit_methods.md 2.3):

    loss   = sum over dim 1 (tokens), mean over the rest, of (block(x) - target)^2     (no square root)
    params = the weights and biases of the Linear / Conv2d layers inside the block (quantizer state frozen)
    Adam(lr 4e-5, no weight decay), cosine annealing to 0, ``iters`` steps of ``batch_size`` rows drawn
    with ``randperm`` from the cached calibration inputs.

Typical use (I&S-ViT stages 1 and 3):

    with passthrough(model):                           # the float model
        targets = capture(model, paths, calib)         # float inputs and outputs of every block
    with passthrough(model, role="weight"):            # stage 1: float weights, quantized activations
        for p in paths:
            reconstruct_block(model.get_submodule(p), targets[p], targets[p].output, cfg)
    reconstruct(model, paths, calib, targets, cfg)     # stage 3: inputs from the quantized model

Rows: every tensor in a block's arguments or outputs whose first dimension equals the call's batch size is a
per-sample tensor; these are concatenated over the calibration calls and sliced together. Anything else (None,
flags, shared tensors) is taken from the first call. Cached tensors stay on the device they were produced on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from visq.calibrate import CalibSet
from visq.guard import check_float, check_int
from visq.quantizers import Quantizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconConfig:
    """Settings of the reconstruction loop (defaults: I&S-ViT at 3/4 bit; it uses 200 iterations at 6 bit).

    Attributes:
        iters: optimisation steps per block.
        lr: Adam learning rate (cosine-annealed to 0).
        batch_size: rows per step.
        seed: seed of the row sampling.
    """

    iters: int = 1000
    lr: float = 4e-5
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("iters", self.iters, 0)
        check_float("lr", self.lr)
        check_int("batch_size", self.batch_size)
        check_int("seed", self.seed, 0)


@dataclass
class BlockData:
    """A block's cached calls, merged over calibration calls: ``args`` / ``kwargs`` and ``output``."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Any
    rows: int

    def take(self, index: Tensor) -> tuple[tuple[Any, ...], dict[str, Any], Any]:
        """Args, kwargs and output restricted to the rows ``index``."""
        pick = lambda obj: _take(obj, index, self.rows)  # noqa: E731
        return pick(self.args), pick(self.kwargs), pick(self.output)


@contextmanager
def passthrough(model: nn.Module, role: str | None = None) -> Iterator[None]:
    """Within the context, quantizers (only those of ``role``, "weight" or "activation", if given) return their
    input unchanged: ``passthrough(model)`` is the float model, ``role="weight"`` keeps weights float."""
    hooks = [
        m.register_forward_hook(lambda mod, inputs, output: inputs[0])
        for m in model.modules()
        if isinstance(m, Quantizer) and (role is None or m.site.role == role)
    ]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def capture(model: nn.Module, paths: list[str], calib: CalibSet) -> dict[str, BlockData]:
    """Inputs and outputs of the blocks at ``paths`` over the whole calibration set, in one pass."""
    seen: dict[str, list[tuple[tuple, dict, Any]]] = {p: [] for p in paths}

    def hook(path: str) -> Callable:
        def record(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            seen[path].append((_detach(args), _detach(kwargs), _detach(output)))

        return record

    handles = [model.get_submodule(p).register_forward_hook(hook(p), with_kwargs=True) for p in paths]
    try:
        _replay(model, calib)
    finally:
        for h in handles:
            h.remove()
    return {p: _merge(calls, p) for p, calls in seen.items()}


class _Stop(Exception):
    """Raised by a capture hook to end a forward pass once the block of interest has run."""


def capture_inputs(model: nn.Module, path: str, calib: CalibSet) -> BlockData:
    """Inputs of the block at ``path`` over the calibration set, running the model only up to that block."""
    calls: list[tuple[tuple, dict, Any]] = []

    def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
        calls.append((_detach(args), _detach(kwargs), None))
        raise _Stop

    handle = model.get_submodule(path).register_forward_pre_hook(record, with_kwargs=True)
    try:
        _replay(model, calib, stop=True)
    finally:
        handle.remove()
    return _merge(calls, path)


def _replay(model: nn.Module, calib: CalibSet, stop: bool = False) -> None:
    with torch.no_grad():
        for call in calib:
            try:
                model(*call.args, **call.kwargs)
            except _Stop:
                if not stop:
                    raise


def block_loss(pred: Any, target: Any) -> Tensor:
    """Squared error summed over dim 1 and averaged over the rest, summed over the tensors of a tuple output."""
    if isinstance(pred, Tensor):
        err = (pred - target).pow(2)
        return err.sum(dim=1).mean() if err.ndim > 1 else err.mean()
    pairs = list(zip(_leaves(pred), _leaves(target)))
    if not pairs:
        raise ValueError("block output holds no tensors to reconstruct")
    return sum(block_loss(p, t) for p, t in pairs)


def layer_parameters(block: nn.Module) -> list[nn.Parameter]:
    """Weights and biases of the Linear / Conv2d layers inside ``block`` (I&S-ViT's trainable set)."""
    params = []
    for m in block.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            params += [p for p in (m.weight, m.bias) if p is not None]
    return params


def reconstruct_block(
    block: nn.Module,
    inputs: BlockData,
    target: Any,
    cfg: ReconConfig,
    params: list[nn.Parameter] | None = None,
    extra_loss: Callable[[Tensor], Tensor] | None = None,
) -> float:
    """Optimise ``params`` (default ``layer_parameters(block)``) so ``block(inputs)`` matches ``target``.

    Args:
        block: the module to tune; quantizers inside it keep their calibrated state.
        inputs: cached block inputs (``capture`` / ``capture_inputs``).
        target: the outputs to match, row-aligned with ``inputs`` (e.g. ``capture(...)[path].output``).
        cfg: loop settings.
        params: what to train; everything else in the block is frozen for the duration.
        extra_loss: added to the block loss after each forward, given the batch's row index (EDA-DM's layer
            terms read the layer outputs that hooks recorded during that forward).

    Returns:
        The loss on the last batch.
    """
    params = layer_parameters(block) if params is None else params
    if not params:
        raise ValueError("nothing to reconstruct: the block has no Linear / Conv2d parameters")
    _unfreeze_layers(block)
    was = {p: p.requires_grad for p in block.parameters()}
    trained = set(params)
    for p in block.parameters():
        p.requires_grad_(p in trained)
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.iters, 1), eta_min=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    loss = torch.zeros(())
    try:
        for _ in range(cfg.iters):
            index = torch.randperm(inputs.rows, generator=gen)[: cfg.batch_size]
            args, kwargs, _ = inputs.take(index)
            with torch.enable_grad():
                loss = block_loss(block(*args, **kwargs), _take(target, index, inputs.rows))
                if extra_loss is not None:
                    loss = loss + extra_loss(index)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            sched.step()
    finally:
        for p, flag in was.items():
            p.requires_grad_(flag)
    return float(loss.detach())


def reconstruct(
    model: nn.Module, paths: list[str], calib: CalibSet, targets: dict[str, BlockData], cfg: ReconConfig
) -> dict[str, float]:
    """Reconstruct the blocks in order, each fed by the current (quantized, already tuned) model's inputs.

    Args:
        model: the quantized model.
        paths: block paths in execution order.
        calib: calibration calls.
        targets: float outputs per path (``capture`` under ``passthrough``).
        cfg: loop settings.

    Returns:
        The final loss of each block.
    """
    losses = {}
    for path in paths:
        inputs = capture_inputs(model, path, calib)
        losses[path] = reconstruct_block(model.get_submodule(path), inputs, targets[path].output, cfg)
        logger.info("reconstructed %s: loss %.4g", path, losses[path])
    return losses


def _unfreeze_layers(block: nn.Module) -> None:
    # a cached fake-quantized weight would hide the trained weight from the forward
    for m in block.modules():
        if getattr(m, "frozen_weight", None) is not None:
            m.unfreeze()


# -- nested containers of tensors ------------------------------------------------------------------------------
def _detach(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_detach(v) for v in obj)
    if isinstance(obj, dict):
        return {k: _detach(v) for k, v in obj.items()}
    return obj


def _leaves(obj: Any) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _leaves(v)]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _leaves(v)]
    return []


def _batch_size(args: tuple, kwargs: dict, path: str) -> int:
    tensors = _leaves(args) + _leaves(kwargs)
    if not tensors or tensors[0].ndim == 0:
        raise ValueError(f"block {path} was called without a batched tensor argument; cannot reconstruct it")
    return tensors[0].shape[0]


def _merge(calls: list[tuple[tuple, dict, Any]], path: str) -> BlockData:
    """One BlockData from per-call captures: per-sample tensors concatenated along dim 0."""
    if not calls:
        raise RuntimeError(f"block {path} never ran during calibration: check the path")
    sizes = [_batch_size(a, k, path) for a, k, _ in calls]
    merged = [_cat([c[i] for c in calls], sizes) for i in range(3)]
    return BlockData(merged[0], merged[1], merged[2], sum(sizes))


def _cat(items: list[Any], sizes: list[int]) -> Any:
    first = items[0]
    if isinstance(first, Tensor):
        batched = all(t.ndim > 0 and t.shape[0] == n for t, n in zip(items, sizes))
        return torch.cat(items) if batched and len(items) > 1 else first
    if isinstance(first, (list, tuple)):
        return type(first)(_cat([it[i] for it in items], sizes) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _cat([it[k] for it in items], sizes) for k in first}
    return first


def _take(obj: Any, index: Tensor, rows: int) -> Any:
    if isinstance(obj, Tensor):
        return obj[index.to(obj.device)] if obj.ndim > 0 and obj.shape[0] == rows else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_take(v, index, rows) for v in obj)
    if isinstance(obj, dict):
        return {k: _take(v, index, rows) for k, v in obj.items()}
    return obj
