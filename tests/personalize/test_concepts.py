"""Held-out concepts of visq-shapes: new shapes, drawn without changing any existing generator output."""

import hashlib

import pytest
import torch

from visq.zoo import shapes


def _digest(batch) -> str:
    return hashlib.sha256(batch.images.numpy().tobytes() + "|".join(batch.captions).encode()).hexdigest()[:16]


def test_existing_generator_output_is_unchanged():
    # digests recorded before the held-out concepts were added
    assert _digest(shapes.generate(64, 0, "train")) == "c93e4b1ffc5c3f84"
    noisy = shapes.ShapesConfig(clutter=0.5, noise=0.05)
    assert _digest(shapes.generate(64, 3, "heldout", noisy)) == "86ff030af3b5e183"
    assert hashlib.sha256(shapes._templates().numpy().tobytes()).hexdigest()[:16] == "007df25a1f372372"


def test_novel_concepts_render_deterministically():
    a = shapes.generate_novel("heart", 6, 0, "red")
    b = shapes.generate_novel("heart", 6, 0, "red")
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert a.images.shape == (6, 3, 32, 32) and a.images.dtype == torch.uint8
    assert all(c.startswith("a large red heart on ") for c in a.captions)
    assert bool((a.background != a.colour).all())
    ring = shapes.generate_novel("ring", 6, 0, "red")
    assert not torch.equal(ring.images, a.images)  # same labels and stream, other template
    # a ring has a hole: its template is empty at the centre, a heart's is full
    t = shapes._novel_templates()
    assert float(t[1, 0, 64, 64]) == 0.0 and float(t[0, 0, 64, 64]) == 1.0


def test_novel_concept_errors():
    with pytest.raises(ValueError, match="held-out concept"):
        shapes.generate_novel("circle", 2, 0, "red")
