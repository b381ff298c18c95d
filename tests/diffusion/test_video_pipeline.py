"""Video pipelines end to end: tiny Wan 2.1 (3-d transformer, flow-matching sampler, cond / uncond as two calls) and
tiny CogVideoX (joint text + video attention, DDIM, batched guidance) return ``.frames``, which calibration reads like
``.images``; quantized and exported they still sample video close to float."""

import types
import warnings

import pytest
import torch

import visq
from visq.hosts.diffusers import capture_trajectory, pipeline_samples
from visq.testing import tiny_cogvideox, tiny_wan

warnings.filterwarnings("ignore", category=FutureWarning)

PROMPTS = ["a red circle", "a blue square"]
SIZES = {tiny_wan: {"height": 32, "width": 32, "num_frames": 5, "max_sequence_length": 8},
         tiny_cogvideox: {"height": 32, "width": 32, "num_frames": 9, "max_sequence_length": 6}}


def _frames(pipe, size):
    out = pipe(PROMPTS, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0), **size)
    return torch.as_tensor(out.frames)


def _psnr(ref, out):
    return float(10 * torch.log10(1.0 / (ref - out).pow(2).mean()))  # frames in [0, 1]


@pytest.fixture(scope="module")
def references():
    return {build: _frames(build(), size) for build, size in SIZES.items()}


def test_calibration_reads_the_frames_of_a_video_pipeline():
    calls = capture_trajectory(tiny_wan(), PROMPTS, batch_size=2, num_inference_steps=2, **SIZES[tiny_wan])
    assert len(calls) == 2 * 2  # 2 steps; Wan runs cond and uncond as separate calls
    assert calls[0].kwargs["hidden_states"].shape == (2, 4, 2, 4, 4)  # (batch, channels, frames, h, w)
    assert [round(c.timestep, 2) for c in calls] == [1000.0, 1000.0, 8.93, 8.93]  # shifted sigmas x 1000
    calls = capture_trajectory(tiny_cogvideox(), PROMPTS, batch_size=2, num_inference_steps=2,
                               **SIZES[tiny_cogvideox])
    assert len(calls) == 2  # CogVideoX batches uncond and cond into one call
    assert calls[0].kwargs["hidden_states"].shape == (4, 3, 4, 4, 4)  # (2 x batch, frames, channels, h, w)
    assert [c.timestep for c in calls] == [500.0, 0.0]


# PSNR bars (dB) to the float frames, a few dB under what each measures (Wan 46.1, 38.8; CogVideoX 50.0, 36.3; a
# model of another seed: Wan 15.6, CogVideoX 7.8)
@pytest.mark.parametrize("build, recipe, bar", [(tiny_wan, "w8a8", 42.0), (tiny_wan, "w4a8", 34.0),
                                                (tiny_cogvideox, "w8a8", 46.0), (tiny_cogvideox, "w4a8", 33.0)],
                         ids=["wan-w8a8", "wan-w4a8", "cogvideox-w8a8", "cogvideox-w4a8"])
def test_video_pipeline_quantizes_and_exports(build, recipe, bar, references):
    size = SIZES[build]
    pipe = visq.quantize(build(), recipe, calib=PROMPTS, calib_options={"num_inference_steps": 2, **size},
                         progress=False)
    assert "attn1.processor.q_quantizer" in visq.summary(pipe)  # attention quantized, not silently float
    quantized = _frames(pipe, size)
    assert quantized.shape == references[build].shape == (2, size["num_frames"], 32, 32, 3)
    assert _psnr(references[build], quantized) > bar
    visq.export(pipe)
    assert _psnr(quantized, _frames(pipe, size)) > 100.0  # the integer kernels compute what the fake quantizers did


def test_pipeline_samples_reads_images_frames_or_tuples_and_names_the_fix():
    frames = torch.zeros(1, 5, 4, 4, 3)
    assert pipeline_samples(types.SimpleNamespace(frames=frames)) is frames
    assert pipeline_samples((frames,)) is frames
    with pytest.raises(TypeError, match=r"neither \.images nor \.frames.*CalibSet"):
        pipeline_samples(types.SimpleNamespace(audio=frames))
