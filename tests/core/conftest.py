import pytest
import torch

from visq import testing as tiny


@pytest.fixture
def vit():
    return tiny.tiny_vit()


@pytest.fixture(scope="session")
def images():
    return torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def sd():
    return tiny.tiny_sd()


@pytest.fixture
def dit():
    return tiny.tiny_dit()
