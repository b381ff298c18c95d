"""Train the zoo *judge CLIP* (scores generated images; never part of a pipeline).

    python -m pipelines.train_judge_clip        # -> visq/zoo/weights/judge-clip/

Same contrastive loop as ``pipelines.train_clip`` with another seed, an open_clip CLIP with a small timm CNN
image tower (a from-scratch ViT tower learns shape too slowly to judge it), a smaller text tower, shape hard
negatives, and half of the training images blurred so that it still reads shapes in decoded (soft) samples.
Resumable from ``runs/zoo/judge-clip/ckpt.pt``.
"""

from __future__ import annotations

import logging

from pipelines.train_clip import Config, main
from visq.zoo.clip import JUDGE_OPENCLIP

JUDGE = Config(name="judge-clip", openclip=JUDGE_OPENCLIP, seed=1, steps=1500, hard_negatives=True, blur=0.5)

if __name__ == "__main__":
    from pipelines._cli import parse

    logging.basicConfig(level=logging.INFO)
    main(parse(Config, description=__doc__.splitlines()[0], defaults=JUDGE))
