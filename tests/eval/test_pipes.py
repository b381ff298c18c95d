"""Configuration tokens: recipes, methods and their options reach ``visq.quantize``."""

from __future__ import annotations

import shutil

import pytest

from eval.pipes import QuantConfig, prepare
from visq.quantizers.prompt_log import PromptLogQuantizer


def test_tokens_parse_recipe_method_and_typed_options():
    cfg = QuantConfig.parse("w8a8@dgq:log_probs=false:groups=4:split=True")
    assert (cfg.recipe, cfg.method) == ("w8a8", "dgq")
    assert dict(cfg.options) == {"log_probs": False, "groups": 4, "split": True}
    assert cfg.name == "w8a8-dgq-log_probs-false-groups-4-split-True"  # a folder name
    assert QuantConfig.parse("w4a8") == QuantConfig("w4a8", "w4a8")
    with pytest.raises(ValueError, match="key=value"):
        QuantConfig.parse("w8a8@dgq:log_probs")


def test_method_options_change_the_quantized_model(sd_folder, tmp_path):
    def log_quantizers(token: str) -> int:
        pipe = prepare(str(sd_folder), QuantConfig.parse(token), tmp_path, ["a red circle", "a blue square"],
                       {"num_inference_steps": 2})
        return sum(isinstance(m, PromptLogQuantizer) for m in pipe.unet.modules())

    assert log_quantizers("w8a8@dgq") > 0
    assert log_quantizers("w8a8@dgq:log_probs=false") == 0


def test_resume_refuses_a_model_saved_under_another_meaning_of_the_recipe(sd_folder, tmp_path):
    calib, options = ["a red circle"], {"num_inference_steps": 2}
    prepare(str(sd_folder), QuantConfig.parse("w4a8-sym"), tmp_path / "a", calib, options)
    prepare(str(sd_folder), QuantConfig.parse("w4a8-sym"), tmp_path / "a", calib, options)  # same rules: resumes
    # as if saved before the grammar's 4-bit default became asymmetric: the same name, symmetric weights inside
    shutil.copytree(tmp_path / "a" / "w4a8-sym", tmp_path / "b" / "w4a8")
    shutil.copy(tmp_path / "a" / "w4a8-sym.done", tmp_path / "b" / "w4a8.done")
    with pytest.raises(ValueError, match="no longer stands for"):
        prepare(str(sd_folder), QuantConfig.parse("w4a8"), tmp_path / "b", calib, options)
