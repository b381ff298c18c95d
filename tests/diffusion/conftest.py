import pytest

from visq import testing as tiny
from visq.hosts.diffusers import capture_trajectory

PROMPTS = ["a red circle", "a blue square", "a small green star", "a large yellow triangle"]


@pytest.fixture
def sd():
    return tiny.tiny_sd()


@pytest.fixture(scope="module")
def trajectory():
    """4 prompts in 2 runs of 2, 3 DDIM steps, CFG: 6 calls of batch 4."""
    return capture_trajectory(tiny.tiny_sd(), PROMPTS, num_inference_steps=3, batch_size=2, guidance_scale=5.0)
