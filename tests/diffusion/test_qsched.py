"""Q-Sched (visq.qsched): the scheduler wrapper, its save/load round trips, the search and its errors."""

import json

import numpy as np
import pytest
import torch

import visq
from visq import testing as tiny
from visq.qsched import JAQ, QSchedScheduler, check_steps, tune

PROMPTS = ["a red circle", "a blue square", "a small green star"]


def _images(pipe, steps=4, prompts=PROMPTS, **kwargs):
    generators = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    with torch.no_grad():
        return pipe(prompts, num_inference_steps=steps, generator=generators, output_type="np", **kwargs).images


def _brightness(images, conditions):
    return images.mean(dim=(1, 2, 3))


def _contrast(images, conditions):
    return images.std(dim=(1, 2, 3))


@pytest.fixture(scope="module")
def qsd():
    pipe = tiny.tiny_sd()
    visq.quantize(pipe, "w8a8", calib=PROMPTS[:2], calib_options={"num_inference_steps": 4}, progress=False)
    return pipe


@pytest.mark.parametrize("kind", ["DDIMScheduler", "EulerAncestralDiscreteScheduler"])
def test_identity_coefficients_reproduce_the_sampler_exactly(kind):
    import diffusers

    pipe = tiny.tiny_sd()
    pipe.scheduler = getattr(diffusers, kind).from_config(pipe.scheduler.config)
    # the ancestral sampler draws noise from the pipeline's generators: they must reach base.step through the wrapper
    expected = _images(pipe, eta=1.0)
    for coeff in ([1.0] * 4, None):
        pipe.scheduler = QSchedScheduler.wrap(pipe.scheduler, coeff, coeff)
        assert type(pipe.scheduler).__name__ == "QSchedScheduler"
        np.testing.assert_array_equal(_images(pipe, eta=1.0), expected)


def test_step_scales_model_output_and_sample():
    base = tiny._ddim()
    wrapped = QSchedScheduler.wrap(base, [0.9, 1.2, 1.0], [1.1, 0.95, 1.0])
    wrapped.set_timesteps(3)
    base.set_timesteps(3)
    eps, x = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = wrapped.timesteps[1]
    got = wrapped.step(eps, t, x).prev_sample
    torch.testing.assert_close(got, base.step(1.2 * eps, t, 0.95 * x).prev_sample, rtol=0, atol=0)
    assert wrapped.config["steps_offset"] == 1 and wrapped.init_noise_sigma == base.init_noise_sigma
    ramp = QSchedScheduler.ramp(base, 4, 0.8, 1.1)
    assert ramp.config["model_coeff"] == pytest.approx([0.8, 0.8 + 0.2 / 3, 0.8 + 0.4 / 3, 1.0])
    assert ramp.config["sample_coeff"][0] == 1.1 and ramp.config["sample_coeff"][-1] == 1.0
    assert QSchedScheduler.wrap(ramp).config["base_class"] == "DDIMScheduler"  # never nested


def test_other_step_counts_interpolate_the_ramp(caplog):
    wrapped = QSchedScheduler.ramp(tiny._ddim(), 4, 0.8, 1.1)
    for steps in (4, 7, 2):
        model, sample = wrapped.coefficients(steps)
        assert model == pytest.approx(np.linspace(0.8, 1.0, steps))
        assert sample == pytest.approx(np.linspace(1.1, 1.0, steps))
    wrapped.set_timesteps(7)
    assert "tuned for 4 steps and samples 7" in caplog.text


def test_pipeline_save_pretrained_round_trip(tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe = tiny.tiny_sd()
    pipe.scheduler = QSchedScheduler.ramp(pipe.scheduler, 4, 1.05, 0.97)
    expected = _images(pipe)
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["scheduler"] == ["visq.qsched", "QSchedScheduler"]
    loaded = StableDiffusionPipeline.from_pretrained(tmp_path, safety_checker=None, feature_extractor=None,
                                                     requires_safety_checker=False)
    assert isinstance(loaded.scheduler, QSchedScheduler)
    assert loaded.scheduler.config["model_coeff"] == pipe.scheduler.config["model_coeff"]
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(_images(loaded), expected)
    alone = QSchedScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert alone.config["sample_coeff"] == pipe.scheduler.config["sample_coeff"]


def test_visq_save_load_round_trip(qsd, tmp_path):
    original = qsd.scheduler
    try:
        qsd.scheduler = QSchedScheduler.ramp(original, 4, 0.9, 1.05)
        expected = _images(qsd)
        visq.save(qsd, tmp_path)
        fresh = visq.load(tiny.tiny_sd(), tmp_path)  # same float text encoder / VAE
        assert isinstance(fresh.scheduler, QSchedScheduler)
        assert fresh.scheduler.config["model_coeff"] == qsd.scheduler.config["model_coeff"]
        np.testing.assert_array_equal(_images(fresh), expected)
        qsd.scheduler = original  # saving again without Q-Sched drops the stale scheduler
        visq.save(qsd, tmp_path)
        assert type(visq.load(tiny.tiny_sd(seed=3), tmp_path).scheduler).__name__ == "DDIMScheduler"
    finally:
        qsd.scheduler = original


def test_search_is_deterministic_and_picks_the_best(qsd):
    reward, fast = JAQ(_brightness, _contrast, k=2.0), {"guidance_scale": 1.0}  # no CFG: half the cost
    first = tune(qsd, PROMPTS[:2], 2, reward=reward, search="coarse", rounds=1, seed=3, apply=False, **fast)
    again = tune(qsd, PROMPTS[:2], 2, reward=reward, search="coarse", rounds=1, seed=3, apply=False, **fast)
    assert first.trace == again.trace and first.best == again.best
    assert first.best == max(first.trace, key=lambda c: c.score) and first.best.score >= first.identity.score
    assert first.identity.model == first.identity.sample == 1.0
    assert first.candidates <= 1 + 9 + 8 and first.pipeline_calls == first.candidates  # one batch per candidate
    assert type(qsd.scheduler).__name__ == "DDIMScheduler"  # apply=False keeps the original
    original = qsd.scheduler
    generators = [torch.Generator().manual_seed(3 + i) for i in range(2)]
    try:  # the best candidate's score is what sampling with the returned scheduler gives
        qsd.scheduler = first.scheduler
        with torch.no_grad():
            images = qsd(PROMPTS[:2], num_inference_steps=2, generator=generators, output_type="np", **fast).images
        score = reward(torch.from_numpy(images).permute(0, 3, 1, 2), PROMPTS[:2])[0]
        assert score == pytest.approx(first.best.score, rel=1e-6)
        qsd.scheduler = original
        grid = tune(qsd, PROMPTS[:2], 2, reward=reward, search="grid", grid_points=2, apply=True, **fast)
        assert grid.candidates == 5 and isinstance(qsd.scheduler, QSchedScheduler)  # 2 x 2 + the identity
        assert grid.best.model in (0.8, 1.0, 1.1) and grid.scheduler.config["model_coeff"][0] == grid.best.model
    finally:
        qsd.scheduler = original


def test_dit_pipeline():
    pipe = tiny.tiny_dit()
    visq.quantize(pipe, "w8a8", calib=[0, 1], calib_options={"num_inference_steps": 4}, progress=False)
    result = tune(pipe, [0, 1], 4, reward=JAQ(_brightness, _contrast), search="grid", grid_points=2)
    assert result.candidates == 5 and isinstance(pipe.scheduler, QSchedScheduler)
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    with torch.no_grad():
        images = pipe([0, 1], num_inference_steps=4, generator=generators, output_type="np").images
    assert images.shape[0] == 2 and np.isfinite(images).all()


def test_errors(qsd):
    from diffusers import DPMSolverMultistepScheduler

    reward = JAQ(_brightness, _contrast)
    with pytest.raises(ValueError, match="quantize it first"):
        tune(tiny.tiny_sd(), PROMPTS, 4, reward=reward)
    with pytest.raises(ValueError, match="cannot sample in 2000 steps"):
        tune(qsd, PROMPTS, 2000, reward=reward)
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match="positive int"):
            check_steps(qsd.scheduler, bad)
    with pytest.raises(ValueError, match="at least one prompt"):
        tune(qsd, [], 4, reward=reward)
    with pytest.raises(ValueError, match="unknown search"):
        tune(qsd, PROMPTS, 4, reward=reward, search="annealing")
    with pytest.raises(ValueError, match="first-order sampler"):
        QSchedScheduler.wrap(DPMSolverMultistepScheduler())
    with pytest.raises(ValueError, match="one value per sampler step"):
        QSchedScheduler.wrap(qsd.scheduler, [1.0, 1.0], [1.0])
    nan = JAQ(lambda images, c: images.mean((1, 2, 3)) * float("nan"), _contrast)
    with pytest.raises(ValueError, match="not finite"):
        tune(qsd, PROMPTS, 4, reward=nan, apply=False)
    assert type(qsd.scheduler).__name__ == "DDIMScheduler"  # restored after the error
