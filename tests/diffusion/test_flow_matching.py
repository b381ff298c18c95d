"""Flow-matching pipelines (FlowMatchEulerDiscreteScheduler, sigma timesteps): a tiny FLUX.1 pipeline through every
calibration method, EfficientDM distillation and Q-Sched."""

import warnings

import numpy as np
import pytest
import torch

import visq
from visq import qsched
from visq.finetune import DistillSettings
from visq.hosts.diffusers import capture_trajectory
from visq.testing import tiny_flux

warnings.filterwarnings("ignore", category=FutureWarning)

PROMPTS = ["a red circle", "a blue square"]
SIZE = {"height": 16, "width": 16, "max_sequence_length": 8}
OPTIONS = {"num_inference_steps": 3, **SIZE}


def _latents(pipe):
    generator = torch.Generator().manual_seed(0)
    out = pipe(PROMPTS, num_inference_steps=3, output_type="latent", generator=generator, **SIZE)
    return torch.as_tensor(out.images)


@pytest.fixture(scope="module")
def reference():
    return _latents(tiny_flux())


def _psnr(ref, out):
    return float(10 * torch.log10(ref.abs().max() ** 2 / (ref - out).pow(2).mean()))


def test_capture_sees_sigma_timesteps_and_no_batched_guidance():
    pipe = tiny_flux()
    calls = capture_trajectory(pipe, PROMPTS, num_inference_steps=3, batch_size=2, **SIZE)
    # FLUX feeds its transformer the flow-matching sigma (timestep / 1000); guidance_scale (3.5 by default) is an
    # embedding, not a batched [uncond, cond] pair
    assert [round(c.timestep, 4) for c in calls] == [1.0, 0.6667, 0.3333]
    assert not any(c.cfg for c in calls)
    negative = capture_trajectory(pipe, PROMPTS, num_inference_steps=3, batch_size=2, true_cfg_scale=4.0,
                                  negative_prompt=["noise", "noise"], **SIZE)
    assert len(negative) == 6 and not any(c.cfg for c in negative)  # true CFG: a separate call per half


@pytest.mark.parametrize("method, bar", [("minmax", 60.0), ("temporal", 60.0), ("eda", 55.0), ("dgq", 50.0),
                                         ("qdiff", 60.0)])
def test_every_calibration_method_quantizes_flux(method, bar, reference):
    pipe = tiny_flux()
    visq.quantize(pipe, "w8a8", method=method, calib=PROMPTS, calib_options=OPTIONS, progress=False)
    assert _psnr(reference, _latents(pipe)) > bar


def test_efficientdm_distils_a_flow_matching_pipeline(reference, tmp_path):
    pipe = tiny_flux()
    visq.quantize(pipe, "w4a8", method="efficientdm", calib=PROMPTS, calib_options=OPTIONS, progress=False)
    before = _psnr(reference, _latents(pipe))
    result = visq.finetune(pipe, PROMPTS, steps=6, progress=False, out_dir=str(tmp_path),
                           settings=DistillSettings(call_kwargs=tuple(SIZE.items())))
    assert result.step == 6 and np.isfinite(result.metrics["loss"])
    assert _psnr(reference, _latents(pipe)) > before - 3  # a few steps on random weights: no collapse
    with pytest.raises(KeyError, match="timestep 0.5 was not calibrated"):  # other sigmas than calibrated
        visq.finetune(pipe, PROMPTS, steps=1, progress=False,
                      settings=DistillSettings(call_kwargs=(*SIZE.items(), ("sigmas", [1.0, 0.5, 0.25]))))


def test_qsched_tunes_a_flow_matching_sampler():
    pipe = tiny_flux()
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    expected = pipe(PROMPTS, num_inference_steps=3, output_type="np", generator=generators, **SIZE).images
    pipe.scheduler = qsched.QSchedScheduler.wrap(pipe.scheduler)
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    np.testing.assert_array_equal(pipe(PROMPTS, num_inference_steps=3, output_type="np", generator=generators,
                                       **SIZE).images, expected)  # identity coefficients: the sampler, bit for bit
    pipe = tiny_flux()
    visq.quantize(pipe, "w8a8", calib=PROMPTS, calib_options=OPTIONS, progress=False)
    reward = qsched.JAQ(compatibility=lambda im, c: im.mean(dim=(1, 2, 3)),
                        quality=lambda im, c: im.std(dim=(1, 2, 3)))
    result = qsched.tune(pipe, PROMPTS, steps=3, reward=reward, rounds=1, **SIZE)
    assert result.best.score >= result.identity.score
    assert type(pipe.scheduler).__name__ == "QSchedScheduler"
    assert pipe.scheduler.config["base_class"] == "FlowMatchEulerDiscreteScheduler"
