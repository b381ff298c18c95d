"""Train a small regression with the shared loop; run as one process or under `accelerate launch`.

Usage: python tests/train/_launch_fit.py <out file>   (rank 0 saves the final weights there)
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

torch.set_num_threads(1)

from visq.train import StepOutput, TrainSettings, TrainTask, fit  # noqa: E402
from visq.train.loop import _seed  # noqa: E402

STEPS = 5


class Regression(TrainTask):
    """Each process draws its own batch from the step's generator; with ``ranks`` set, one process draws all."""

    def __init__(self, ranks: int = 0) -> None:
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.ranks = ranks

    def modules(self):
        return {"model": self.model}

    def param_groups(self):
        return [{"params": list(self.model.parameters()), "lr": 1e-2}]

    def _loss(self, generator):
        x = torch.randn(16, 4, generator=generator)
        return nn.functional.mse_loss(self.model(x), x.sum(dim=1, keepdim=True))

    def step(self, step, generator):
        if not self.ranks:
            return StepOutput(self._loss(generator))
        # what `ranks` processes compute together: the mean of each process's loss on its own draw
        return StepOutput(sum(self._loss(_seed(0, step, r)) for r in range(self.ranks)) / self.ranks)


def train(ranks: int = 0) -> list[torch.Tensor]:
    task = Regression(ranks)
    fit(task, TrainSettings(steps=STEPS, progress=False))
    return [p.detach().clone() for p in task.model.parameters()]


if __name__ == "__main__":
    weights = train()
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(weights, sys.argv[1])
