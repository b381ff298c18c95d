import pytest

from pipelines import train_clip, train_dit, train_judge_clip
from pipelines._cli import parse


def test_training_flags_override_the_class_defaults():
    cfg = parse(train_dit.Config, ["--steps", "10", "--restart-lr", "1e-4", "--run-dir", "runs/elsewhere"])
    assert (cfg.steps, cfg.restart_lr, cfg.run_dir) == (10, 1e-4, "runs/elsewhere")
    assert cfg.batch == train_dit.Config().batch


def test_a_preset_supplies_the_defaults_and_nested_fields_stay_out_of_the_cli():
    cfg = parse(train_clip.Config, ["--steps", "7"], defaults=train_judge_clip.JUDGE)
    assert cfg.steps == 7 and cfg.name == "judge-clip" and cfg.openclip == train_judge_clip.JUDGE.openclip
    with pytest.raises(SystemExit):  # a dict / nested dataclass cannot be typed on a command line
        parse(train_clip.Config, ["--openclip", "{}"])
