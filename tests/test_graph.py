"""The Normalized-Cut eigen-solve: the fast deflated-Lanczos Fiedler vector against the dense reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autolabel.discovery.graph import (DENSE_BELOW, binary_graph, cosine_affinity, fiedler_dense, fiedler_vector,
                                       l2_normalize)


def planted_features(n: int, sizes: list[int], dim: int = 32, noise: float = 0.3, seed: int = 0) -> torch.Tensor:
    """n feature rows: background around one direction, then ``sizes`` groups around other directions."""
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.eye(dim)[: len(sizes) + 1]  # mutually orthogonal group directions
    labels = torch.zeros(n, dtype=torch.long)
    start = 0
    for i, size in enumerate(sizes, start=1):
        labels[start:start + size] = i
        start += size
    return centres[labels] + noise * torch.randn(n, dim, generator=g)


def random_affinity(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.random((n, n))
    return (a + a.T) / 2


def generalized_residual(a: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    """(λ, relative residual) of (D - A) v = λ D v for the Rayleigh quotient λ."""
    d = a.sum(axis=1)
    lv = d * v - a @ v
    lam = float(v @ lv / (v @ (d * v)))
    return lam, float(np.linalg.norm(lv - lam * d * v) / np.linalg.norm(d * v))


def same_bipartition(u: np.ndarray, v: np.ndarray) -> bool:
    pu, pv = u > u.mean(), v > v.mean()
    return bool((pu == pv).all() or (pu == ~pv).all())


@pytest.mark.parametrize("n, sizes, tau", [(200, [50], 0.2), (400, [60, 90], 0.15), (150, [10], 0.2)])
def test_fast_matches_dense_on_planted_graphs(n: int, sizes: list[int], tau: float) -> None:
    a = binary_graph(cosine_affinity(planted_features(n, sizes)), tau)
    fast, dense = fiedler_vector(a), fiedler_dense(a)
    assert same_bipartition(fast, dense)
    cos = abs(fast @ dense) / (np.linalg.norm(fast) * np.linalg.norm(dense))
    assert cos > 0.999
    lam_fast, res_fast = generalized_residual(a.double().numpy(), fast)
    lam_dense, _ = generalized_residual(a.double().numpy(), dense)
    assert lam_fast == pytest.approx(lam_dense, rel=1e-6, abs=1e-9)
    assert res_fast < 1e-5


def test_planted_object_is_one_side_of_the_cut() -> None:
    n, size = 300, 40
    a = binary_graph(cosine_affinity(planted_features(n, [size], seed=4)), 0.2)
    v = fiedler_vector(a)
    side = v > v.mean()
    obj = np.zeros(n, bool)
    obj[:size] = True
    assert (side == obj).all() or (side == ~obj).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_matches_dense_on_random_graphs(seed: int) -> None:
    a = random_affinity(120, seed)
    fast, dense = fiedler_vector(torch.from_numpy(a)), fiedler_dense(a)
    lam_fast, res_fast = generalized_residual(a, fast)
    lam_dense, _ = generalized_residual(a, dense)
    assert lam_fast == pytest.approx(lam_dense, rel=1e-6)
    assert res_fast < 1e-5
    assert same_bipartition(fast, dense)


def test_two_disconnected_groups_are_split() -> None:
    a = np.full((60, 60), 1e-12)
    a[:25, :25] = 1.0
    a[25:, 25:] = 1.0
    v = fiedler_vector(torch.from_numpy(a))
    side = v > v.mean()
    assert len(set(side[:25])) == 1 and len(set(side[25:])) == 1 and side[0] != side[-1]


@pytest.mark.parametrize("n", [1, 2, 5, DENSE_BELOW - 1, DENSE_BELOW, 64])
def test_all_equal_graph_does_not_crash(n: int) -> None:
    a = torch.ones(n, n)
    v = fiedler_vector(a)
    assert v.shape == (n,)
    assert np.isfinite(v).all()


def test_all_epsilon_binary_graph_does_not_crash() -> None:
    sim = torch.full((50, 50), -0.5)  # nothing above tau: every edge is eps
    v = fiedler_vector(binary_graph(sim, 0.2))
    assert v.shape == (50,) and np.isfinite(v).all()


def test_small_graphs_use_the_dense_solver_exactly() -> None:
    a = random_affinity(DENSE_BELOW - 1, 7)
    np.testing.assert_allclose(fiedler_vector(torch.from_numpy(a)), fiedler_dense(a))


def test_affinity_helpers() -> None:
    f = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    np.testing.assert_allclose(l2_normalize(f).norm(dim=1).numpy(), 1.0, rtol=1e-6)
    sim = cosine_affinity(f)
    assert sim[0, 1].item() == pytest.approx(0.0, abs=1e-6)
    assert sim[0, 2].item() == pytest.approx(np.sqrt(0.5))
    g = binary_graph(sim, tau=0.5, eps=1e-5)
    assert g[0, 2].item() == 1.0 and g[0, 1].item() == pytest.approx(1e-5)
    assert torch.equal(g, g.T)
    assert l2_normalize(torch.zeros(1, 3)).isfinite().all()  # zero rows (taken patches) stay finite
