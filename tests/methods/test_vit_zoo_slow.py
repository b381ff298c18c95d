"""Quality bar on the shipped zoo ViT: every ViT PTQ method beats min-max at W4A4 (held-out top-1)."""

import pytest
import torch

import visq
from visq import zoo
from visq.zoo import shapes
from visq.zoo.judge import vit_predict
from visq.zoo.vit import VIT_DATA, normalize

METHODS = {"ptq4vit": {}, "repq": {}, "noisyquant": {"max_rows": 1024}, "ias": {"iters": 10, "batch_size": 32},
           "dopq": {"iters": 10, "batch_size": 32}}


def _zoo_vit_missing() -> str:
    try:
        zoo.path("shapes-vit")
    except FileNotFoundError as err:
        return str(err)
    return ""


pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(_zoo_vit_missing()), reason=_zoo_vit_missing() or "present")]


@pytest.fixture(scope="module")
def data():
    held = shapes.generate(500, 0, "heldout", VIT_DATA)
    calib = normalize(shapes.generate(64, 1000, "train", VIT_DATA).images)
    return held.images.float() / 255.0, held.shape, calib


def accuracy(method, data, **kwargs):
    images, labels, calib = data
    model = zoo.load("shapes-vit")
    torch.manual_seed(0)
    visq.quantize(model, "w4a4", method=method, calib=calib, progress=False, **kwargs)
    return (vit_predict(model, images) == labels).float().mean().item()


@pytest.fixture(scope="module")
def minmax(data):
    return accuracy("minmax", data)


@pytest.mark.parametrize("method", list(METHODS))
def test_method_beats_minmax_at_w4a4(method, data, minmax):
    assert accuracy(method, data, **METHODS[method]) > minmax
