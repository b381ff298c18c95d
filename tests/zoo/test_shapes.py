"""visq-shapes generator: deterministic per seed, disjoint splits, labels that match the captions."""

import time

import pytest
import torch

from visq.zoo import shapes


def test_same_seed_same_batch():
    a, b = shapes.generate(64, 3), shapes.generate(64, 3)
    assert torch.equal(a.images, b.images) and a.captions == b.captions


def test_same_seed_same_batch_with_clutter_and_noise():
    cfg = shapes.ShapesConfig(clutter=0.7, noise=0.08)
    assert torch.equal(shapes.generate(32, 5, cfg=cfg).images, shapes.generate(32, 5, cfg=cfg).images)


def test_seeds_and_splits_differ():
    a = shapes.generate(64, 0, "train")
    assert not torch.equal(a.images, shapes.generate(64, 1, "train").images)
    assert not torch.equal(a.images, shapes.generate(64, 0, "heldout").images)


def test_batch_layout_and_captions():
    b = shapes.generate(100, 0)
    assert b.images.shape == (100, 3, 32, 32) and b.images.dtype == torch.uint8
    assert (b.background != b.colour).all()
    for i in range(100):
        cap = b.captions[i]
        assert shapes.SHAPES[b.shape[i]] in cap and shapes.COLOUR_NAMES[b.colour[i]] in cap
        assert cap.startswith(f"a {shapes.SIZES[b.size[i]]} ") and cap.endswith(shapes.POSITIONS[b.position[i]])
    assert shapes.caption(2, 0, 5, 0, 0) == "a small red triangle on an orange background, top left"


def test_all_attribute_values_appear():
    b = shapes.generate(2000, 0)
    assert len(b.shape.unique()) == 6 and len(b.colour.unique()) == 8 and len(b.position.unique()) == 9


def test_shape_sits_at_its_position():
    # the main shape's colour dominates the quadrant named by its position (large shapes, no clutter)
    b = shapes.generate(400, 1)
    keep = (b.size == 1) & (b.position == 0)  # large, top left
    img = b.images[keep].float()
    colour = torch.tensor([shapes.COLOURS[shapes.COLOUR_NAMES[c]] for c in b.colour[keep]]).float()
    dist = (img - colour[:, :, None, None]).abs().sum(1)  # (n, 32, 32)
    assert (dist[:, :16, :16] < 60).float().mean() > 5 * (dist[:, 16:, 16:] < 60).float().mean()


def test_unknown_split():
    with pytest.raises(ValueError, match="heldout"):
        shapes.generate(4, 0, "test")


def test_generation_is_fast():
    shapes.generate(8, 0)  # templates
    t = time.perf_counter()
    shapes.generate(2000, 0)
    assert time.perf_counter() - t < 3.0


def test_dataset_items():
    ds = shapes.ShapesDataset("heldout", size=50, seed=2)
    item = ds[3]
    assert len(ds) == 50 and item["image"].shape == (3, 32, 32)
    assert 0 <= item["image"].min() <= item["image"].max() <= 1
    assert item["label"] == item["shape"] and isinstance(item["caption"], str)
    assert torch.equal(ds.images, shapes.ShapesDataset("heldout", size=50, seed=2).images)


def test_fixed_labels_override_and_keep_the_rest():
    import numpy as np

    b = shapes.generate(16, 4, fixed={"shape": np.full(16, 3)})
    assert (b.shape == 3).all() and all(" star " in c for c in b.captions)
    assert torch.equal(b.colour, shapes.generate(16, 4).colour)
    with pytest.raises(ValueError, match="unknown label"):
        shapes.generate(4, 0, fixed={"hue": np.zeros(4)})
