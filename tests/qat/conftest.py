"""Shared QAT fixtures: a tiny timm ViT teacher, a data stream drawn from the step's generator, short settings."""

import pytest
import torch

from visq.qat import QATConfig
from visq.testing import tiny_vit


def draw(generator: torch.Generator) -> torch.Tensor:
    """Eight random 32x32 images from the step's generator."""
    return torch.randn(8, 3, 32, 32, generator=generator)


@pytest.fixture
def teacher():
    return tiny_vit()


@pytest.fixture
def short() -> QATConfig:
    return QATConfig(steps=6, anneal_steps=3, batch_size=8, calib_size=16, warmup_steps=2, checkpoint_every=2,
                     log_every=2)
