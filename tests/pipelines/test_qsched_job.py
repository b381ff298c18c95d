"""The Q-Sched job end to end on a saved tiny pipeline: quantize, search, save; the saved folder loads back."""

from __future__ import annotations

import json

import pytest

import visq
from pipelines.qsched import Config, main
from tests.eval.tiny import tiny_sd_pipeline


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sd-qsched")
    tiny_sd_pipeline().save_pretrained(folder)
    return folder


def test_job_tunes_saves_and_resumes(tmp_path, sd_folder):
    from eval.pipes import load_pipeline
    from visq.qsched import QSchedScheduler

    cfg = Config(model=str(sd_folder), config="w8a8", steps=2, rounds=0, prompts=2, calib_prompts=2,
                 out=str(tmp_path / "qs"))
    info = main(cfg)
    assert info["candidates"] <= 10 and info["steps"] == 2 and info["score"] >= info["identity_score"]
    saved = tmp_path / "qs" / f"{sd_folder.name}-2steps" / "qsched" / "w8a8-qsched-coarse"
    assert json.loads((saved / "qsched.json").read_text()) == info
    pipe = visq.load(load_pipeline(str(sd_folder)), saved)
    assert isinstance(pipe.scheduler, QSchedScheduler)
    assert pipe.scheduler.config["model_coeff"] == info["model_coeff"]
    assert main(cfg) == info  # a rerun reads the record instead of searching again
