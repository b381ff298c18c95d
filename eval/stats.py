"""Gaussian feature statistics (mean, covariance) and the Frechet distance between two of them.

Reference statistics of a real image set are cached on disk under a key made of the feature network's name and
a hash of the image files, so changing either recomputes them and nothing stale is ever reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torchmetrics.image.fid import _compute_fid

from eval.features import extract, network_name

log = logging.getLogger(__name__)


@dataclass
class FeatureStats:
    """Mean and covariance (float64) of ``n`` feature vectors from network ``network``."""

    mean: Tensor
    cov: Tensor
    n: int
    network: str

    @classmethod
    def from_features(cls, features: Tensor, network: str) -> FeatureStats:
        """Unbiased statistics (divisor n - 1, as torchmetrics) of features (N, D)."""
        if features.shape[0] < 2:
            raise ValueError(f"Frechet distance needs at least 2 images per set, got {features.shape[0]}")
        f = features.double()
        return cls(f.mean(0), torch.cov(f.T, correction=1).reshape(f.shape[1], f.shape[1]), f.shape[0], network)

    def save(self, path: str | Path) -> None:
        """Write as safetensors with n and network in the metadata."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        meta = {"n": str(self.n), "network": self.network}
        save_file({"mean": self.mean.contiguous(), "cov": self.cov.contiguous()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        """Read statistics written by :meth:`save`."""
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        t = load_file(str(path))
        return cls(t["mean"], t["cov"], int(meta["n"]), meta["network"])


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """Frechet distance between two Gaussians, with torchmetrics' formula (eigenvalues of cov_a @ cov_b).

    Raises:
        ValueError: the statistics come from different feature networks.
    """
    if a.network != b.network:
        raise ValueError(f"statistics from different feature networks: {a.network!r} vs {b.network!r}")
    return float(_compute_fid(a.mean, a.cov, b.mean, b.cov))


def files_hash(paths: Sequence[Path]) -> str:
    """Hash of the file names (relative to their common folder) and bytes, order-independent."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        h.update(p.name.encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def tensor_hash(images: Tensor) -> str:
    """Hash of an in-memory uint8 image tensor (shape and bytes)."""
    h = hashlib.sha256(json.dumps(list(images.shape)).encode())
    h.update(images.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def reference_stats(
    extractor: nn.Module, images: Tensor | Sequence[Path], cache_dir: str | Path | None = None, batch_size: int = 64
) -> FeatureStats:
    """Statistics of a real image set, cached under ``cache_dir/<network>-<hash>.safetensors`` when given."""
    name = network_name(extractor)
    cache = None
    if cache_dir is not None:
        key = tensor_hash(images) if isinstance(images, Tensor) else files_hash(images)
        cache = Path(cache_dir) / f"{name.replace('/', '_')}-{key}.safetensors"
        if cache.is_file():
            log.info("reference statistics from cache %s", cache)
            return FeatureStats.load(cache)
    stats = FeatureStats.from_features(extract(extractor, images, batch_size), name)
    if cache is not None:
        stats.save(cache)
        log.info("cached reference statistics at %s", cache)
    return stats
