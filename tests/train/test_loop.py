"""The shared training loop: exact updates, schedules, resume equals an uninterrupted run, errors."""

import json
import math

import pytest
import torch
from torch import nn

from visq.train import StepOutput, TrainSettings, TrainTask, fit, read_metrics


class Regression(TrainTask):
    """A small MLP with dropout on random data drawn from the step's generator (exercises all seeding paths)."""

    name = "regression"

    def __init__(self, crash_at: int | None = None) -> None:
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))
        self.crash_at = crash_at

    def modules(self):
        return {"model": self.model}

    def param_groups(self):
        return [{"params": list(self.model.parameters()), "lr": 1e-2, "name": "all"}]

    def step(self, step, generator):
        if step == self.crash_at:
            raise KeyboardInterrupt("simulated kill")
        x = torch.randn(32, 4, generator=generator)
        y = x.sum(dim=1, keepdim=True)
        return StepOutput(nn.functional.mse_loss(self.model(x), y), {"batch_mean": float(y.mean())})


def _weights(task: Regression) -> list[torch.Tensor]:
    return [p.detach().clone() for p in task.model.parameters()]


def test_one_sgd_step_matches_closed_form():
    w = nn.Parameter(torch.tensor([3.0, -1.0]))

    class Quadratic(TrainTask):
        def modules(self):
            return {"w": nn.ParameterList([w])}

        def param_groups(self):
            return [{"params": [w], "lr": 0.1}]

        def step(self, step, generator):
            return StepOutput((w**2).sum() / 2)  # gradient = w

    fit(Quadratic(), TrainSettings(steps=1, optimizer="sgd", schedule="constant", progress=False))
    assert torch.allclose(w.detach(), torch.tensor([2.7, -0.9]))


def test_loss_goes_down_and_metrics_stream(tmp_path):
    task = Regression()
    result = fit(task, TrainSettings(steps=60, out_dir=str(tmp_path), log_every=10, progress=False))
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [10, 20, 30, 40, 50, 60]
    assert records[-1]["loss"] < 0.5 * records[0]["loss"]
    assert "batch_mean" in records[0] and "lr" in records[0]
    assert result.step == 60 and result.peak_memory_mb > 0
    assert json.loads((tmp_path / "run.json").read_text())["task"] == "regression"


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path):
    settings = dict(steps=25, checkpoint_every=4, log_every=5, seed=3, progress=False)
    straight = Regression()
    fit(straight, TrainSettings(out_dir=str(tmp_path / "a"), **settings))

    with pytest.raises(KeyboardInterrupt):
        fit(Regression(crash_at=14), TrainSettings(out_dir=str(tmp_path / "b"), **settings))
    resumed = Regression()  # a fresh process would rebuild the task from scratch, then load the checkpoint
    fit(resumed, TrainSettings(out_dir=str(tmp_path / "b"), **settings))

    for a, b in zip(_weights(straight), _weights(resumed)):
        assert torch.equal(a, b)
    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")


def test_resume_with_other_settings_raises(tmp_path):
    fit(Regression(), TrainSettings(steps=3, out_dir=str(tmp_path), progress=False))
    with pytest.raises(ValueError, match="other settings.*steps"):
        fit(Regression(), TrainSettings(steps=5, out_dir=str(tmp_path), progress=False))
    # settings that do not change the result may differ
    fit(Regression(), TrainSettings(steps=3, out_dir=str(tmp_path), progress=False, desc="again"))


def test_gradient_filled_by_the_task_is_applied():
    """Zeroth-order methods set .grad themselves and return a loss without a graph."""
    w = nn.Parameter(torch.zeros(3))

    class FixedGradient(TrainTask):
        def modules(self):
            return {"w": nn.ParameterList([w])}

        def param_groups(self):
            return [{"params": [w], "lr": 0.5}]

        def step(self, step, generator):
            with torch.no_grad():
                w.grad = torch.tensor([1.0, -2.0, 0.0])
                return StepOutput(torch.tensor(1.0))

    fit(FixedGradient(), TrainSettings(steps=1, optimizer="sgd", schedule="constant", progress=False))
    assert torch.allclose(w.detach(), torch.tensor([-0.5, 1.0, 0.0]))


def test_schedules():
    cos = TrainSettings(steps=10, warmup_steps=2, min_lr_ratio=0.1)
    assert [cos.lr_factor(s) for s in (0, 1)] == [0.5, 1.0]
    assert cos.lr_factor(2) == 1.0 and math.isclose(cos.lr_factor(10), 0.1)
    assert TrainSettings(steps=4, schedule="linear").lr_factor(2) == 0.5
    assert TrainSettings(steps=4, schedule="constant").lr_factor(3) == 1.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps"),
    (dict(steps=1, optimizer="lion"), "optimizer"),
    (dict(steps=1, schedule="step"), "sched"),
])
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainSettings(**kwargs)


def test_bad_parameter_groups_raise():
    p = nn.Parameter(torch.zeros(1))

    class Twice(TrainTask):
        def modules(self):
            return {}

        def param_groups(self):
            return [{"params": [p]}, {"params": [p], "name": "again"}]

    with pytest.raises(ValueError, match="two groups"):
        fit(Twice(), TrainSettings(steps=1, progress=False))


def test_two_processes_average_gradients(tmp_path):
    """`accelerate launch` with 2 CPU processes equals one process averaging both processes' losses."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.train._launch_fit import train

    script = Path(__file__).parent / "_launch_fit.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script),
           str(tmp_path / "w.pt")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = torch.load(tmp_path / "w.pt")
    for a, b, solo in zip(two, train(ranks=2), train()):
        assert torch.allclose(a, b, atol=1e-6)
        assert not torch.allclose(a, solo, atol=1e-4)  # the second process's data did reach the update
