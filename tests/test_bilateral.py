"""Fast bilateral solver: grid construction, bistochastic scaling, and edge-aware solving."""

from __future__ import annotations

import numpy as np
import pytest

from autolabel.bilateral import BilateralGrid, BilateralSolver, bistochastize


def two_tone(h: int = 64, w: int = 96, edge: int = 37, seed: int = 0) -> np.ndarray:
    """Dark left part, bright orange right part starting at column ``edge``, with mild noise (uint8 RGB)."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.float32)
    img[:, :edge] = (40, 60, 50)
    img[:, edge:] = (230, 160, 60)
    img += rng.normal(0, 2, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_grid_splats_every_pixel_once_into_symmetric_neighbourhoods() -> None:
    img = two_tone()
    grid = BilateralGrid.from_image(img, 16, 16, 8)
    assert grid.vertex_of_pixel.shape == (64 * 96,)
    assert grid.counts.sum() == 64 * 96
    assert grid.neighbours.diagonal().sum() == 0
    assert (grid.neighbours != grid.neighbours.T).nnz == 0
    # the two colours never share a vertex, even in the same spatial cell
    left = set(grid.vertex_of_pixel.reshape(64, 96)[:, :37].ravel())
    right = set(grid.vertex_of_pixel.reshape(64, 96)[:, 37:].ravel())
    assert not left & right
    np.testing.assert_allclose(grid.slice(grid.splat(np.ones(64 * 96)) / grid.counts), 1.0)


def test_float_and_uint8_images_give_the_same_grid() -> None:
    img = two_tone()
    a = BilateralGrid.from_image(img)
    b = BilateralGrid.from_image(img.astype(np.float32) / 255.0)
    assert a.n_vertices == b.n_vertices
    np.testing.assert_array_equal(a.vertex_of_pixel, b.vertex_of_pixel)


def test_bistochastic_scaling_matches_the_pixel_counts() -> None:
    grid = BilateralGrid.from_image(two_tone(), 8, 16, 8)
    blur = grid.blur_matrix()
    n, m = bistochastize(grid.counts, blur, iters=40)
    np.testing.assert_allclose(n * (blur @ n), grid.counts, rtol=1e-2)
    np.testing.assert_allclose(m, grid.counts, rtol=1e-2)


def test_constant_target_stays_constant() -> None:
    grid = BilateralGrid.from_image(two_tone())
    out = BilateralSolver(grid).solve(np.full((64, 96), 0.25))
    np.testing.assert_allclose(out, 0.25, atol=1e-3)


def test_a_misplaced_step_snaps_to_the_image_edge() -> None:
    img = two_tone(edge=37)
    truth = np.zeros((64, 96), bool)
    truth[:, 37:] = True
    target = np.zeros((64, 96), np.float32)
    target[:, 32:] = 1.0  # five columns too far left, as a patch-grid mask would be
    grid = BilateralGrid.from_image(img, 16, 16, 8)
    out = BilateralSolver(grid, lam=256).solve(target)
    assert out.shape == (64, 96)
    wrong_before = ((target > 0.5) != truth).sum()
    wrong_after = ((out > 0.5) != truth).sum()
    assert wrong_before == 5 * 64
    assert wrong_after < wrong_before / 5


def test_confidence_zero_pixels_follow_their_neighbours() -> None:
    img = two_tone()
    target = np.zeros((64, 96), np.float32)
    target[:, 37:] = 1.0
    conf = np.ones_like(target)
    target[:, 60:70] = 0.0  # wrong values the solver is told not to trust
    conf[:, 60:70] = 0.0
    out = BilateralSolver(BilateralGrid.from_image(img)).solve(target, conf)
    assert (out[:, 60:70] > 0.5).mean() > 0.95


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="RGB"):
        BilateralGrid.from_image(np.zeros((10, 10), np.uint8))
    grid = BilateralGrid.from_image(two_tone())
    with pytest.raises(ValueError, match="does not match"):
        BilateralSolver(grid).solve(np.zeros((10, 10)))
