"""EfficientDM distillation: it learns, resumes exactly, round-trips through save / load, runs on a DiT."""

import copy

import numpy as np
import pytest
import torch

import visq
from tests.efficientdm.conftest import PROMPTS, STEPS
from visq import testing as tiny
from visq.finetune import DistillSettings, DistillTask, finetune, float_teacher, guided_eps, merge_lora
from visq.train import read_metrics

FAST = DistillSettings(lora_lr=0.05, act_lr=0.05, guidance_scale=4.0)


def _images(pipe, teacher: bool = False) -> np.ndarray:
    with torch.no_grad():
        if teacher:
            with float_teacher(pipe.unet):
                return _images(pipe)
        return pipe(PROMPTS, num_inference_steps=STEPS, guidance_scale=4.0, output_type="np",
                    generator=torch.Generator().manual_seed(7)).images


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


def _held_out_loss(task: DistillTask) -> float:
    """Distillation loss summed over one fixed trajectory that training never draws."""
    total = 0.0
    with torch.no_grad():
        for record in task.teacher(seed=12345):
            eps = guided_eps(task.pipe, task.model, task.model(*record.call.args, **record.call.kwargs), task.cfg,
                             task.guidance)
            total += float((eps - record.target).pow(2).sum())
    return total


def test_short_distillation_lowers_the_loss_and_raises_psnr_to_float(qsd):
    pipe = qsd
    reference = _images(pipe, teacher=True)
    before_psnr = _psnr(_images(pipe), reference)
    task = DistillTask(pipe, PROMPTS, FAST)
    before = _held_out_loss(task)
    finetune(pipe, PROMPTS, epochs=4, settings=FAST, progress=False)
    after = _held_out_loss(task)
    after_psnr = _psnr(_images(pipe), reference)
    assert after < 0.7 * before, (before, after)  # measured: 0.48x
    assert after_psnr > before_psnr + 0.5, (before_psnr, after_psnr)  # measured: 23.75 -> 25.00 dB


def _state(pipe) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}


def test_resume_mid_trajectory_equals_an_uninterrupted_run(tmp_path, monkeypatch, _quantized):
    options = dict(steps=2 * STEPS, settings=FAST, progress=False, checkpoint_every=2, log_every=1, seed=5)
    straight = copy.deepcopy(_quantized)
    finetune(straight, PROMPTS, out_dir=str(tmp_path / "a"), **options)

    crashed = copy.deepcopy(_quantized)
    original = DistillTask.step

    def crash(self, step, generator):
        if step == STEPS + 1:  # inside the second trajectory: the resumed run must replay its teacher
            raise KeyboardInterrupt("simulated kill")
        return original(self, step, generator)

    monkeypatch.setattr(DistillTask, "step", crash)
    with pytest.raises(KeyboardInterrupt):
        finetune(crashed, PROMPTS, out_dir=str(tmp_path / "b"), **options)
    monkeypatch.setattr(DistillTask, "step", original)
    resumed = copy.deepcopy(_quantized)
    finetune(resumed, PROMPTS, out_dir=str(tmp_path / "b"), **options)

    a, b = _state(straight), _state(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")


def test_fine_tuned_pipeline_round_trips_through_save_and_load(tmp_path, qsd):
    pipe = qsd
    finetune(pipe, PROMPTS, steps=2, settings=FAST, progress=False)
    expected = _images(pipe)
    visq.save(pipe, tmp_path / "lora")
    loaded = visq.load(tiny.tiny_sd(), tmp_path / "lora")
    assert np.array_equal(_images(loaded), expected)
    finetune(loaded, PROMPTS, steps=1, settings=FAST, progress=False)  # a loaded run can be trained further

    merge_lora(pipe)
    visq.save(pipe, tmp_path / "merged")
    merged = visq.load(tiny.tiny_sd(), tmp_path / "merged")
    assert np.array_equal(_images(merged), expected)
    assert "qalora" not in (tmp_path / "merged" / "quant.json").read_text()
    with pytest.raises(ValueError, match="QALoRA"):
        finetune(merged, PROMPTS, steps=1, progress=False)


def test_distillation_runs_on_a_dit_with_its_guidance_layout():
    pipe = tiny.tiny_dit()
    visq.quantize(pipe, "w4a8", method="efficientdm", calib=[0, 1], progress=False, rank=2,
                  calib_options={"num_inference_steps": STEPS, "guidance_scale": 4.0})
    task = DistillTask(pipe, [0, 1], FAST)
    record = task.teacher(seed=0)[0]
    with torch.no_grad(), float_teacher(pipe.transformer):
        out = pipe.transformer(*record.call.args, **record.call.kwargs).sample
    cond, uncond = out[:, :4].chunk(2)  # DiTPipeline batches [class, null class]; 8 channels = eps + variance
    torch.testing.assert_close(record.target, uncond + 4.0 * (cond - uncond))
    result = finetune(pipe, [0, 1], epochs=1, settings=FAST, progress=False)
    assert np.isfinite(result.metrics["loss"])


def test_bad_inputs_raise(qsd):
    with pytest.raises(ValueError, match="prompt strings"):
        DistillTask(qsd, [0, 1])
    assert DistillTask(qsd, PROMPTS).num_steps == STEPS  # the calibrated step count
    with pytest.raises(ValueError, match="QALoRA"):
        DistillTask(tiny.tiny_sd(), PROMPTS)
    qsd.scheduler = type(qsd.scheduler).from_config(qsd.scheduler.config, timestep_spacing="trailing")
    with pytest.raises(ValueError, match="calibrated ones"):
        DistillTask(qsd, PROMPTS)
