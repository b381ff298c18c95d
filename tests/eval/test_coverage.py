"""eval.coverage: the README's coverage block is what the command renders from its results."""

import json
from pathlib import Path

import torch

from eval import coverage
from eval.report import read_block

ROOT = Path(__file__).resolve().parents[2]


def test_readme_coverage_block_is_the_committed_results():
    results = json.loads((coverage.RESULTS / "coverage.json").read_text())
    assert list(results) == list(coverage.TIMM) + list(coverage.PIPELINES) + list(coverage.TRANSFORMERS)
    expected = coverage.header() + "\n\n" + coverage.render(results)
    assert read_block((ROOT / "README.md").read_text(), coverage.BLOCK) == expected


class _Unadapted(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = type("ToyAttention", (torch.nn.Module,), {})()  # an attention class visq has no adapter for
        self.attn.proj = torch.nn.Linear(8, 8)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.attn.proj(x))


def test_a_row_shows_the_refusal_and_the_weight_only_fallback():
    row = coverage.measure(_Unadapted, torch.randn(4, 8))
    assert row["w8a8"] == "raises: attn: attention class ToyAttention has no visq adapter"
    assert row["w8a16"] == "2 sites, attention 1 float (no adapter)" and "export" not in row
