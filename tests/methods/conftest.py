import pytest
import torch

from tests.core.conftest import vit  # noqa: F401  (the tiny timm ViT fixture)


@pytest.fixture(scope="session")
def images():
    return torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(0))
