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

import numpy as np
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


class BNLinearSquare:
    """Exact top eigenvalue of the Hessian in w of the BN-linear square loss, without autograd.

    Train-mode BN on the full batch makes the loss depend on w only through <b, w> and
    q = w^T Sigma w + eps (mechanism.md section 1; beta and ybar only add constants):
        R(w) = const - alpha <b, w> / sqrt(q) + alpha^2 / 2 * (w^T Sigma w) / q.
    Differentiating twice, with s = Sigma w and c = <b, w>:
        H = k Sigma + g (b s^T + s b^T) - h s s^T,
        k = alpha c q^-3/2 + alpha^2 eps q^-2,  g = alpha q^-3/2,  h = 3 alpha c q^-5/2 + 4 alpha^2 eps q^-3.
    In Sigma's eigenbasis (computed once) H is diag(k lam) + B C B^T with B = [b, s] and
    C = [[0, g], [g, -h]]: small d take eigvalsh of that; larger d find the top eigenvalue by
    bisection on an exact eigenvalue count (Haynsworth inertia: the number of eigenvalues
    above x is #{k lam_i > x} + #positive eigenvalues of -C^-1 - B^T (diag(k lam) - x)^-1 B,
    minus 1), 32 points per round, to machine precision in O(d) per point.
    """

    POINTS = 32

    def __init__(self, sigma, b, eps: float, dense_max: int):
        self.lam, self.Q = np.linalg.eigh(np.asarray(sigma, dtype=np.float64))
        self.b_hat = self.Q.T @ np.asarray(b, dtype=np.float64)
        self.eps, self.dense_max = eps, dense_max

    def top(self, w: np.ndarray, alpha: float) -> float:
        w_hat = self.Q.T @ w
        s_hat = self.lam * w_hat
        c, q, eps = self.b_hat @ w_hat, w_hat @ s_hat + self.eps, self.eps
        k = alpha * c * q ** -1.5 + alpha ** 2 * eps * q ** -2
        g = alpha * q ** -1.5
        h = 3 * alpha * c * q ** -2.5 + 4 * alpha ** 2 * eps * q ** -3
        D = k * self.lam
        if g == 0:  # alpha = 0: the loss is flat in w
            return 0.0
        if D.size <= self.dense_max:
            H = np.diag(D) + g * (np.outer(self.b_hat, s_hat) + np.outer(s_hat, self.b_hat)) - h * np.outer(s_hat, s_hat)
            return float(np.linalg.eigvalsh(H)[-1])
        return _top_by_bisection(D, self.b_hat, s_hat, g, h, self.POINTS)


def _top_by_bisection(D, b, s, g, h, points) -> float:
    P = np.stack([b * b, b * s, s * s], axis=1)  # W(x) = B^T (D - x)^-1 B, entry by entry
    m11, m12 = -h / g ** 2, -1.0 / g  # -C^-1 = [[-h/g^2, -1/g], [-1/g, 0]]: one positive eigenvalue

    def count_above(x):
        Dx = D[None, :] - x[:, None]
        W = (1.0 / Dx) @ P
        e11, e12, e22 = m11 - W[:, 0], m12 - W[:, 1], -W[:, 2]
        det, tr = e11 * e22 - e12 ** 2, e11 + e22
        positive = np.where(det < 0, 1, np.where(tr > 0, 2, 0))
        return (Dx > 0).sum(axis=1) + positive - 1

    # Weyl: the top eigenvalue is within ||B C B^T|| of max(D)
    top_d = D.max()
    radius = 1.01 * np.sqrt(2 * g ** 2 + h ** 2) * (P[:, 0].sum() + P[:, 2].sum()) + 1e-300
    lo, hi = top_d - radius, top_d + radius
    with np.errstate(divide="ignore", invalid="ignore"):
        while hi - lo > 4 * np.finfo(np.float64).eps * max(abs(lo), abs(hi)):
            x = np.linspace(lo, hi, points + 2)[1:-1]
            above = np.flatnonzero(count_above(x) >= 1)
            if above.size == 0:
                hi = x[0]
            else:
                i = above[-1]
                lo, hi = x[i], (x[i + 1] if i + 1 < points else hi)
    return 0.5 * (lo + hi)
