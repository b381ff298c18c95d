"""The quantizer contract shared by every family.

A ``QuantSpec`` is a frozen, JSON-able dataclass of one family's settings. A ``Quantizer`` is the nn.Module built
from it: ``forward`` fake-quantizes with a straight-through gradient, ``observe`` gathers calibration statistics
and ``fit`` turns them into the buffers created in ``__init__``. Statistics gathered while observing are transient
(plain attributes, dropped by ``fit``); everything needed at inference is a buffer or parameter, so a quantizer
survives a ``state_dict`` round trip.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

SPECS: dict[str, type[QuantSpec]] = {}
QUANTIZERS: dict[type[QuantSpec], type[Quantizer]] = {}


@dataclass(frozen=True)
class QuantSpec:
    """Settings of one quantizer family. Subclasses are registered by name for JSON round trips."""

    kind: ClassVar[str] = "base"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        SPECS[cls.kind] = cls

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, tagged with the family name (nested specs nest)."""
        out = {"type": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, QuantSpec):
                value = value.to_dict()
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @staticmethod
    def from_dict(data: dict[str, Any]) -> QuantSpec:
        """Inverse of ``to_dict``; unknown families or fields raise."""
        data = dict(data)
        kind = data.pop("type", None)
        if kind not in SPECS:
            raise ValueError(f"unknown quantizer type {kind!r}; known: {sorted(SPECS)}")
        cls = SPECS[kind]
        data = cls.upgrade(data)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{kind} spec has unknown fields {sorted(unknown)}")
        return cls(**{k: _field_from_json(v) for k, v in data.items()})

    @classmethod
    def upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The fields of ``data`` written by an older visq, brought to this version (default: unchanged)."""
        return data

    def short(self) -> str:
        """One-line human description used by ``summary``."""
        return repr(self)


def _field_from_json(value: Any) -> Any:
    if isinstance(value, dict) and "type" in value:
        return QuantSpec.from_dict(value)
    return tuple(value) if isinstance(value, list) else value


def register(spec_cls: type[QuantSpec]):
    """Class decorator binding a Quantizer implementation to its spec type."""

    def wrap(quantizer_cls: type[Quantizer]) -> type[Quantizer]:
        QUANTIZERS[spec_cls] = quantizer_cls
        return quantizer_cls

    return wrap


@dataclass(frozen=True)
class SiteShape:
    """What a quantizer needs to know about the tensor it will see, to size its buffers in ``__init__``.

    Attributes:
        role: "weight" or "activation".
        channels: size of the channel axis (weights: output channels; activations: feature channels).
        axis: the channel axis of the tensor (weights 0; linear inputs -1; conv inputs 1).
        timesteps: the denoiser timesteps a temporal quantizer keeps one state for.
        kernel: spatial elements per input channel of a weight (kh * kw for a Conv2d, 1 otherwise).
    """

    role: str
    channels: int
    axis: int
    numel_per_channel: int = 1
    timesteps: tuple[float, ...] = ()
    kernel: int = 1


class Quantizer(nn.Module):
    """Fake-quantizes a tensor. Subclasses implement ``forward``, ``observe`` and ``fit``.

    A temporal quantizer (``site.timesteps`` non-empty) keeps one state per denoiser timestep in the leading
    dimension of its buffers. Which one applies is set by ``set_timestep`` (the diffusers host calls it from a
    forward pre-hook on the denoiser); an unknown timestep raises instead of silently reusing another's state.
    """

    def __init__(self, spec: QuantSpec, site: SiteShape) -> None:
        super().__init__()
        self.spec = spec
        self.site = site
        self._keys = {timestep_key(t): i for i, t in enumerate(site.timesteps)}
        self._t_index: int | None = None

    @property
    def temporal(self) -> bool:
        """Whether this quantizer keeps per-timestep state."""
        return bool(self._keys)

    def set_timestep(self, t: float) -> None:
        """Select the state calibrated for denoiser timestep ``t``."""
        try:
            self._t_index = self._keys[timestep_key(t)]
        except KeyError:
            known = ", ".join(f"{k:g}" for k in self.site.timesteps)
            raise KeyError(
                f"timestep {t:g} was not calibrated (calibrated: {known}). Run the pipeline with the "
                "num_inference_steps used for calibration, or quantize again with those steps."
            ) from None

    def slot(self) -> int:
        """Index of the current timestep's state; raises if none was set."""
        if self._t_index is None:
            raise RuntimeError(
                "temporal quantizer called before any timestep was set: call the denoiser through its pipeline "
                "(visq's hook sets it) or call visq.set_timestep(model, t) in a custom loop"
            )
        return self._t_index

    def observe(self, x: Tensor) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def fit(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def extra_repr(self) -> str:
        return self.spec.short()


def build(spec: QuantSpec, site: SiteShape) -> Quantizer:
    """Instantiate the quantizer registered for ``type(spec)``."""
    try:
        cls = QUANTIZERS[type(spec)]
    except KeyError:
        raise ValueError(f"no quantizer registered for {type(spec).__name__}") from None
    return cls(spec, site)


def timestep_key(t: float) -> float:
    """Lookup key for a timestep: rounding makes 999, 999.0 and float32 999.0001 the same step."""
    return round(float(t), 3)


def round_ste(x: Tensor) -> Tensor:
    """Round to nearest with an identity (straight-through) gradient."""
    return x + (torch.round(x) - x).detach()
