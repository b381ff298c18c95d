"""End-to-end bar on the shipped zoo text-to-image pipeline: each diffusion PTQ method against the Q-Diffusion
baseline, by PSNR of same-seed images to the float pipeline's (the full table: ``python -m eval.bench_diffusion``).

Every method is calibrated on the same captured float trajectory (8 training captions, the sampler of generation),
so the comparison measures the methods, not the calibration draw.
"""

import pytest
import torch

import visq
from visq import zoo
from visq.hosts.diffusers import capture_trajectory
from visq.zoo.shapes import ShapesDataset

GEN = {"num_inference_steps": 20, "guidance_scale": 4.0}
PROMPTS = ShapesDataset("heldout", size=8, seed=1).captions
CALIB = ShapesDataset("train", size=8, seed=2).captions
OPTIONS = {"eda": {"recon_iters": 50}}  # shortened reconstruction: the bar, not the best number

pytestmark = pytest.mark.slow


def _pipe():
    try:
        return zoo.load("shapes-sd")
    except FileNotFoundError as err:
        pytest.skip(f"not shipped yet: {err}")


def _generate(pipe) -> torch.Tensor:
    generators = [torch.Generator().manual_seed(i) for i in range(len(PROMPTS))]
    with torch.no_grad():
        return pipe(PROMPTS, generator=generators, output_type="pt", **GEN).images.float()


@pytest.fixture(scope="module")
def calib():
    return capture_trajectory(_pipe(), CALIB, **GEN)


@pytest.fixture(scope="module")
def psnr(calib):
    """PSNR (dB, mean over images) to float of ``(bits, method)``, each computed once per module."""
    reference = _generate(_pipe())
    cache: dict[tuple[str, str], float] = {}

    def measure(bits: str, method: str) -> float:
        if (bits, method) not in cache:
            torch.manual_seed(0)
            pipe = visq.quantize(_pipe(), bits, method=method, calib=calib, progress=False,
                                 **OPTIONS.get(method, {}))
            mse = ((_generate(pipe) - reference) ** 2).mean(dim=(1, 2, 3))
            cache[bits, method] = (10 * torch.log10(1 / mse)).mean().item()
        return cache[bits, method]

    return measure


@pytest.mark.parametrize("method", ["temporal", "eda", "dgq"])
def test_method_beats_baseline_at_w4a4(psnr, method):
    assert psnr("w4a4", method) > psnr("w4a4", "qdiff")


# Measured and reported (README, eval/results/diffusion_ptq.md): at W4A8 the 4-bit weights dominate the error and
# only EDA-DM, which reconstructs them, gains clearly. DGQ's 8-bit log2 probabilities round every probability to a
# power of two (-0.9 dB on an Intel Xeon, -0.45 dB on an AMD EPYC). Strict: the test fails once DGQ starts beating
# the baseline in this setting. Temporal (per-step min-max ranges from one step's 16 calibration samples) sits within
# half a dB of the baseline, on either side by machine (-0.45 dB Xeon, +0.28 dB EPYC): no ordering to assert, so
# its bar is that band (test_temporal_stays_near_the_baseline_at_w4a8).
SHORT_AT_W4A8 = {"dgq": "8-bit log2 attention probabilities cost more than the groups gain at A8"}


W4A8_CASES = [pytest.param(m, marks=pytest.mark.xfail(m in SHORT_AT_W4A8, reason=SHORT_AT_W4A8.get(m, ""),
                                                      strict=True)) for m in ["eda", "dgq"]]


@pytest.mark.parametrize("method", W4A8_CASES)
def test_method_beats_baseline_at_w4a8(psnr, method):
    assert psnr("w4a8", method) > psnr("w4a8", "qdiff")


def test_temporal_stays_near_the_baseline_at_w4a8(psnr):
    assert abs(psnr("w4a8", "temporal") - psnr("w4a8", "qdiff")) < 1.0
