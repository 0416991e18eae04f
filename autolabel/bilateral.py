"""Fast bilateral solver (Barron & Poole, ECCV'16): edge-aware smoothing of a target map on a bilateral grid.

TokenCut's saliency setting refines its patch mask with it (σ spatial 16, luma 16, chroma 8, λ 256). Pixels are
splatted onto the vertices of a 5-D grid (x, y, luma, two chroma channels, each divided by its σ and rounded); the
problem "stay close to the target where confident, be smooth between grid neighbours" becomes a sparse SPD system
on the vertices, solved by Jacobi-preconditioned conjugate gradients, and the solution is sliced back to pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import sparse
from scipy.sparse.linalg import cg

BISTOCHASTIC_ITERS = 10
GRID_DIMS = 5  # x, y, luma and two chroma channels


@dataclass(frozen=True)
class BilateralGrid:
    """The splat/blur structure of one reference image.

    Attributes:
        vertex_of_pixel: (H*W,) index of the grid vertex each pixel falls in (splat and slice).
        counts: (V,) pixels per vertex.
        neighbours: (V, V) sparse symmetric 0/1 matrix of ±1 grid neighbours over all five dimensions.
        shape: (H, W) of the reference image.
    """

    vertex_of_pixel: np.ndarray
    counts: np.ndarray
    neighbours: sparse.csr_matrix
    shape: tuple[int, int]

    @property
    def n_vertices(self) -> int:
        return int(self.counts.shape[0])

    @classmethod
    def from_image(cls, image: np.ndarray, sigma_spatial: float = 16.0, sigma_luma: float = 16.0,
                   sigma_chroma: float = 8.0) -> BilateralGrid:
        """Grid of an (H, W, 3) RGB image, uint8 or float in [0, 1]; σ in pixels and 0..255 colour units."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"bilateral grid needs an (H, W, 3) RGB image, got shape {image.shape}")
        rgb = image if image.dtype == np.uint8 else np.clip(image * 255.0, 0, 255).astype(np.uint8)
        h, w = rgb.shape[:2]
        ycc = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb).reshape(-1, 3).astype(np.float64)
        yy, xx = np.mgrid[:h, :w]
        coords = np.stack([xx.ravel() / sigma_spatial, yy.ravel() / sigma_spatial, ycc[:, 0] / sigma_luma,
                           ycc[:, 1] / sigma_chroma, ycc[:, 2] / sigma_chroma], axis=1)
        coords = np.rint(coords).astype(np.int64)
        # One integer key per cell; the +1 margin keeps the neighbours of border cells distinct.
        extent = coords.max(axis=0) + 3
        strides = np.cumprod(np.concatenate([[1], extent[:-1]]))
        keys = (coords + 1) @ strides
        unique_keys, vertex_of_pixel = np.unique(keys, return_inverse=True)
        n = unique_keys.shape[0]
        counts = np.bincount(vertex_of_pixel, minlength=n).astype(np.float64)
        rows, cols = [], []
        for stride in strides:
            nb = unique_keys + stride  # the +1 neighbour along this dimension; symmetry gives the -1 one
            pos = np.minimum(np.searchsorted(unique_keys, nb), n - 1)
            hit = unique_keys[pos] == nb
            rows.append(np.flatnonzero(hit))
            cols.append(pos[hit])
        r = np.concatenate(rows)
        c = np.concatenate(cols)
        adj = sparse.coo_matrix((np.ones(2 * r.size), (np.concatenate([r, c]), np.concatenate([c, r]))),
                                shape=(n, n)).tocsr()
        return cls(vertex_of_pixel.ravel(), counts, adj, (h, w))

    def splat(self, values: np.ndarray) -> np.ndarray:
        """Sum of per-pixel ``values`` (H*W,) in each vertex."""
        return np.bincount(self.vertex_of_pixel, weights=values, minlength=self.n_vertices)

    def slice(self, vertex_values: np.ndarray) -> np.ndarray:
        """(H, W) map reading every pixel's vertex value."""
        return vertex_values[self.vertex_of_pixel].reshape(self.shape)

    def blur_matrix(self) -> sparse.csr_matrix:
        """[1 2 1] blur along each of the five grid dimensions, summed (the solver's smoothness operator)."""
        return (sparse.identity(self.n_vertices, format="csr") * (2 * GRID_DIMS) + self.neighbours).tocsr()


def bistochastize(counts: np.ndarray, blur: sparse.csr_matrix, iters: int = BISTOCHASTIC_ITERS
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Vertex scalings (n, m) with diag(n)·B·diag(n) having row sums m ≈ the pixel counts (Sinkhorn-style)."""
    n = np.ones_like(counts)
    for _ in range(iters):
        n = np.sqrt(n * counts / (blur @ n))
    return n, n * (blur @ n)


class BilateralSolver:
    """The solver's smoothness system for one image, reusable for many targets (e.g. every region of an image).

    Minimises λ·smoothness(x over the bilateral grid) + Σ confidence·(x − target)² in the grid's vertex space,
    with the grid's blur bistochastized so every vertex is smoothed alike.
    """

    def __init__(self, grid: BilateralGrid, lam: float = 256.0, tol: float = 1e-5, maxiter: int = 25) -> None:
        self.grid = grid
        self.tol = tol
        self.maxiter = maxiter
        blur = grid.blur_matrix()
        n, m = bistochastize(grid.counts, blur)
        dn = sparse.diags(n)
        self.smoothness = (lam * (sparse.diags(m) - dn @ blur @ dn)).tocsr()

    def solve(self, target: np.ndarray, confidence: np.ndarray | None = None) -> np.ndarray:
        """Edge-aware smoothed (H, W) version of ``target``; ``confidence`` (H, W) defaults to uniform 1."""
        grid = self.grid
        if target.shape != grid.shape:
            raise ValueError(f"target shape {target.shape} does not match the grid's image {grid.shape}")
        t = target.astype(np.float64).ravel()
        c = np.ones_like(t) if confidence is None else confidence.astype(np.float64).ravel()
        sc = grid.splat(c)
        b = grid.splat(c * t)
        a = self.smoothness + sparse.diags(sc)
        precond = sparse.diags(1.0 / np.maximum(a.diagonal(), 1e-5))
        x0 = np.where(sc > 0, b / np.maximum(sc, 1e-12), 0.0)
        y, _ = cg(a, b, x0=x0, M=precond, rtol=self.tol, maxiter=self.maxiter)
        return grid.slice(y)
