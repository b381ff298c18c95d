"""A video pipeline end to end: tiny Wan 2.1 (3-d transformer, flow-matching sampler) returns ``.frames``, which
calibration reads like ``.images``; quantized and exported it still samples video close to float."""

import types
import warnings

import pytest
import torch

import visq
from visq.hosts.diffusers import capture_trajectory, pipeline_samples
from visq.testing import tiny_wan

warnings.filterwarnings("ignore", category=FutureWarning)

PROMPTS = ["a red circle", "a blue square"]
SIZE = {"height": 32, "width": 32, "num_frames": 5, "max_sequence_length": 8}
OPTIONS = {"num_inference_steps": 2, **SIZE}


def _frames(pipe):
    out = pipe(PROMPTS, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0), **SIZE)
    return torch.as_tensor(out.frames)


def _psnr(ref, out):
    return float(10 * torch.log10(1.0 / (ref - out).pow(2).mean()))  # frames in [0, 1]


@pytest.fixture(scope="module")
def reference():
    return _frames(tiny_wan())


def test_calibration_reads_the_frames_of_a_video_pipeline():
    calls = capture_trajectory(tiny_wan(), PROMPTS, batch_size=2, **OPTIONS)
    assert len(calls) == 2 * 2  # 2 steps; Wan runs cond and uncond as separate calls
    assert calls[0].kwargs["hidden_states"].shape == (2, 4, 2, 4, 4)  # (batch, channels, frames, h, w)
    assert [round(c.timestep, 2) for c in calls] == [1000.0, 1000.0, 8.93, 8.93]  # shifted sigmas x 1000


# PSNR bars (dB) to the float frames, a few dB under what each measures (46.1, 38.8; a model of another seed: 15.6)
@pytest.mark.parametrize("recipe, bar", [("w8a8", 42.0), ("w4a8", 34.0)])
def test_video_pipeline_quantizes_and_exports(recipe, bar, reference):
    pipe = visq.quantize(tiny_wan(), recipe, calib=PROMPTS, calib_options=OPTIONS, progress=False)
    assert "attn1.processor.q_quantizer" in visq.summary(pipe)  # attention quantized, not silently float
    quantized = _frames(pipe)
    assert quantized.shape == reference.shape == (2, 5, 32, 32, 3)
    assert _psnr(reference, quantized) > bar
    visq.export(pipe)
    assert _psnr(quantized, _frames(pipe)) > 100.0  # the integer kernels compute what the fake quantizers did (150)


def test_pipeline_samples_reads_images_frames_or_tuples_and_names_the_fix():
    frames = torch.zeros(1, 5, 4, 4, 3)
    assert pipeline_samples(types.SimpleNamespace(frames=frames)) is frames
    assert pipeline_samples((frames,)) is frames
    with pytest.raises(TypeError, match=r"neither \.images nor \.frames.*CalibSet"):
        pipeline_samples(types.SimpleNamespace(audio=frames))
