"""Patch-affinity graphs and the Normalized-Cut eigen-solve shared by TokenCut, MaskCut and deep-spectral.

The NCut relaxation asks for the second-smallest generalized eigenvector of (D - A) v = λ D v. With
u = D^½ v this is the second-LARGEST eigenvector of the normalised affinity M = D^-½ A D^-½, whose largest
eigenvector is known in closed form (u₀ ∝ √d, eigenvalue 1). The fast path therefore deflates u₀ and asks
ARPACK (``scipy.sparse.linalg.eigsh``, Lanczos) for the top eigenvector of M - u₀u₀ᵀ — a few dozen mat-vecs on a
1024×1024 matrix instead of the dense generalized ``eigh`` (kept as :func:`fiedler_dense`, the reference the
benchmark compares against). ``torch.lobpcg`` was tried and was slower and less stable here in float64.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse.linalg
import torch

#: Below this many nodes the dense solver is used (lobpcg needs n well above its block size).
DENSE_BELOW = 24


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1, eps=1e-8)


def cosine_affinity(feats: torch.Tensor) -> torch.Tensor:
    """(N, D) features → (N, N) cosine similarity."""
    f = l2_normalize(feats)
    return f @ f.T


def binary_graph(sim: torch.Tensor, tau: float, eps: float = 1e-5) -> torch.Tensor:
    """TokenCut's graph: 1 where similarity > tau, else eps."""
    return torch.where(sim > tau, torch.ones_like(sim), torch.full_like(sim, eps))


def fiedler_dense(affinity: torch.Tensor | np.ndarray) -> np.ndarray:
    """Reference: second-smallest generalized eigenvector of (D - A) v = λ D v via dense ``scipy.linalg.eigh``."""
    a = affinity.double().numpy() if isinstance(affinity, torch.Tensor) else np.asarray(affinity, np.float64)
    d = np.diag(a.sum(axis=1))
    _, vecs = scipy.linalg.eigh(d - a, d, subset_by_index=[1, 1])
    return vecs[:, 0]


def fiedler_vector(affinity: torch.Tensor, tol: float = 1e-8) -> np.ndarray:
    """Fast second-smallest generalized eigenvector of (D - A) v = λ D v (A symmetric, non-negative rows).

    Returns v in the generalized problem's scaling (v = D^-½ u). The sign is arbitrary; callers orient it.
    """
    a = affinity.double().numpy() if isinstance(affinity, torch.Tensor) else np.asarray(affinity, np.float64)
    n = a.shape[0]
    if n < DENSE_BELOW:
        return fiedler_dense(a) if n > 1 else np.zeros(n)
    d = np.maximum(a.sum(axis=1), 1e-12)
    inv_sqrt_d = 1.0 / np.sqrt(d)
    m = inv_sqrt_d[:, None] * a * inv_sqrt_d[None, :]
    u0 = np.sqrt(d)
    u0 /= np.linalg.norm(u0)
    m -= u0[:, None] * u0[None, :]
    v0 = np.random.default_rng(0).standard_normal(n)
    try:
        _, vecs = scipy.sparse.linalg.eigsh(m, k=1, which="LA", v0=v0, tol=tol, maxiter=20 * n)
        u = vecs[:, 0]
    except (scipy.sparse.linalg.ArpackNoConvergence, scipy.sparse.linalg.ArpackError):  # exact fallback
        _, vecs = scipy.linalg.eigh(m, subset_by_index=[n - 1, n - 1])
        u = vecs[:, 0]
    return u * inv_sqrt_d


def tokencut_graph(features: torch.Tensor, tau: float, eps: float) -> torch.Tensor:
    """TokenCut's affinity of (N, D) features: cosine similarity binarised at ``tau`` (1 above, ``eps`` below)."""
    return binary_graph(cosine_affinity(features), tau, eps)


def solve_fiedler(affinity: torch.Tensor, solver: str) -> np.ndarray:
    """The NCut eigenvector by ``solver``: 'fast' (:func:`fiedler_vector`) or 'dense' (the reference)."""
    if solver == "dense":
        return fiedler_dense(affinity)
    if solver == "fast":
        return fiedler_vector(affinity)
    raise ValueError(f"unknown eigen-solver {solver!r}; choose 'fast' or 'dense'")
