"""Q-Sched on the zoo: the JAQ quality term, the benchmark table, and that the README shows the measured table."""

from pathlib import Path

import pytest
import torch

from eval.bench_qsched import OUT, README_END, README_START, Config, table
from eval.qsched_zoo import colourfulness

README = Path(__file__).parents[2] / "README.md"


def test_colourfulness_closed_form():
    grey = torch.full((1, 3, 4, 4), 0.5)
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1.0
    half = red.clone()
    half[..., :2] = 0.5  # half the pixels grey: rg in {0, 1}, yb in {0, 0.5}
    got = colourfulness(torch.cat([grey, red, half]))
    spread = (0.25 + 0.0625) ** 0.5  # var(rg) = 1/4, var(yb) = 1/16
    expected = [0.0, 0.3 * (1 + 0.25) ** 0.5, spread + 0.3 * (0.25 + 0.0625) ** 0.5]
    assert got.tolist() == pytest.approx(expected)


def test_table_rows_and_gap_closed():
    cfg = Config(bits=("w4a4",), searches=("grid", "coarse"))
    results = {"float": {"fid": 1.0, "fid_inception": 100.0}, "w4a4": {"fid": 4.0, "fid_inception": 160.0},
               "loaded-w4a4-qsched-grid": {"fid": 3.0, "fid_inception": 170.0, "psnr": 20.0}}
    info = {"model": 0.9, "sample": 1.05, "candidates": 37, "pipeline_calls": 37, "seconds": 12.3}
    lines = table("tiny", 4, {"results": results, "searches": {"w4a4|grid": info}}, cfg)
    grid = next(line for line in lines if "Q-Sched grid" in line)
    assert "| 33% / -17% |" in grid and "(0.900, 1.050), 37, 37, 12 |" in grid
    coarse = next(line for line in lines if "Q-Sched coarse" in line)
    assert coarse.startswith("| W4A4 + Q-Sched coarse | - | - |")  # not measured: dashes, never numbers
    results["w4a4"]["fid"] = 0.9  # quantized already at or below float: no gap to close
    grid = next(line for line in table("tiny", 4, {"results": results, "searches": {}}, cfg) if "Q-Sched grid" in line)
    assert "| - / -17% |" in grid


def test_readme_table_is_the_measured_one():
    if not OUT.is_file():
        pytest.skip("eval/results/qsched.md not written yet (python -m eval.bench_qsched)")
    readme = README.read_text()
    block = readme.split(README_START, 1)[1].split(README_END, 1)[0].strip()
    measured = OUT.read_text().split("\n", 2)[2].strip()
    assert block == measured
