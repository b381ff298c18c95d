"""Top-1 accuracy of a classifier over a loader."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm


@torch.no_grad()
def top1(model: nn.Module, loader: Iterable, progress: bool = False) -> float:
    """Fraction of samples whose arg-max logit equals the label.

    Args:
        model: maps an image batch to logits (N, C); put in eval mode here.
        loader: yields ``(images, labels)`` pairs or dicts with ``image``/``label`` keys.
    """
    model.eval()
    correct = total = 0
    for batch in tqdm(loader, desc="top-1", disable=not progress):
        images, labels = (batch["image"], batch["label"]) if isinstance(batch, dict) else batch
        logits: Tensor = model(images)
        correct += int((logits.argmax(-1) == labels).sum())
        total += len(labels)
    if total == 0:
        raise ValueError("the loader yielded no samples")
    return correct / total
