import torch

from visq import testing as tiny
from visq.trajectory import merge, rebatch, sample_rows, select, uniform_steps


def test_capture_records_runs_steps_and_cfg(trajectory):
    assert len(trajectory) == 6
    assert [(c.run, c.step) for c in trajectory] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert all(c.cfg and c.args[0].shape[0] == 4 for c in trajectory)
    assert trajectory.timesteps == tuple(float(t) for t in (667, 334, 1))
    assert sample_rows(trajectory[0], 1) == [1, 3]


def test_select_and_merge_keep_cfg_halves_and_outputs(trajectory):
    unet = tiny.tiny_sd().unet
    a, b = select(trajectory[0], [1]), select(trajectory[3], [0])
    assert torch.equal(a.args[0], trajectory[0].args[0][[1, 3]])
    merged = merge([a, b])
    assert merged.args[0].shape[0] == 4
    with torch.no_grad():
        out_a = unet(*a.args, **a.kwargs)[0]
        out_b = unet(*b.args, **b.kwargs)[0]
        out = unet(*merged.args, **merged.kwargs)[0]
    expected = torch.cat([out_a[:1], out_b[:1], out_a[1:], out_b[1:]])  # [uncond a, uncond b, cond a, cond b]
    assert torch.allclose(out, expected, atol=1e-5)


def test_rebatch_groups_by_timestep(trajectory):
    batched = rebatch(trajectory, max_samples=4)
    assert len(batched) == 3 and [c.args[0].shape[0] for c in batched] == [8, 8, 8]
    assert batched.timesteps == trajectory.timesteps


def test_uniform_steps(trajectory):
    kept = uniform_steps(trajectory, 2)
    assert kept.timesteps == (667.0, 334.0) and len(kept) == 4
    assert uniform_steps(trajectory, 5) is trajectory
