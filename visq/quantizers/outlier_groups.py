"""DGQ's outlier-preserving group quantization of activations (Ryu et al., ICLR 2025; diffusion_methods.md 4.2).

Per index along the channel axis and along the token / pixel axis, calibration keeps the extreme values
(min of mins, max of maxes). The axis with the larger spread,
    D_d = (max_i a^max_i - min_i a^max_i) + (max_i a^min_i - min_i a^min_i),
is grouped: K-means (sklearn, random_state 0) on the points (a^min_i, a^max_i) puts the indices into K groups, and
each group gets a min-max range (``group_mode='minmax'``). Ranges are kept per timestep when ``per_timestep``.
Deviations: the grouping is computed once from all timesteps' statistics (DGQ regroups at every timestep); conv
inputs are grouped per channel or per pixel on the 4-D tensor instead of DGQ's unfold pseudo-conv (spec 4.6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from visq.quantizers.base import Quantizer, QuantSpec, SiteShape, register
from visq.quantizers.uniform import Uniform, fake_quantize, range_to_params


@dataclass(frozen=True)
class OutlierGroups(QuantSpec):
    """Asymmetric ``bits``-bit activations with ``groups`` ranges along the channel or token axis.

    Attributes:
        tokens: tokens (linear inputs) or pixels (conv inputs) per sample at calibration; 0 allows channel
            grouping only. Inference must use the same count when token grouping was chosen.
    """

    kind: ClassVar[str] = "outlier_groups"
    bits: int = 8
    groups: int = 8
    tokens: int = 0
    per_timestep: bool = False

    def __post_init__(self) -> None:
        if self.groups < 1 or not 1 <= self.bits <= 16:
            raise ValueError("groups must be >= 1 and bits in 1..16")

    def short(self) -> str:
        return f"int{self.bits} asym {self.groups} outlier groups" + (" per-timestep" if self.per_timestep else "")


@register(OutlierGroups)
class OutlierGroupsQuantizer(Quantizer):
    """Buffers: ``channel_group`` (C,), ``token_group`` (tokens,), ``on_tokens`` (which axis is grouped) and
    ``scale`` / ``zero_point`` of shape ([T,] K)."""

    def __init__(self, spec: OutlierGroups, site: SiteShape) -> None:
        super().__init__(spec, site)
        self.spec: OutlierGroups = spec
        self._uniform = Uniform(bits=spec.bits)
        shape = (len(site.timesteps), spec.groups) if spec.per_timestep else (spec.groups,)
        self.register_buffer("scale", torch.ones(shape))
        self.register_buffer("zero_point", torch.zeros(shape))
        self.register_buffer("channel_group", torch.zeros(site.channels, dtype=torch.long))
        self.register_buffer("token_group", torch.zeros(spec.tokens, dtype=torch.long))
        self.register_buffer("on_tokens", torch.zeros((), dtype=torch.bool))
        self._stats: dict[int, dict[str, Tensor]] = {}

    def _views(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(channels, rest) and (tokens, rest) views of an activation (B, N, C) or (B, C, H, W)."""
        if self.site.axis == 1:  # conv input (linear inputs have axis -1): channels and pixels
            pixels = x.flatten(2).permute(2, 0, 1)
            return x.transpose(0, 1).reshape(x.shape[1], -1), pixels.reshape(pixels.shape[0], -1)
        channels = x.reshape(-1, x.shape[-1]).T
        if x.ndim < 3:
            return channels, x.reshape(1, -1)
        tokens = x.reshape(-1, x.shape[-2], x.shape[-1]).transpose(0, 1)
        return channels, tokens.reshape(tokens.shape[0], -1)

    def observe(self, x: Tensor) -> None:
        by_channel, by_token = self._views(x.detach().float())
        slot = self.slot() if self.spec.per_timestep else 0
        new = {"cmin": by_channel.amin(1), "cmax": by_channel.amax(1), "tmin": by_token.amin(1),
               "tmax": by_token.amax(1)}
        old = self._stats.get(slot)
        if old is not None and old["tmin"].shape != new["tmin"].shape:
            raise ValueError("calibration batches change the token count; calibrate at one resolution")
        self._stats[slot] = new if old is None else {
            k: torch.minimum(old[k], v) if k.endswith("min") else torch.maximum(old[k], v) for k, v in new.items()}

    def fit(self) -> None:
        if not self._stats:
            raise RuntimeError("outlier-group quantizer saw no calibration data")
        lo = {k: torch.stack([s[k] for s in self._stats.values()]).amin(0) for k in ("cmin", "tmin")}
        hi = {k: torch.stack([s[k] for s in self._stats.values()]).amax(0) for k in ("cmax", "tmax")}
        spread = lambda mn, mx: (mx.max() - mx.min()) + (mn.max() - mn.min())  # noqa: E731
        use_tokens = self.spec.tokens == len(lo["tmin"]) and spread(lo["tmin"], hi["tmax"]) > spread(
            lo["cmin"], hi["cmax"])
        key = "t" if use_tokens else "c"
        groups = kmeans_groups(lo[f"{key}min"], hi[f"{key}max"], self.spec.groups)
        (self.token_group if use_tokens else self.channel_group).copy_(groups)
        self.on_tokens.fill_(bool(use_tokens))
        for slot, stats in self._stats.items():
            scale, zero = self._group_params(stats[f"{key}min"], stats[f"{key}max"], groups)
            (self.scale[slot] if self.spec.per_timestep else self.scale).copy_(scale)
            (self.zero_point[slot] if self.spec.per_timestep else self.zero_point).copy_(zero)
        self._stats = {}

    def _group_params(self, mins: Tensor, maxs: Tensor, groups: Tensor) -> tuple[Tensor, Tensor]:
        k = self.spec.groups
        lo = torch.full((k,), float("inf")).scatter_reduce(0, groups, mins, "amin")
        hi = torch.full((k,), float("-inf")).scatter_reduce(0, groups, maxs, "amax")
        empty = torch.isinf(lo)
        return range_to_params(lo.masked_fill(empty, 0), hi.masked_fill(empty, 0), self._uniform)

    def forward(self, x: Tensor) -> Tensor:
        scale, zero = (self.scale[self.slot()], self.zero_point[self.slot()]) if self.spec.per_timestep else (
            self.scale, self.zero_point)
        conv = self.site.axis == 1
        if bool(self.on_tokens):
            n = x.shape[2] * x.shape[3] if conv else x.shape[-2]
            if n != len(self.token_group):
                raise ValueError(f"grouped by {len(self.token_group)} tokens at calibration, got {n}: "
                                 "generate at the calibration resolution")
            shape = (1, 1, *x.shape[2:]) if conv else (n, 1)
            index = self.token_group
        else:
            shape = (-1, 1, 1) if conv else (-1,)
            index = self.channel_group
        qmin, qmax = self._uniform.qrange
        return fake_quantize(x, scale[index].reshape(shape).to(x.dtype), zero[index].reshape(shape).to(x.dtype),
                             qmin, qmax)


def kmeans_groups(mins: Tensor, maxs: Tensor, k: int) -> Tensor:
    """Group indices by K-means on their (min, max) points (fewer groups when there are fewer distinct points)."""
    from sklearn.cluster import KMeans

    points = torch.stack([mins, maxs], dim=1).double().numpy()
    k_eff = min(k, len({tuple(p) for p in points.round(8)}))
    if k_eff <= 1:
        return torch.zeros(len(points), dtype=torch.long)
    labels = KMeans(n_clusters=k_eff, random_state=0, n_init=4).fit(points).labels_
    return torch.as_tensor(labels, dtype=torch.long)
