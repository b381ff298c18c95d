"""Feature extractors share one calling convention: uint8 images (N, 3, H, W) in, float features (N, D) out.

That is exactly the custom-``feature`` convention of torchmetrics' ``FrechetInceptionDistance`` (with
``normalize=False``), so any extractor here can be handed to it directly. Every extractor carries a ``name``
(reports print it and reference statistics are cached under it) and ``num_features``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from eval.io import load_images

log = logging.getLogger(__name__)


class RandomFeatures(nn.Module):
    """A tiny fixed random conv net: the test-only extractor (fast, deterministic from its seed)."""

    def __init__(self, num_features: int = 16, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.name = f"random-conv-{num_features}-s{seed}"
        self.num_features = num_features
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, num_features, 3, stride=2, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        self.eval().requires_grad_(False)

    def forward(self, images: Tensor) -> Tensor:
        x = images.float() / 127.5 - 1.0
        x = torch.tanh(self.conv2(torch.relu(self.conv1(x))))
        return x.mean(dim=(2, 3))


def network_name(extractor: nn.Module) -> str:
    """The name reports print for an extractor (its ``name`` attribute, else its class name)."""
    return str(getattr(extractor, "name", type(extractor).__name__))


@torch.no_grad()
def extract(
    extractor: nn.Module, images: Tensor | Sequence[Path], batch_size: int = 64, progress: bool = True
) -> Tensor:
    """Features (N, D) of uint8 images, given as a tensor or as image paths (loaded batch by batch).

    Batches are fixed slices of the input order, so a shard made of whole batches gets bit-identical features.
    """
    n = len(images)
    out = []
    for start in tqdm(range(0, n, batch_size), desc=f"features {network_name(extractor)}", disable=not progress):
        chunk = images[start : start + batch_size]
        batch = chunk if isinstance(chunk, Tensor) else load_images(chunk)
        out.append(extractor(batch).double().reshape(len(batch), -1))
    if not out:
        return torch.zeros(0, int(getattr(extractor, "num_features", 0)), dtype=torch.float64)
    return torch.cat(out)
