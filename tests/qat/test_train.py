"""visq.qat.train: loss goes down, resume equals an uninterrupted run, save -> load in a fresh process, bad input."""

import dataclasses
import json
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import visq
from visq.qat import QATConfig, metrics_of, train
from visq.testing import tiny_vit

from .conftest import draw


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_short_qat_run_lowers_the_distillation_loss(teacher, tmp_path):
    cfg = QATConfig(steps=30, anneal_steps=4, batch_size=8, calib_size=16, warmup_steps=2, lr=2e-3, log_every=5,
                    checkpoint_every=100)
    student = tiny_vit()
    train(student, "w3a3", draw, teacher=teacher, method="ofq", config=cfg, out_dir=tmp_path, progress=False)
    records = metrics_of(tmp_path, cfg)
    qat = [r["loss"] for r in records if r["phase"] == "qat"]
    assert qat[-1] < 0.6 * qat[0]
    assert {"osc_frac", "osc_ema", "flip_frac"} <= set(records[-1]) and "frozen_frac" in records[-1]
    assert (tmp_path / "oscillation.svg").read_text().startswith("<svg")
    assert not student.training


class Stream:
    """``draw`` that crashes on its ``crash_at``-th call and sleeps ``delay`` s per call (the run's settings record
    the data's name: "Stream")."""

    def __init__(self, crash_at: int | None = None, delay: float = 0.0) -> None:
        self.calls, self.crash_at, self.delay = 0, crash_at, delay

    def __call__(self, generator):
        self.calls += 1
        time.sleep(self.delay)
        if self.calls == self.crash_at:
            raise RuntimeError("simulated crash")
        return draw(generator)


def test_resume_after_a_crash_equals_an_uninterrupted_run(teacher, short, tmp_path):
    whole = tiny_vit()
    train(whole, "w2a2", Stream(), teacher=teacher, method="ofq", config=short, out_dir=tmp_path / "a",
          progress=False)
    # calibration takes 2 draws: call 8 is QAT step 6 (checkpoints every 2 steps: steps 5-6 are lost); the slow
    # draws make the crashed session's first 4 steps (saved in the checkpoint) take >= 1 s
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_vit(), "w2a2", Stream(crash_at=8, delay=0.25), teacher=teacher, method="ofq", config=short,
              out_dir=tmp_path / "b", progress=False)
    assert not (tmp_path / "b" / "anneal").exists()
    resumed = tiny_vit()
    train(resumed, "w2a2", Stream(), teacher=teacher, method="ofq", config=short, out_dir=tmp_path / "b",
          progress=False)
    a, b = _state(whole), _state(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert metrics_of(tmp_path / "a", short) == metrics_of(tmp_path / "b", short)
    seconds = json.loads((tmp_path / "b" / "time.json").read_text())
    assert set(seconds) == {"calibration_s", "qat_s", "anneal_s"}
    assert seconds["qat_s"] >= 1.0  # the crashed session's checkpointed time counts in the resumed run


def test_resume_with_other_settings_raises(teacher, short, tmp_path):
    train(tiny_vit(), "w2a2", draw, teacher=teacher, method="ofq", config=short, out_dir=tmp_path, progress=False)
    other = dataclasses.replace(short, batch_size=4)
    with pytest.raises(ValueError, match="other settings.*batch_size"):
        train(tiny_vit(), "w2a2", draw, teacher=teacher, method="ofq", config=other, out_dir=tmp_path,
              progress=False)


def test_qat_model_save_load_is_bit_identical_in_a_fresh_process(teacher, short, tmp_path):
    student = tiny_vit()
    train(student, "w2a2", draw, teacher=teacher, method="ofq", config=short, progress=False)
    visq.save(student, tmp_path / "model")
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.save({"x": x, "y": student(x)}, tmp_path / "io.pt")
    code = textwrap.dedent(f"""
        import torch, visq
        from visq.testing import tiny_vit
        model = visq.load(tiny_vit(seed=5), {str(tmp_path / "model")!r})
        ref = torch.load({str(tmp_path / "io.pt")!r})
        with torch.no_grad():
            assert torch.equal(model(ref["x"]), ref["y"]), "outputs differ"
        print("ok", visq.quant_state(model).recipe.method)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok ofq"


def test_bad_input_raises_clear_errors(teacher, short):
    with pytest.raises(ValueError, match="trains methods .*'lsq', 'ofq'.*got 'repq'"):
        train(tiny_vit(), "w2a2", draw, teacher=teacher, method="repq", config=short)
    with pytest.raises(ValueError, match="invalid recipe 'w9a2'"):
        train(tiny_vit(), "w9a2", draw, teacher=teacher, method="lsq", config=short)
    with pytest.raises(ValueError, match="data is required"):
        train(tiny_vit(), "w2a2", None, teacher=teacher, config=short)
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    with pytest.raises(ValueError, match="needs timm Attention blocks"):
        train(mlp, "w2a2", draw, teacher=teacher, method="ofq", config=short)


@pytest.mark.parametrize("change, match", [
    ({"anneal_steps": -1}, "anneal_steps must be >= 0, got -1"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"lr": 0.0}, "lr must be a finite number > 0"),
    ({"min_lr_ratio": 2.0}, r"min_lr_ratio must be in \[0, 1\]"),
    ({"grad_clip": -1.0}, "grad_clip must be a finite number > 0"),
])
def test_bad_config_values_raise(change, match):
    with pytest.raises(ValueError, match=match):
        QATConfig(**change)


def test_teacher_and_data_are_checked_before_the_model_changes(teacher, short):
    student = tiny_vit()
    before = _state(student)
    with pytest.raises(TypeError, match="teacher must be the float nn.Module .*got str 'deit'"):
        train(student, "w2a2", draw, teacher="deit", config=short)
    with pytest.raises(ValueError, match="teacher is the model itself"):
        train(student, "w2a2", draw, teacher=student, config=short)
    with pytest.raises(ValueError, match="NaN or inf"):
        train(student, "w2a2", torch.full((8, 3, 32, 32), float("nan")), teacher=teacher, config=short)
    with pytest.raises(TypeError, match="data must be a tensor of inputs or fn"):
        train(student, "w2a2", [1, 2], teacher=teacher, config=short)
    assert getattr(student, "visq_state", None) is None
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())


def test_a_failed_run_leaves_the_float_model_so_a_retry_works(teacher, short, tmp_path):
    train(tiny_vit(), "w2a2", draw, teacher=teacher, method="ofq", config=short, out_dir=tmp_path, progress=False)
    student = tiny_vit()
    before, kinds = _state(student), [type(m) for m in student.modules()]
    other = dataclasses.replace(short, batch_size=4)  # the folder refuses these settings once training starts
    with pytest.raises(ValueError, match="other settings"):
        train(student, "w2a2", draw, teacher=teacher, method="ofq", config=other, out_dir=tmp_path, progress=False)
    assert getattr(student, "visq_state", None) is None and [type(m) for m in student.modules()] == kinds
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())  # QKR and training undone
    train(student, "w2a2", draw, teacher=teacher, method="ofq", config=short, progress=False)  # the retry runs
