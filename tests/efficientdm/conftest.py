import copy

import pytest

import visq
from visq import testing as tiny

PROMPTS = ["a red circle", "a blue square", "a small green star", "a large yellow triangle"]
STEPS = 3  # sampling steps of calibration, distillation and evaluation


def quantized_sd(rank: int = 4, seed: int = 0, **kwargs):
    """A tiny text-to-image pipeline quantized W4A4 with efficientdm (3 calibrated timesteps)."""
    pipe = tiny.tiny_sd()
    visq.quantize(pipe, "w4a4", method="efficientdm", calib=PROMPTS, progress=False, rank=rank, act_init="minmax",
                  seed=seed, calib_options={"num_inference_steps": STEPS, "guidance_scale": 4.0, "batch_size": 4},
                  **kwargs)
    return pipe


@pytest.fixture(scope="session")
def _quantized():
    return quantized_sd()


@pytest.fixture
def qsd(_quantized):
    """A fresh copy of one quantized tiny pipeline (quantizing costs more than copying)."""
    return copy.deepcopy(_quantized)
