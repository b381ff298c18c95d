"""eval.images run checks everything up front (issue 12): configurations, model kind, calibration prompts."""

from pathlib import Path

import pytest

from eval import images
from eval.images import RunSpec, Scorers, run
from eval.io import read_prompts

PROMPTS = ["a red circle", "a blue square"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("token, match", [
    ("w4a9", r"configuration 'w4a9': invalid recipe.*Valid forms"),
    ("w8a8@nope", r"configuration 'w8a8-nope': unknown method 'nope'"),
    ("w8a8@dgq:colour=red", r"configuration 'w8a8-dgq-colour-red': .*colour"),
    ("w8a8@repq", r"'repq' is for vit models.*methods that fit: .*qdiff"),
])
def test_bad_configuration_fails_before_any_image(sd_folder, tmp_path, token, match):
    spec = RunSpec(model=str(sd_folder), prompts=PROMPTS, configs=["float", token], calib=PROMPTS[:1])
    with pytest.raises(ValueError, match=match):
        run(spec, tmp_path / "x", Scorers(progress=False))
    assert not (tmp_path / "x").exists()  # nothing generated, not even run.json


def test_a_missing_saved_folder_fails_before_any_image(sd_folder, tmp_path):
    spec = RunSpec(model=str(sd_folder), prompts=PROMPTS, configs=["float", f"load:{tmp_path / 'none'}"])
    with pytest.raises(FileNotFoundError, match="not a folder written by visq.save"):
        run(spec, tmp_path / "x", Scorers(progress=False))
    assert not (tmp_path / "x").exists()


def test_calibration_never_defaults_to_the_evaluation_prompts(sd_folder, tmp_path):
    spec = RunSpec(model=str(sd_folder), prompts=PROMPTS, configs=["float", "w8a8"])
    with pytest.raises(ValueError, match="other than the evaluation prompts: pass --calib"):
        run(spec, tmp_path / "x", Scorers(progress=False))
    assert images.check_spec(RunSpec(model="m", prompts=PROMPTS))[1] is None  # float only: nothing to calibrate
    assert images.check_spec(RunSpec(model="m", classes=[0, 2], configs=["w8a8"]))[1] == [0, 2]


def test_a_zoo_model_that_is_not_a_pipeline_names_the_pipelines(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    with pytest.raises(ValueError, match="'shapes-vit' is not a diffusion pipeline.*shapes-sd, shapes-dit"):
        images.main(["run", "--model", "shapes-vit", "--prompts", str(prompts), "--out", str(tmp_path / "x")])


def test_shipped_prompt_files_are_the_zoo_captions():
    from visq.zoo import shapes

    for split in ("heldout", "train"):
        path = ROOT / "eval" / "prompts" / f"shapes_{split}.txt"
        assert read_prompts(path) == shapes.generate(32, seed=0, split=split).captions
