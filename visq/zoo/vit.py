"""The zoo ViT classification task: visq-shapes with clutter and noise, label = the main shape (6 classes)."""

from __future__ import annotations

import torch

from visq.zoo.shapes import ShapesConfig, standardize

# clutter occludes parts of small shapes and noise blurs their corners: keeps top-1 well under 100%
VIT_DATA = ShapesConfig(clutter=0.7, noise=0.08, rotation=20.0)
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] (or uint8) images (n, 3, 32, 32) -> the ViT's input normalisation."""
    return standardize(images, MEAN, STD)
