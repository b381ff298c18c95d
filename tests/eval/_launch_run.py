"""Run the batch runner's Python API on the tiny pipeline; launched as 1 process or by `accelerate launch`.

Usage: python tests/eval/_launch_run.py <pipeline folder> <out folder>
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

torch.set_num_threads(1)

from eval.clip_score import ClipFeatures  # noqa: E402
from eval.features import RandomFeatures  # noqa: E402
from eval.images import GenSpec, RunSpec, Scorers, run  # noqa: E402
from eval.stats import reference_stats  # noqa: E402
from tests.eval.tiny import tiny_hf_clip  # noqa: E402

PROMPTS = ["a red circle", "a blue square", "a green star on a white background"]


def spec(model: str) -> RunSpec:
    gen = GenSpec(steps=2, guidance=3.0)
    return RunSpec(model=model, prompts=PROMPTS, per_prompt=3, seed=7, batch_size=2, gen=gen)


def scorers() -> Scorers:
    net = RandomFeatures(8, seed=0)
    real = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    return Scorers(net, reference_stats(net, real), ClipFeatures.from_hf(*tiny_hf_clip(), name="tiny"),
                   batch_size=4, progress=False)


if __name__ == "__main__":
    run(spec(sys.argv[1]), sys.argv[2], scorers())
