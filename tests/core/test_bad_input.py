"""Issue 26: bad input gets a clear error before anything changes; saved folders are checked before they load."""

import json
import pickle
import shutil

import pytest
import torch

import visq
from tests.core.test_errors import assert_unchanged, snapshot
from visq import Recipe, Rule, Uniform
from visq.guard import restored_on_error
from visq.methods import METHODS
from visq.methods.base import Method
from visq.testing import tiny_vit
from visq.train.run_dir import RunDir

PROMPTS = ["a red circle", "a blue square"]


@pytest.mark.parametrize("kwargs, error, match", [
    ({"bits": "8"}, TypeError, "bits must be an int, got str '8'"),
    ({"bits": 8.0}, TypeError, "bits must be an int"),
    ({"bits": 1, "symmetric": True}, ValueError, "symmetric grids need bits >= 2"),
    ({"bits": 0}, ValueError, r"bits must be in 1\.\.16, got 0"),
    ({"granularity": "group", "group_size": -4}, ValueError, "group_size must be >= 0"),
])
def test_bad_uniform_specs_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        Uniform(**kwargs)


def test_one_bit_asymmetric_weights_stay_finite(vit, images):
    recipe = Recipe((Rule("*.weight_quantizer", Uniform(bits=1, granularity="channel")),
                     Rule("*.input_quantizer", None)))
    visq.quantize(vit, recipe, calib=images[:4], progress=False)
    with torch.no_grad():
        assert torch.isfinite(vit(images[:2])).all()


@pytest.mark.parametrize("options, match", [
    ({"batchsize": 4}, r"unknown calibration options \['batchsize'\]"),
    ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
    ({"batch_size": "4"}, "batch_size must be an int"),
])
def test_bad_module_calib_options_raise(vit, images, options, match):
    before = snapshot(vit)
    with pytest.raises((ValueError, TypeError), match=match):
        visq.quantize(vit, "w8a8", calib=images, calib_options=options, progress=False)
    assert_unchanged(vit, before)


@pytest.mark.parametrize("calib, options, match", [
    (PROMPTS, {"num_inference_step": 2}, r"unknown calibration options \['num_inference_step'\].*guidance_scale"),
    (PROMPTS, {"num_inference_steps": 0}, "num_inference_steps must be >= 1, got 0"),
    (PROMPTS, {"num_inference_steps": 2, "batch_size": 0}, "batch_size must be >= 1"),
    (PROMPTS, {"num_inference_steps": 2, "generator": None}, r"unknown calibration options \['generator'\]"),
    (torch.randn(2, 77), {}, "list of prompt strings, got a Tensor"),
    ("a red circle", {}, r"got 'a red circle' \(one prompt: calib=\['a red circle'\]\)"),
])
def test_bad_pipeline_calibration_raises_before_sampling(sd, calib, options, match):
    before = snapshot(sd.unet)
    with pytest.raises(ValueError, match=match):
        visq.quantize(sd, "w8a8", calib=calib, calib_options=options, progress=False)
    assert_unchanged(sd.unet, before)


def test_dit_class_ids_outside_the_table_raise(dit):
    classes = dit.transformer.config.num_embeds_ada_norm
    with pytest.raises(ValueError, match=rf"class ids \[{classes}\] are outside the model's 0\.\.{classes - 1}"):
        visq.quantize(dit, "w8a8", calib=[0, classes], calib_options={"num_inference_steps": 2}, progress=False)
    with pytest.raises(ValueError, match="list of class ids"):
        visq.quantize(dit, "w8a8", calib=[0, True], progress=False)


@pytest.mark.parametrize("method, kwargs, match", [
    ("ias", {"batch_size": 0}, "batch_size must be >= 1, got 0"),
    ("ias", {"lr": -1.0}, "lr must be a finite number > 0, got -1.0"),
    ("dopq", {"iters": -1}, "iters must be >= 0"),
    ("noisyquant", {"max_rows": 0}, "max_rows must be >= 1"),
])
def test_bad_vit_method_options_raise_before_the_model_changes(vit, images, method, kwargs, match):
    before = snapshot(vit)
    flags = [p.requires_grad for p in vit.parameters()]
    with pytest.raises(ValueError, match=match):
        visq.quantize(vit, "w4a4", method=method, calib=images, progress=False, **kwargs)
    assert_unchanged(vit, before)
    assert flags == [p.requires_grad for p in vit.parameters()]


@pytest.mark.parametrize("method, kwargs, match", [
    ("dgq", {"groups": 0}, "dgq groups must be >= 1, got 0"),
    ("eda", {"gamma": 2.0}, r"gamma .* must be in \[0, 1\]"),
    ("qdiff", {"calib_steps": 0}, "calib_steps must be >= 1"),
    ("efficientdm", {"act_init": "max"}, "act_init must be one of"),
])
def test_bad_diffusion_method_options_raise(sd, method, kwargs, match):
    with pytest.raises(ValueError, match=match):
        visq.quantize(sd, "w8a8", method=method, calib=PROMPTS, progress=False, **kwargs)


class _FailingRefine(Method):
    """Flips requires_grad, hooks a layer and switches to train mode, then fails, as a broken reconstruction."""

    name = "failing-refine"

    def refine(self, pipe, model, calib):
        for p in model.parameters():
            p.requires_grad_(False)
        model.head.register_forward_hook(lambda *a: None)
        model.train()
        raise RuntimeError("refine failed")


def test_a_method_failing_mid_way_leaves_flags_hooks_and_modes_as_they_were(vit, images, monkeypatch):
    monkeypatch.setitem(METHODS, _FailingRefine.name, _FailingRefine)
    vit.eval()
    before = snapshot(vit)
    with pytest.raises(RuntimeError, match="refine failed"):
        visq.quantize(vit, "w8a8", method=_FailingRefine.name, calib=images, progress=False)
    assert_unchanged(vit, before)
    assert all(p.requires_grad for p in vit.parameters()) and not vit.training
    assert not any(m._forward_hooks for m in vit.modules())
    visq.quantize(vit, "w8a8", calib=images, progress=False)  # a retry works: nothing says "already quantized"


def test_restored_on_error_passes_success_through():
    layer = torch.nn.Linear(2, 2)
    with restored_on_error(layer):
        layer.weight.requires_grad_(False)
    assert not layer.weight.requires_grad  # only a failure restores


# --- saved folders --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory, images):
    folder = tmp_path_factory.mktemp("saved")
    visq.save(visq.quantize(tiny_vit(), "w8a8", calib=images, progress=False), folder)
    return folder


def _edited(saved, tmp_path, change):
    folder = tmp_path / "q"
    shutil.copytree(saved, folder)
    meta = json.loads((folder / "quant.json").read_text())
    change(meta)
    (folder / "quant.json").write_text(json.dumps(meta))
    return folder


def _set(key, value):
    return lambda meta: meta.__setitem__(key, value)


def _first_site_bits(meta):
    site = next(iter(meta["sites"]))
    meta["sites"][site]["bits"] = 4


@pytest.mark.parametrize("change, match", [
    (lambda meta: meta.pop("format_version"), "no valid format_version .*not written by visq.save"),
    (_set("format_version", "2"), "no valid format_version"),
    (_first_site_bits, "changed after visq.save"),
    (lambda meta: meta["recipe"].__setitem__("method", "magic"), "changed after visq.save"),
    (_set("timesteps", "abc"), "changed after visq.save"),
])
def test_edited_quant_json_is_refused(saved, tmp_path, vit, change, match):
    folder = _edited(saved, tmp_path, change)
    before = snapshot(vit)
    with pytest.raises(ValueError, match=match):
        visq.load(vit, folder)
    assert_unchanged(vit, before)


def _without_digest(change):
    """A format-1 folder (no digests) with ``change`` applied: the content checks still catch it."""
    def edit(meta):
        meta["format_version"] = 1
        meta.pop("digest")
        change(meta)
    return edit


@pytest.mark.parametrize("change, match", [
    (lambda meta: meta["recipe"].__setitem__("method", "magic"), "malformed recipe.*unknown method 'magic'"),
    (_set("timesteps", "abc"), "timesteps must be a list of numbers, got 'abc'"),
    (_set("timesteps", [1.0, "x"]), "timesteps must be a list of numbers"),
    (lambda meta: meta["recipe"].__setitem__("rules", [{"spec": None}]), "malformed recipe.*KeyError"),
    (_set("sites", {"blocks.0.attn.qkv.weight_quantizer": {"type": "nope"}}), "unknown quantizer type 'nope'"),
    (_set("sites", ["a"]), "malformed recipe or sites"),
    (_set("float_layers", ["a"]), "float_layers must be a mapping"),
])
def test_malformed_format_1_quant_json_names_the_file(saved, tmp_path, vit, change, match):
    folder = _edited(saved, tmp_path, _without_digest(change))
    before = snapshot(vit)
    with pytest.raises(ValueError, match=match) as err:
        visq.load(vit, folder)
    assert "quant.json" in str(err.value)
    assert_unchanged(vit, before)


def test_format_1_folder_still_loads_with_a_warning(saved, tmp_path, images, caplog):
    folder = _edited(saved, tmp_path, _without_digest(lambda meta: None))
    model = visq.load(tiny_vit(), folder)
    reference = visq.load(tiny_vit(), saved)
    with torch.no_grad():
        assert torch.equal(model(images[:2]), reference(images[:2]))
    assert "format-1 folder" in caplog.text


def test_flipped_tensor_bytes_are_refused(saved, tmp_path, vit):
    folder = tmp_path / "q"
    shutil.copytree(saved, folder)
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF  # inside the tensor data: the file still parses
    (folder / "model.safetensors").write_bytes(bytes(data))
    before = snapshot(vit)
    with pytest.raises(ValueError, match="model.safetensors does not match the digest"):
        visq.load(vit, folder)
    assert_unchanged(vit, before)


def test_save_onto_a_file_raises_before_writing(vit, images, tmp_path):
    visq.quantize(vit, "w8a8", calib=images[:4], progress=False)
    (tmp_path / "file").write_text("x")
    for target in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(ValueError, match="is a file, not a folder"):
            visq.save(vit, target)
    assert (tmp_path / "file").read_text() == "x"


# --- run folders ------------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this would create a file: a stand-in for code a crafted checkpoint runs."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_crafted_checkpoint_is_refused_without_running_its_code(tmp_path):
    run = RunDir(tmp_path / "run")
    marker = tmp_path / "pwned"
    (tmp_path / "run" / "checkpoint.pt").write_bytes(pickle.dumps({"step": 1, "x": _Payload(str(marker))}, protocol=2))
    with pytest.raises(ValueError, match="not written by visq .*not unpickled"):
        run.load()
    assert not marker.exists()


def test_the_zoo_trainers_checkpoints_are_read_without_code_either(tmp_path):
    from visq.zoo.training import Checkpointer

    ckpt = Checkpointer(tmp_path)
    ckpt.maybe_save(lambda: {"step": 3, "model": {"w": torch.ones(2)}}, force=True)
    assert ckpt.load()["step"] == 3
    marker = tmp_path / "pwned"
    ckpt.path.write_bytes(pickle.dumps(_Payload(str(marker)), protocol=2))
    with pytest.raises(ValueError, match="not unpickled"):
        ckpt.load()
    assert not marker.exists()


@pytest.mark.parametrize("call, error, match", [
    (lambda m, x: visq.quantize(m, "w8a8", calib=x, calib_options=[1]), TypeError, "calib_options must be a dict"),
    (lambda m, x: visq.quantize(m, Recipe(("w8a8",)), calib=x), TypeError, "Recipe rules must be a tuple of visq"),
    (lambda m, x: Rule(3, Uniform()), TypeError, "Rule pattern must be a glob string"),
    (lambda m, x: Rule("*", "int8"), TypeError, "Rule spec must be a quantizer spec"),
    (lambda m, x: Uniform(range="percentile", percentiles=(2.0,)), ValueError, r"percentiles must be .* \(0\.5, 1\]"),
    (lambda m, x: visq.freeze(m), ValueError, "not quantized"),
    (lambda m, x: visq.set_timestep(m, 5), ValueError, "has no per-timestep quantizers"),
])
def test_more_bad_calls_raise_before_the_model_changes(vit, images, call, error, match):
    before = snapshot(vit)
    with pytest.raises(error, match=match):
        call(vit, images[:4])
    assert_unchanged(vit, before)


def test_a_pipeline_whose_guidance_default_is_none_has_no_cfg_batch():
    from visq.hosts.diffusers import _guidance

    class _Pipe:  # Qwen-Image's signature: guidance_scale=None, true_cfg_scale for separate passes
        def __call__(self, prompt=None, guidance_scale=None, true_cfg_scale=4.0):
            pass

    assert _guidance(_Pipe(), {}) == 1.0 and _guidance(_Pipe(), {"guidance_scale": 3.5}) == 3.5
