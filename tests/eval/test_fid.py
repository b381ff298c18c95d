"""FID: the Frechet distance against scipy, torchmetrics' metric on the same features, and cached statistics."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from eval.features import RandomFeatures, extract
from eval.fid import fid_images, fid_metric
from eval.stats import FeatureStats, frechet_distance, reference_stats


def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def _gaussian(n: int, d: int, shift: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ mix + shift


def test_fid_of_a_set_with_itself_is_zero():
    f = _gaussian(400, 16, 0.0, 0)
    s = FeatureStats.from_features(f, "synthetic")
    assert abs(frechet_distance(s, s)) < 1e-8


@pytest.mark.parametrize("shift", [0.0, 0.5, 3.0])
def test_fid_matches_scipy_sqrtm(shift):
    a, b = _gaussian(500, 12, 0.0, 1), _gaussian(300, 12, shift, 2)
    ours = frechet_distance(FeatureStats.from_features(a, "x"), FeatureStats.from_features(b, "x"))
    ref = _scipy_fid(a.numpy(), b.numpy())
    assert ours == pytest.approx(ref, rel=1e-6, abs=1e-8)
    assert ref > 0.05 if shift == 0 else ref > 12 * shift**2 * 0.9  # the test separates the cases


def test_stats_path_equals_torchmetrics_metric():
    net = RandomFeatures(8, seed=3)
    g = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8, generator=g)
    fake = (real.int() + torch.randint(-60, 60, real.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    metric = fid_metric(net)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    assert fid_images(net, fake, real, batch_size=7) == pytest.approx(float(metric.compute()), rel=1e-5)


def test_reference_stats_cache_is_keyed_by_network_and_content(tmp_path):
    imgs = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    s1 = reference_stats(RandomFeatures(8, seed=0), imgs, tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    again = reference_stats(RandomFeatures(8, seed=0), imgs, tmp_path)  # served from the cache
    torch.testing.assert_close(again.cov, s1.cov)
    assert again.n == 10 and again.network == s1.network
    reference_stats(RandomFeatures(8, seed=1), imgs, tmp_path)  # another network: another entry
    reference_stats(RandomFeatures(8, seed=0), imgs.flip(0)[:9], tmp_path)  # other images: another entry
    assert len(list(tmp_path.glob("*.safetensors"))) == 3


def test_stats_from_different_networks_refuse_to_compare():
    f = _gaussian(10, 4, 0, 0)
    with pytest.raises(ValueError, match="different feature networks"):
        frechet_distance(FeatureStats.from_features(f, "a"), FeatureStats.from_features(f, "b"))
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats.from_features(f[:1], "a")


def test_extract_is_independent_of_batch_size_up_to_float32_rounding():
    imgs = torch.randint(0, 256, (9, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    net = RandomFeatures(8)
    a, b = extract(net, imgs, 2, progress=False), extract(net, imgs, 9, progress=False)
    assert a.shape == (9, 8) and a.std() > 0.01
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
