"""The zeroth-order estimator and the subspace projection: closed forms and references."""

import numpy as np
import pytest
import torch

from visq.personalize.subspace import SubspaceProjector, low_variance_directions
from visq.personalize.timesteps import sample_timesteps
from visq.personalize.zo import ZOSettings, directions, estimate


def _quadratic(dim: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    a = m @ m.T / dim + torch.eye(dim, dtype=torch.float64)
    c = torch.randn(dim, generator=g, dtype=torch.float64)
    return a, c


@pytest.mark.parametrize("normalize", ["mean", "code"])
def test_estimate_mean_is_the_gradient(normalize):
    # for a quadratic the one-sided difference's curvature term is odd in z: E[g_hat] = grad exactly
    a, c = _quadratic()
    theta = torch.zeros(8, dtype=torch.float64)
    true = a @ (theta - c)
    gen = torch.Generator().manual_seed(1)
    settings = ZOSettings(n=2, mu=1e-3, normalize=normalize)
    draws = torch.stack([estimate([theta], lambda: 0.5 * (theta - c) @ a @ (theta - c), gen, settings)[1][0]
                         for _ in range(3000)])
    scale = 1.0 if normalize == "mean" else 1 / np.sqrt((8 + 2 - 1) / 2)
    err = (draws.mean(0) - true * scale).abs()
    stderr = draws.std(0) / np.sqrt(len(draws))
    assert bool((err < 4 * stderr).all()), (err, stderr)
    assert float(err.norm() / (true * scale).norm()) < 0.1
    assert float(theta.abs().max()) < 1e-15  # restored in place (up to rounding)


def test_estimate_restores_and_regenerates_directions():
    theta = torch.randn(5)
    before = theta.clone()
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    evaluated = []
    loss, (g,) = estimate([theta], lambda: evaluated.append(theta.clone()) or theta.sum(), gen, ZOSettings(n=2))
    assert torch.allclose(theta, before, atol=1e-6, rtol=0)
    seeds = torch.randint(0, 2**62, (2,), generator=torch.Generator().set_state(state)).tolist()
    # the second and third evaluations saw theta + mu z_i, z_i regenerated from seed i
    for seen, seed in zip(evaluated[1:], seeds):
        assert torch.allclose(seen, before + 1e-3 * directions([theta], seed)[0], atol=1e-6)
    assert loss.dtype == torch.float32 and len(evaluated) == 3
    assert not loss.requires_grad and not g.requires_grad


def test_zo_adam_converges_on_a_quadratic():
    a, c = _quadratic(dim=8, seed=3)
    theta = torch.zeros(8, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=2e-2, eps=1e-3)

    def loss():
        return 0.5 * (theta - c) @ a @ (theta - c)

    start = float(loss().detach())
    gen = torch.Generator().manual_seed(0)
    for _ in range(1500):
        _, (g,) = estimate([theta], loss, gen, ZOSettings(n=2, normalize="mean"))
        theta.grad = g
        opt.step()
    assert float(loss().detach()) < 1e-2 * start


@pytest.mark.parametrize("tau,dim", [(40, 16), (12, 16)])
def test_subspace_matches_sklearn_pca(tau, dim):
    sklearn = pytest.importorskip("sklearn")
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    assert sklearn
    gen = torch.Generator().manual_seed(0)
    # a trajectory with a few strong directions and weak noise, as tokens drift
    rows = torch.randn(tau, 3, generator=gen) @ torch.randn(3, dim, generator=gen)
    rows = rows + 0.01 * torch.randn(tau, dim, generator=gen)
    nu = 1e-3
    scaled = StandardScaler().fit_transform(rows.double().numpy())
    pca = PCA(n_components=min(tau, dim)).fit(scaled)
    first = int(np.argmax(np.cumsum(pca.explained_variance_ratio_) > 1 - nu))
    ref = pca.components_[first + 1:]
    ours = low_variance_directions(rows.double(), nu).numpy()
    assert ours.shape == ref.shape and ours.shape[0] > 0
    # with tau <= d the centred rows have rank < tau: the zero-variance component is any null-space vector, so
    # compare the projections inside the span of the standardised rows, where both are defined
    _, s, vt = np.linalg.svd(scaled, full_matrices=False)
    span = vt[s > 1e-9 * s[0]]
    inside = span.T @ span
    np.testing.assert_allclose(inside @ ours.T @ ours @ inside, inside @ ref.T @ ref @ inside, atol=1e-8)

    proj = SubspaceProjector(dim, tau=tau, nu=nu)
    for r in torch.cat([torch.randn(5, dim, generator=gen), rows]):  # 5 older tokens leave the circular buffer
        proj.push(r)
    proj.refresh()
    g = torch.randn(dim, generator=gen)
    expected = g.double().numpy() - g.double().numpy() @ ref.T @ ref
    np.testing.assert_allclose(proj.project(g).numpy() @ inside, expected @ inside, atol=1e-5)
    assert proj.removed == ref.shape[0]


def test_subspace_state_round_trip_and_errors():
    proj = SubspaceProjector(4, tau=3)
    g = torch.randn(4)
    assert torch.equal(proj.project(g), g)  # nothing removed before the first refresh
    with pytest.raises(ValueError, match="at least 2"):
        proj.refresh()
    for _ in range(4):
        proj.push(torch.randn(4))
    proj.refresh()
    other = SubspaceProjector(4, tau=3)
    other.load_state_dict(proj.state_dict())
    assert torch.equal(other.project(g), proj.project(g)) and other.count == 4
    with pytest.raises(ValueError, match="tau"):
        SubspaceProjector(4, tau=1)


def test_puts_range():
    t = sample_timesteps(10_000, torch.Generator().manual_seed(0))
    assert int(t.min()) == 500 and int(t.max()) == 899
    with pytest.raises(ValueError, match="range"):
        sample_timesteps(1, torch.Generator(), 900, 500)
