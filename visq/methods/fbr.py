"""Block reconstruction for diffusion denoisers, with EDA-DM's fine-grained layer terms.

EDA-DM's FBR (research/diffusion_methods.md 3.2): per block, L = L_block + gamma * sum_l L_layer(l), where L_layer
compares each quantized layer's output inside the block with the float model's (every layer but the last one);
gamma = 0 is plain block reconstruction (Q-Diffusion / BRECQ style, the ``qdiff`` option). Blocks are the
denoiser's top-level stages: UNet ``down_blocks.*``, ``mid_block``, ``up_blocks.*``; DiT ``transformer_blocks.*``.
Deviations: what trains is the layers' weights and biases (``visq.reconstruct``, as in I&S-ViT) rather than
AdaRound rounding variables and activation step sizes; no QDrop mixing of float and quantized inputs; the layer
terms are unweighted MSE (the released code; paper v3 says Hessian-weighted). Iterations are an explicit option.
"""

from __future__ import annotations

import logging

from torch import Tensor, nn

from visq.calibrate import CalibSet
from visq.modules import QUANT_LAYERS
from visq.reconstruct import ReconConfig, capture, capture_inputs, passthrough, reconstruct_block

logger = logging.getLogger(__name__)


def denoiser_blocks(model: nn.Module) -> list[str]:
    """Paths of the blocks reconstructed one at a time, in execution order."""
    paths = [f"down_blocks.{i}" for i in range(len(getattr(model, "down_blocks", [])))]
    if getattr(model, "mid_block", None) is not None:
        paths.append("mid_block")
    paths += [f"up_blocks.{i}" for i in range(len(getattr(model, "up_blocks", [])))]
    paths += [f"transformer_blocks.{i}" for i in range(len(getattr(model, "transformer_blocks", [])))]
    if not paths:
        raise ValueError(f"{type(model).__name__}: no UNet or DiT blocks to reconstruct")
    return paths


def _quant_layers(model: nn.Module, block: str) -> list[str]:
    quant_types = tuple(QUANT_LAYERS.values())
    return [f"{block}.{n}" for n, m in model.get_submodule(block).named_modules() if isinstance(m, quant_types)]


class _LayerOutputs:
    """Forward hooks keeping the latest output of each named layer (with its graph, for the loss)."""

    def __init__(self, model: nn.Module, paths: list[str]) -> None:
        self.outputs: dict[str, Tensor] = {}
        self.handles = [model.get_submodule(p).register_forward_hook(self._keep(p)) for p in paths]

    def _keep(self, path: str):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            self.outputs[path] = output
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def reconstruct_denoiser(model: nn.Module, calib: CalibSet, gamma: float, cfg: ReconConfig) -> dict[str, float]:
    """Reconstruct every block toward the float model; returns each block's final loss."""
    paths = denoiser_blocks(model)
    layers = {p: _quant_layers(model, p)[:-1] if gamma > 0 else [] for p in paths}
    with passthrough(model):  # the float model: block targets and per-layer targets
        targets = capture(model, paths + [lay for p in paths for lay in layers[p]], calib)
    losses = {}
    for path in paths:
        if not _quant_layers(model, path):
            continue
        inputs = capture_inputs(model, path, calib)
        recorder = _LayerOutputs(model, layers[path])

        def layer_terms(index: Tensor, path: str = path, recorder: _LayerOutputs = recorder) -> Tensor:
            total = sum((recorder.outputs[lay] - targets[lay].output[index]).pow(2).mean() for lay in layers[path])
            return gamma * total

        try:
            losses[path] = reconstruct_block(model.get_submodule(path), inputs, targets[path].output, cfg,
                                             extra_loss=layer_terms if layers[path] else None)
        finally:
            recorder.remove()
        logger.info("reconstructed %s: loss %.4g", path, losses[path])
    return losses
