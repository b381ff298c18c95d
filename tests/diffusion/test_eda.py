import torch

import visq
from tests.diffusion.conftest import PROMPTS
from visq.methods.eda import allocate, density_diversity, select_calibration


def synthetic_clusters():
    """10 steps: 7 nearly identical features (a dense cluster) and 3 far apart, differently oriented ones."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(1, 2, 8, 4, generator=gen)
    dense = base + 0.01 * torch.randn(7, 2, 8, 4, generator=gen)
    spread = 3 * torch.randn(3, 2, 8, 4, generator=gen)
    return torch.cat([dense, spread])


def test_density_and_diversity_on_synthetic_clusters():
    density, diversity = density_diversity(synthetic_clusters())
    assert density[:7].min() > density[7:].max()  # the cluster is dense
    assert diversity[7:].min() > diversity[:7].max()  # the outliers are diverse
    assert density.max() == 1 and diversity.min() == 0  # min-max normalised


def test_selection_covers_dense_and_diverse_steps():
    density, diversity = density_diversity(synthetic_clusters())
    counts = allocate(density + 1.2 * diversity, 100)
    assert sum(counts) == 100
    assert sum(counts[:7]) > 0 and sum(counts[7:]) > 0
    only_density = allocate(density, 100)
    assert sum(counts[7:]) > sum(only_density[7:]) + 10  # diversity pulls samples to the spread steps


def test_allocate_rounding():
    assert allocate(torch.tensor([1.0, 1.0, 1.0]), 10) in ([4, 3, 3], [3, 4, 3], [3, 3, 4])
    assert allocate(torch.zeros(4), 8) == [2, 2, 2, 2]


def test_eda_selects_one_step_per_trajectory(trajectory):
    from visq import testing as tiny

    chosen = select_calibration(tiny.tiny_sd().unet, trajectory, max_batch=16)
    rows = sum(c.args[0].shape[0] for c in chosen)
    assert rows == 2 * 4  # 4 trajectories (2 runs x 2 prompts), both CFG halves each
    assert set(chosen.timesteps) <= set(trajectory.timesteps)


def test_eda_method_end_to_end(sd):
    visq.quantize(sd, "w8a8", method="eda", calib=PROMPTS, calib_options={"num_inference_steps": 3},
                  progress=False)
    assert visq.quant_state(sd).recipe.method == "eda"
    assert torch.isfinite(sd(PROMPTS[0], num_inference_steps=3, output_type="pt").images).all()


def test_fbr_lowers_the_block_error_on_tiny_sd(sd, trajectory):
    from visq.methods.fbr import denoiser_blocks, reconstruct_denoiser
    from visq.reconstruct import ReconConfig, capture, passthrough

    visq.quantize(sd, "w4a8", calib=trajectory, progress=False)
    unet = sd.unet
    with passthrough(unet):
        ref = capture(unet, ["up_blocks.1"], trajectory)["up_blocks.1"].output

    def error():
        out = capture(unet, ["up_blocks.1"], trajectory)["up_blocks.1"].output
        return (out - ref).pow(2).mean().item()

    before = error()
    losses = reconstruct_denoiser(unet, trajectory, 0.8, ReconConfig(iters=30, lr=1e-3, batch_size=8))
    assert set(losses) == set(denoiser_blocks(unet))
    assert error() < before
