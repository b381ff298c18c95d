"""A new user's mistakes get an error that names the problem and the fix (issue 12)."""

import pytest

import visq
from tests.core.test_errors import assert_unchanged, snapshot
from visq.recipes import parse
from visq.testing import tiny_vit


def test_diffusion_method_on_a_vit_raises_with_the_methods_that_fit(vit, images):
    before = snapshot(vit)
    with pytest.raises(ValueError, match=r"'qdiff' is for diffusion models, but VisionTransformer is a vit model; "
                                         r"methods that fit: .*repq") as err:
        visq.quantize(vit, "w8a8", method="qdiff", calib=images, progress=False)
    assert "dgq" not in str(err.value) and "minmax" in str(err.value)
    assert_unchanged(vit, before)


def test_vit_method_on_a_unet_raises_with_the_methods_that_fit(sd):
    before = snapshot(sd.unet)
    with pytest.raises(ValueError, match=r"'repq' is for vit models, but UNet2DConditionModel is a diffusion model; "
                                         r"methods that fit: .*qdiff") as err:
        visq.quantize(sd, "w8a8", method="repq", calib=["a red circle"], progress=False)
    assert "ias" not in str(err.value)
    assert_unchanged(sd.unet, before)


def test_every_vit_and_diffusion_method_declares_its_family():
    from visq.methods import METHODS

    families = {name: cls.family for name, cls in METHODS.items()}
    assert all(families[n] == "vit" for n in ("ptq4vit", "repq", "ias", "dopq", "noisyquant"))
    assert all(families[n] == "diffusion" for n in ("qdiff", "temporal", "eda", "dgq"))
    assert all(families[n] is None for n in ("minmax", "percentile", "mse"))


@pytest.mark.parametrize("text", ["W4A8", " w4a8 ", "w4a8\n"])
def test_recipe_case_and_surrounding_spaces_are_normalised(text):
    assert parse(text) == parse("w4a8") and parse(text).name == "w4a8"


@pytest.mark.parametrize("text", ["w4 a8", "w4a8 g32", "w4a8-G 32"])
def test_recipe_inner_spaces_raise(text):
    with pytest.raises(ValueError, match="Valid forms"):
        parse(text)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, images):
    folder = tmp_path_factory.mktemp("saved")
    model = tiny_vit()
    visq.quantize(model, "w8a8", calib=images, progress=False)
    visq.save(model, folder)
    return folder


def _damaged(saved, tmp_path, name, cut):
    import shutil

    shutil.copytree(saved, tmp_path / "q")
    path = tmp_path / "q" / name
    data = path.read_bytes()
    path.write_bytes(cut(data))
    return tmp_path / "q"


@pytest.mark.parametrize("name", ["quant.json", "model.safetensors"])
@pytest.mark.parametrize("cut", [lambda d: d[: len(d) // 2], lambda d: b"\x00garbage" + d[9:]],
                         ids=["truncated", "corrupted"])
def test_damaged_file_names_the_file_and_leaves_model_unchanged(saved, tmp_path, name, cut, vit):
    folder = _damaged(saved, tmp_path, name, cut)
    before = snapshot(vit)
    with pytest.raises(ValueError, match=rf"{name} .*truncated or damaged.*visq\.save"):
        visq.load(vit, folder)
    assert_unchanged(vit, before)
    assert getattr(vit, "visq_state", None) is None
    visq.load(vit, saved)  # the same model still loads a good folder afterwards
