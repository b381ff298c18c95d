"""The QAT job end to end on the zoo ViT, at toy length: trains, evaluates, saves a model that loads back."""

import json

import torch

import visq
from pipelines import vit_qat
from visq.zoo import load


def test_vit_qat_job_trains_evaluates_and_saves(tmp_path):
    cfg = vit_qat.Config(recipe="w4a4", steps=3, anneal_steps=2, batch=8, calib_size=16, warmup_steps=1,
                         eval_n=32, eval_during=16, checkpoint_every=2, run_dir=str(tmp_path), progress=False)
    metrics = vit_qat.main(cfg)
    run = tmp_path / "ofq-w4a4-s0"
    assert metrics["top1"] >= 0 and metrics["float_top1"] > 50 and 0 <= metrics["osc_frac"] <= 1
    assert json.loads((run / "metrics.json").read_text())["top1"] == metrics["top1"]
    assert metrics["train_s"] > 0 and (run / "oscillation.svg").is_file()
    fresh = visq.load(load("shapes-vit"), run / "model")
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert fresh(x).shape == (4, 6)
    assert vit_qat.main(cfg)["top1"] == metrics["top1"]  # a finished run is resumed, not retrained
