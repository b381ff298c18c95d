"""Flow-matching pipelines (FlowMatchEulerDiscreteScheduler, sigma timesteps): tiny FLUX.1 (embedded guidance,
sigma timesteps) and SD3.5 (batched classifier-free guidance, timesteps in [0, 1000]) pipelines through every
calibration method, EfficientDM distillation and Q-Sched."""

import warnings

import numpy as np
import pytest
import torch

import visq
from visq import qsched
from visq.finetune import DistillSettings
from visq.hosts.diffusers import capture_trajectory
from visq.testing import tiny_flux, tiny_sd3

warnings.filterwarnings("ignore", category=FutureWarning)

PROMPTS = ["a red circle", "a blue square"]
SIZE = {"height": 16, "width": 16, "max_sequence_length": 8}
OPTIONS = {"num_inference_steps": 3, **SIZE}
PIPES = {"flux": tiny_flux, "sd3": tiny_sd3}


def _latents(pipe):
    generator = torch.Generator().manual_seed(0)
    out = pipe(PROMPTS, num_inference_steps=3, output_type="latent", generator=generator, **SIZE)
    return torch.as_tensor(out.images)


@pytest.fixture(scope="module")
def references():
    return {name: _latents(build()) for name, build in PIPES.items()}


@pytest.fixture(scope="module")
def reference(references):
    return references["flux"]


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


def test_sd3_capture_sees_its_batched_guidance_and_thousand_step_timesteps():
    calls = capture_trajectory(tiny_sd3(), PROMPTS, num_inference_steps=3, batch_size=2, **SIZE)
    assert [round(c.timestep, 1) for c in calls] == [1000.0, 500.5, 1.0]  # FlowMatchEuler sigmas x 1000
    assert all(c.cfg for c in calls)  # [uncond, cond] in one call of batch 4


# PSNR bars (dB) to the float latents, a few dB under what each measures (SD3 minmax 60.0, dgq 46.9: DGQ's log2
# attention probabilities)
BARS = {"flux": {"minmax": 60.0, "temporal": 60.0, "eda": 55.0, "dgq": 50.0, "qdiff": 60.0},
        "sd3": {"minmax": 56.0, "temporal": 56.0, "eda": 52.0, "dgq": 43.0, "qdiff": 56.0}}


@pytest.mark.parametrize("pipeline", list(PIPES))
@pytest.mark.parametrize("method", list(BARS["flux"]))
def test_every_calibration_method_quantizes_a_flow_matching_pipeline(pipeline, method, references):
    pipe, bar = PIPES[pipeline](), BARS[pipeline][method]
    visq.quantize(pipe, "w8a8", method=method, calib=PROMPTS, calib_options=OPTIONS, progress=False)
    assert visq.quant_state(pipe).timesteps  # calibrated per sampler step
    assert _psnr(references[pipeline], _latents(pipe)) > bar


def test_sd3_pipeline_exports_and_reloads_bit_identical(tmp_path):
    pipe = tiny_sd3()
    visq.quantize(pipe, "w8a8", calib=PROMPTS, calib_options=OPTIONS, progress=False)
    visq.export(pipe)
    expected = _latents(pipe)
    visq.save(pipe, str(tmp_path))
    fresh = tiny_sd3()
    with torch.no_grad():  # the transformer's weights must come from the folder
        for param in fresh.transformer.parameters():
            param.add_(1.0)
    visq.load(fresh, str(tmp_path))
    torch.testing.assert_close(_latents(fresh), expected, rtol=0, atol=0)


@pytest.mark.parametrize("pipeline", list(PIPES))
def test_efficientdm_distils_a_flow_matching_pipeline(pipeline, references, tmp_path):
    pipe, reference = PIPES[pipeline](), references[pipeline]
    visq.quantize(pipe, "w4a8", method="efficientdm", calib=PROMPTS, calib_options=OPTIONS, progress=False)
    before = _psnr(reference, _latents(pipe))
    result = visq.finetune(pipe, PROMPTS, steps=6, progress=False, out_dir=str(tmp_path),
                           settings=DistillSettings(call_kwargs=tuple(SIZE.items())))
    assert result.step == 6 and np.isfinite(result.metrics["loss"])
    assert _psnr(reference, _latents(pipe)) > before - 3  # a few steps on random weights: no collapse
    with pytest.raises(KeyError, match="timestep (0.5|500) was not calibrated"):  # other sigmas than calibrated
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
