"""Per-timestep quantizer state: pointing every temporal quantizer of a model at the current timestep."""

from __future__ import annotations

from torch import Tensor, nn

from visq.quantizers import Quantizer


def temporal_quantizers(model: nn.Module) -> list[Quantizer]:
    """Quantizers of ``model`` that keep one state per timestep."""
    return [m for m in model.modules() if isinstance(m, Quantizer) and m.temporal]


def as_timestep(t: float | int | Tensor) -> float:
    """A single timestep from a scalar or a batch of equal timesteps; mixed timesteps in one batch raise."""
    if isinstance(t, Tensor):
        flat = t.detach().flatten()
        if flat.numel() == 0:
            raise ValueError("empty timestep tensor")
        if flat.numel() > 1 and not bool((flat == flat[0]).all()):
            raise ValueError(
                "per-timestep quantizers need one timestep per denoiser call, got a batch with different timesteps"
            )
        return float(flat[0])
    return float(t)


def set_timestep(model: nn.Module, t: float | int | Tensor) -> None:
    """Select the state calibrated for timestep ``t`` in every temporal quantizer of ``model`` (custom loops)."""
    value = as_timestep(t)
    quantizers = temporal_quantizers(model)
    if not quantizers:  # a silent no-op would hide a wrong model or a non-temporal recipe
        raise ValueError(f"{type(model).__name__} has no per-timestep quantizers: set_timestep only applies to "
                         "models quantized with a temporal method (e.g. method='temporal') on a diffusion pipeline")
    for q in quantizers:
        q.set_timestep(value)
