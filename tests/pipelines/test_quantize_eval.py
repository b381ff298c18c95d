"""Smoke test of the main job on the tiny pipeline (config override), and the dataclass CLI."""

from __future__ import annotations

import json

import pytest

from pipelines._cli import parse
from pipelines.quantize_eval import Config, main
from tests.eval._launch_run import scorers
from tests.eval.tiny import tiny_sd_pipeline


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sd")
    tiny_sd_pipeline().save_pretrained(folder)
    return folder


def test_cli_parses_every_field_type():
    cfg = parse(Config, ["--configs", "float", "w4a8@ias", "--n-prompts", "3", "--guidance", "2.5", "--no-progress"])
    assert cfg.configs == ("float", "w4a8@ias") and cfg.n_prompts == 3 and cfg.guidance == 2.5
    assert cfg.progress is False and cfg.model == "shapes-sd"


def test_main_job_smoke_on_the_tiny_pipeline(tmp_path, sd_folder):
    cfg = Config(model=str(sd_folder), configs=("float", "w8a8", "w4a8"), n_prompts=3, per_prompt=2,
                 n_calib=4, steps=2, batch_size=4, out=str(tmp_path / "qe"), progress=False)
    metrics = main(cfg, scorers())
    assert list(metrics) == ["float", "w8a8", "w4a8"]
    for name in ("w8a8", "w4a8"):
        m = metrics[name]
        assert m["n_images"] == 6 and m["fidelity_reference"] == "float"
        assert 0 < m["psnr"] < 100 and -1 <= m["ssim"] <= 1  # quantized differs from float, but not wildly
        assert m["weight_bits"] < metrics["float"]["weight_bits"] == pytest.approx(32)
    assert metrics["w4a8"]["size_mb"] < metrics["w8a8"]["size_mb"] < metrics["float"]["size_mb"]
    assert metrics["w4a8"]["psnr"] < metrics["w8a8"]["psnr"]  # fewer bits, further from float
    saved = json.loads((tmp_path / "qe" / "metrics.json").read_text())
    assert set(saved["configs"]) == {"float", "w8a8", "w4a8"} and (tmp_path / "qe" / "report.md").is_file()
    page = (tmp_path / "qe" / "report.html").read_text()
    assert "data:image/png;base64," in page and 'id="metrics"' in page and "Recipe of w4a8" in page

    # resume: lose one quantized image; the rerun regenerates it from the saved quantized model, bit for bit
    lost = tmp_path / "qe" / "w4a8" / "p00001-i001.png"
    original = lost.read_bytes()
    lost.unlink()
    again = main(cfg, scorers())
    assert lost.read_bytes() == original
    for name, m in metrics.items():
        assert {k: v for k, v in again[name].items() if k != "sec_per_image"} == {
            k: v for k, v in m.items() if k != "sec_per_image"}
