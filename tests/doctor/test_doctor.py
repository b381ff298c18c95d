import pytest
import torch
from torch import nn

import visq
from visq.doctor import Diagnosis, doctor
from visq.testing import tiny_dit, tiny_vit


@pytest.fixture
def vit():
    return tiny_vit()


@pytest.fixture(scope="module")
def images():
    return torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _fragile_mlp() -> nn.Sequential:
    """Three linear layers; the middle one has one huge weight per output row, so at 4 bits (per-channel
    min-max) every other weight of that layer rounds to zero."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    with torch.no_grad():
        model[2].weight[:, 0] = 40 * model[2].weight.abs().max()
    return model


def test_the_fragile_layer_ranks_first():
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    diag = doctor(_fragile_mlp(), "w4a8", calib=x, bits=(2, 4, 8), progress=False)
    assert diag.ranking()[0] == "2.weight_quantizer"
    assert diag.ranking("weight")[0] == "2.weight_quantizer"
    top = diag.sites[0]
    # more bits, less error; at 2 and 4 bits the small weights all round to zero alike, so those two errors agree
    # up to float rounding
    assert top.model_mse[2] == pytest.approx(top.model_mse[4], rel=1e-4) and top.model_mse[4] > top.model_mse[8] > 0
    assert top.layer_mse[4] > 0 and diag.sqnr(top.model_mse[8]) > diag.sqnr(top.model_mse[4])
    assert {s.role for s in diag.sites} == {"weight", "activation"} and len(diag.sites) == 6
    assert diag.sites[0].size == 32 * 32


def test_doctor_leaves_the_model_float_and_refuses_a_quantized_one(vit, images):
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    doctor(vit, "w8a8", calib=images, bits=(), progress=False)
    assert getattr(vit, "visq_state", None) is None
    assert all(torch.equal(before[k], v) for k, v in vit.state_dict().items())
    visq.quantize(vit, "w8a8", calib=images, progress=False)
    with pytest.raises(ValueError, match="already quantized"):
        doctor(vit, "w8a8", calib=images, progress=False)


def test_vit_top1_histograms_and_json_round_trip(vit, images, tmp_path):
    labels = torch.arange(16) % 10
    diag = doctor(vit, "w4a4", calib=images, bits=(), eval_data=(images, labels), top_k=2, histograms=2,
                  progress=False)
    assert diag.float_top1 is not None and len(diag.layer_top1) == 2
    assert all(s.top1_delta is not None for s in diag.sites if s.layer in diag.layer_top1)
    weight_hists = [h for h in diag.histograms if "weight" in h.what]
    assert len(weight_hists) == 2 and len(weight_hists[0].levels) == 16  # int4 grid
    assert sum(weight_hists[0].counts) > 0 and len(weight_hists[0].edges) == len(weight_hists[0].counts) + 1
    again = Diagnosis.load(diag.save(tmp_path / "d.json"))
    assert again.to_dict() == diag.to_dict()
    assert "| 1 |" in diag.table()
    with pytest.raises(ValueError, match="not measured"):
        diag.mixed(weight_bits=4.0, widths=(2, 4))


def test_mixed_recipe_quantizes_saves_and_loads_bit_identically(images, tmp_path):
    diag = doctor(tiny_vit(), "w4a8", calib=images, bits=(2, 4, 8), progress=False)
    recipe = diag.mixed(weight_bits=3.0, activation_bits=6.0)
    weights = [s for s in diag.sites if s.role == "weight"]
    chosen = {s.site: recipe.spec_for(s.site)[1].bits for s in weights}
    assert sum(s.size * chosen[s.site] for s in weights) / sum(s.size for s in weights) <= 3.0
    assert len(set(chosen.values())) > 1  # really mixed
    model = visq.quantize(tiny_vit(), recipe, calib=images, progress=False)
    assert "mixed-w3a6" in visq.summary(model)
    visq.save(model, tmp_path)
    fresh = visq.load(tiny_vit(seed=3), tmp_path)
    assert visq.summary(fresh) == visq.summary(model)
    assert fresh.visq_state.recipe == recipe
    state, loaded = model.state_dict(), fresh.state_dict()
    assert state.keys() == loaded.keys() and all(torch.equal(state[k], loaded[k]) for k in state)
    with torch.no_grad():
        assert torch.equal(fresh(images), model(images))


def test_diffusion_errors_are_measured_per_timestep():
    pipe = tiny_dit()
    diag = doctor(pipe, "w8a8", calib=[0, 1], bits=(), calib_options={"num_inference_steps": 3}, max_calls=3,
                  progress=False)
    assert diag.calls == 3 and diag.host == "diffusers"
    assert all(len(s.timestep_mse) == 3 for s in diag.sites)
    assert getattr(pipe.transformer, "visq_state", None) is None


def test_roles_limit_what_is_measured():
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(1))  # not the global RNG: no test-order effects
    diag = doctor(_fragile_mlp(), "w4a8", calib=x, bits=(4, 8), roles=("weight",), progress=False)
    assert {s.role for s in diag.sites} == {"weight"} and diag.ranking()[0] == "2.weight_quantizer"
    recipe = diag.mixed(weight_bits=6.0)
    chosen = [recipe.spec_for(s.site)[1].bits for s in diag.sites]
    assert 4 < sum(s.size * b for s, b in zip(diag.sites, chosen)) / sum(s.size for s in diag.sites) <= 6
    with pytest.raises(ValueError, match="quantizes no activations"):
        diag.mixed(activation_bits=6.0)
    with pytest.raises(ValueError, match="roles"):
        doctor(_fragile_mlp(), "w4a8", calib=x, roles=("bias",), progress=False)


def test_trajectory_errors_are_those_of_whole_sampling_runs():
    """over="trajectory": a site's error is the final-latent MSE of the pipeline with only that site quantized,
    the same number a user gets by quantizing that one layer and sampling with the same seeds."""
    from dataclasses import replace

    from visq.hosts.diffusers import sample_runs
    from visq.recipes import Recipe, Rule, parse
    from visq.testing import tiny_sd

    prompts, options = ["a red square", "a blue circle"], {"num_inference_steps": 2, "batch_size": 1}
    pipe = tiny_sd()
    unet = pipe.unet
    diag = doctor(pipe, "w4a8", calib=prompts, bits=(), roles=("weight",), over="trajectory",
                  calib_options=options, progress=False)
    assert pipe.unet is unet and getattr(unet, "visq_state", None) is None and diag.over == "trajectory"
    assert all(not s.timestep_mse for s in diag.sites)
    reference = list(sample_runs(pipe, prompts, **options))
    assert diag.output_power == pytest.approx(sum(r.pow(2).sum().item() for r in reference)
                                              / sum(r.numel() for r in reference))
    site = diag.sites[0]
    spec = parse("w4a8").spec_for(site.site)[1]
    alone = replace(Recipe(rules=(Rule(site.site, spec),), name="one-site"), keep_host_defaults=True)
    visq.quantize(pipe, alone, calib=prompts, calib_options=options, progress=False)
    runs = list(sample_runs(pipe, prompts, **options))
    mse = sum((q - r).pow(2).sum().item() for q, r in zip(runs, reference)) / sum(r.numel() for r in reference)
    assert site.model_mse[4] == pytest.approx(mse, rel=1e-4) and mse > 0
    fresh = tiny_sd()
    with pytest.raises(ValueError, match="samples the pipeline"):
        doctor(fresh.unet, "w4a8", calib=prompts, over="trajectory", progress=False)
    with pytest.raises(ValueError, match="over must be"):
        doctor(fresh, "w4a8", calib=prompts, over="steps", progress=False)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"bits": (1,)}, ValueError, r"candidate widths \[1\] are outside 2\.\.8"),
    ({"bits": 4}, TypeError, "bits must be a tuple of ints"),
    ({"max_calls": 0}, ValueError, "max_calls must be >= 1, got 0"),
    ({"top_k": 0}, ValueError, "top_k must be >= 1"),
    ({"histograms": -1}, ValueError, "histograms must be >= 0"),
    ({"roles": "weight"}, ValueError, "roles must be a non-empty subset"),
])
def test_bad_doctor_arguments_raise_before_any_measurement(kwargs, error, match):
    with pytest.raises(error, match=match):
        doctor(_fragile_mlp(), "w4a8", calib=torch.randn(8, 16), progress=False, **kwargs)
