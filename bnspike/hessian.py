"""Top eigenvalue of a symmetric operator given only Hessian-vector products.

"Sharpness" is the largest ALGEBRAIC eigenvalue of the Hessian. Power iteration finds the
largest in magnitude, which is wrong when strong negative curvature dominates (a trap of the
edge-of-stability code), so we use Lanczos with full reorthogonalisation, warm-started from the
previous top eigenvector, stopping when the Ritz residual is below `tol * |lambda|`. When it has
not converged after `max_iter` products, or when d is small, we fall back to the exact answer:
the dense Hessian from d batched products and `eigvalsh`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

Hvp = Callable[[torch.Tensor], torch.Tensor]  # v (d,) -> H v (d,)


@dataclass
class Eigen:
    value: torch.Tensor  # 0-dim
    vector: torch.Tensor  # (d,), unit norm
    products: int  # Hessian-vector products spent
    method: str  # "lanczos" or "dense"


def dense_top(hvp_batched: Callable[[torch.Tensor], torch.Tensor], d: int, like: torch.Tensor) -> Eigen:
    """Exact: build H from d products at once (rows of the identity), then eigh."""
    eye = torch.eye(d, dtype=like.dtype, device=like.device)
    H = hvp_batched(eye)
    H = 0.5 * (H + H.T)  # symmetric up to round-off; symmetrise for eigh
    evals, evecs = torch.linalg.eigh(H)
    return Eigen(evals[-1], evecs[:, -1], d, "dense")


def lanczos_top(hvp: Hvp, v0: torch.Tensor, max_iter: int, tol: float) -> Eigen | None:
    """Largest algebraic eigenpair by Lanczos; None if not converged within max_iter."""
    d = v0.numel()
    m = min(d, max_iter)
    Q = torch.empty(m, d, dtype=v0.dtype, device=v0.device)
    diag, off = [], []
    q = v0 / v0.norm()
    for j in range(m):
        Q[j] = q
        z = hvp(q)
        diag.append(q @ z)
        basis = Q[: j + 1]
        z = z - basis.T @ (basis @ z)  # full reorthogonalisation, twice is enough
        z = z - basis.T @ (basis @ z)
        beta = z.norm()
        T = torch.diag(torch.stack(diag))
        if off:
            o = torch.stack(off)
            T = T + torch.diag(o, 1) + torch.diag(o, -1)
        evals, evecs = torch.linalg.eigh(T)
        residual = (beta * evecs[-1, -1]).abs()
        # The Krylov space is invariant (beta ~ 0) or the Ritz pair has converged.
        if j + 1 == d or residual <= tol * evals[-1].abs().clamp_min(1e-300):
            vec = basis.T @ evecs[:, -1]
            return Eigen(evals[-1], vec / vec.norm(), j + 1, "lanczos")
        off.append(beta)
        q = z / beta
    return None
