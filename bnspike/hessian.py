"""Top eigenvalue of a symmetric operator given only Hessian-vector products.

"Sharpness" is the largest ALGEBRAIC eigenvalue of the Hessian. Power iteration finds the
largest in magnitude, which is wrong when strong negative curvature dominates (a trap of the
edge-of-stability code), so we use Lanczos with full reorthogonalisation, warm-started from the
previous top eigenvector, stopping when the Ritz residual is below `tol * |lambda|`. When it has
not converged after `max_iter` products, or when d is small, we fall back to the exact answer:
the dense Hessian from d batched products and `eigvalsh`. For the BN-linear model with the
square loss, BNLinearSquare needs no products at all: the Hessian's closed form, solved exactly.
"""
from __future__ import annotations

import math
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
    In Sigma's eigenbasis (computed once) H = D + B C B^T with D = diag(k lam), B = [b, s] and
    C = [[0, g], [g, -h]]. Haynsworth's inertia formula counts the eigenvalues of H above x:
        #{D_i > x} + #{positive eigenvalues of E(x)} - 1,
        E(x) = -C^-1 - B^T (D - x)^-1 B = -C^-1 + sum_i p_i p_i^T / (x - D_i),  p_i = (b_i, s_i),
    a 2 x 2 matrix that decreases with x between the poles D_i. Let D_T >= D_S be the two
    largest D_i; by interlacing the top eigenvalue is at least D_S. Above D_T it is where E's
    smaller eigenvalue crosses 0; in (D_S, D_T) where its larger one does. The two are one
    function nu(x): E = F + p_T p_T^T / (x - D_T) has one eigenvalue that diverges at D_T and one,
    nu, that passes through it analytically, the root of
        (x - D_T) det(F - nu) + p_T^T adj(F - nu) p_T = 0        (a quadratic in nu).
    So the top eigenvalue is the one root of the decreasing function nu on (D_S, infinity) (or D_S
    if nu < 0 there), found by Newton on (x - D_S) nu(x) (smooth there, nearly linear both near
    D_T and near a cluster of poles) inside a bracket that every evaluation narrows by the sign
    of nu: O(d) per step, 5 or 6 steps on a training run's states, no state kept (the result
    depends only on w and alpha). For d <= dense_max LAPACK's eigvalsh of the d x d matrix is
    faster (measured on one thread: 43 against 55 us at d = 16; 196 against 58 us at d = 64).
    """

    def __init__(self, sigma, b, eps: float, dense_max: int = 16):
        lam, Q = np.linalg.eigh(np.asarray(sigma, dtype=np.float64))
        self.lam, self.Qt, self.eps = lam, np.ascontiguousarray(Q.T), eps
        self.dense_max = max(dense_max, 1)  # d = 1 has no runner-up pole
        self.b_hat = self.Qt @ np.asarray(b, dtype=np.float64)
        d = lam.size
        # rows b_i^2, b_i s_i, s_i^2, so that B^T diag(r) B = P @ r (rows 1 and 2 are set per call)
        self.P, self.R = np.empty((3, d)), np.empty((2, d))  # R: _Nu's scratch
        self.P[0] = self.b_hat ** 2
        self.b2, self.lam_abs = float(self.P[0].sum()), float(np.abs(lam).max())
        # D = k lam is largest at lam's top for k >= 0 and at its bottom for k < 0: the top index
        # T, the runner-up S and lam's gaps to lam_T (k times them is D - D_T <= 0). T's own
        # term is dropped (_Nu); its stand-in gap lies beyond the far end, where no t reaches.
        self.ends = {}
        for up, T, S, far in ((True, d - 1, d - 2, 0), (False, 0, 1, d - 1)):
            gap = lam - lam[T]
            gap[T] = gap[far] + (-1.0 if up else 1.0)
            self.ends[up] = gap, T, S

    def top(self, w: np.ndarray, alpha: float) -> float:
        w_hat = self.Qt @ w
        s = self.lam * w_hat
        P = self.P
        np.multiply(self.b_hat, s, out=P[1])
        np.multiply(s, s, out=P[2])
        c, q, eps = float(self.b_hat @ w_hat), float(w_hat @ s) + self.eps, self.eps
        k = alpha * c * q ** -1.5 + alpha ** 2 * eps * q ** -2
        g = alpha * q ** -1.5
        h = 3 * alpha * c * q ** -2.5 + 4 * alpha ** 2 * eps * q ** -3
        if g == 0:  # alpha = 0: the loss is flat in w
            return 0.0
        if self.lam.size <= self.dense_max:
            H = np.diag(k * self.lam) + g * (np.outer(self.b_hat, s) + np.outer(s, self.b_hat)) - h * np.outer(s, s)
            return float(np.linalg.eigvalsh(H)[-1])
        gap, T, S = self.ends[k >= 0]
        D_T = k * float(self.lam[T])
        # Weyl: the top eigenvalue is within ||B C B^T|| <= radius of D_T
        s2 = float(P[2].sum())
        radius = 2 * abs(g) * math.sqrt(self.b2 * s2) + abs(h) * s2
        tol = 4 * _EPS * (abs(k) * self.lam_abs + radius)  # round-off in H's entries
        nu = _Nu(k * gap, P, self.R, T, (float(self.b_hat[T]), float(s[T])), (float(self.b_hat[S]), float(s[S])),
                 -h / g ** 2, -1.0 / g)
        return D_T + nu.root(k * float(self.lam[T] - self.lam[S]), radius, tol, D_T)


class _Nu:
    """nu(t), the eigenvalue of E(D_T + t) that is analytic through the pole D_T, and d nu / dt.

    F = E - p_T p_T^T / t collects the other poles (Delta = D - D_T <= 0; T's own term is zeroed).
    With G(t, nu) = t nu^2 - (t tr F + |p_T|^2) nu + (t det F + p_T^T adj(F) p_T), nu is the root
    that stays finite at t = 0, and d nu / dt = -G_t / G_nu with G_nu = -sqrt(discriminant).
    Each call keeps F for two_pole_root.
    """

    STEPS = 200  # a handful are used; more means a bug, not slow convergence

    def __init__(self, Delta, P, R, T, p_T, p_S, m11, m12):
        self.Delta, self.P, self.T, self.p_S, self.m11, self.m12 = Delta, P, T, p_S, m11, m12
        self.r, self.r2, self.RT = R[0], R[1], R.T  # the scratch rows: 1 / (x - D_i) and its square
        self.p1, self.p2 = p_T
        self.n = self.p1 * self.p1 + self.p2 * self.p2

    def __call__(self, t: float) -> tuple[float, float]:
        r = self.r
        np.subtract(t, self.Delta, out=r)
        np.reciprocal(r, out=r)
        r[self.T] = 0.0
        np.multiply(r, r, out=self.r2)
        (r11, d11), (r12, d12), (r22, d22) = (self.P @ self.RT).tolist()  # F' = -(d11, d12, d22)
        p1, p2, n = self.p1, self.p2, self.n
        self.F = f11, f12, f22 = self.m11 + r11, self.m12 + r12, r22
        tr, det = f11 + f22, f11 * f22 - f12 * f12
        B, C = t * tr + n, t * det + _adj(f11, f12, f22, p1, p2)
        root = math.sqrt(max(B * B - 4 * t * C, 0.0))
        if B >= 0:
            nu = 2 * C / (B + root) if B + root else math.nan
        else:
            nu = (B - root) / (2 * t)
        # G_t = nu^2 - (tr F + t tr F') nu + det F + t tr(adj(F) F') + p_T^T adj(F') p_T
        G_t = (nu * nu - (tr - t * (d11 + d22)) * nu + det - t * (f22 * d11 - 2 * f12 * d12 + f11 * d22)
               - _adj(d11, d12, d22, p1, p2))
        return nu, (G_t / root if root else math.nan)

    def two_pole_root(self, delta: float) -> float:
        """The top root of the model that keeps the poles T and S and freezes the others at the
        last evaluation: t (t + delta) det(A + P_S / (t + delta) + P_T / t) = 0 is a quadratic."""
        (q1, q2), p1, p2 = self.p_S, self.p1, self.p2
        f11, f12, f22 = self.F
        a11, a12, a22 = f11 - q1 * q1 / delta, f12 - q1 * q2 / delta, f22 - q2 * q2 / delta
        a = a11 * a22 - a12 * a12
        b = delta * a + _adj(a11, a12, a22, q1, q2) + _adj(a11, a12, a22, p1, p2)
        c = delta * _adj(a11, a12, a22, p1, p2) + (p1 * q2 - p2 * q1) ** 2
        disc = b * b - 4 * a * c
        if disc < 0 or a == 0:
            return math.nan
        roots = [x for x in ((-b + math.sqrt(disc)) / (2 * a), (-b - math.sqrt(disc)) / (2 * a)) if x > -delta]
        return max(roots, default=math.nan)

    def root(self, delta: float, radius: float, tol: float, D_T: float) -> float:
        """t = x - D_T at the root of nu in (D_S, D_T + radius] (delta = D_T - D_S), by Newton on
        psi = (t + delta) nu(t) inside a bracket that each evaluation narrows (nu > 0 below the
        root). A small Newton step alone proves nothing (nu can be steep far from its root, at a
        pole with a tiny residue): the point after it is placed a hair past Newton's, so that the
        bracket itself closes to round-off around the root."""
        lo, hi = -delta, radius
        if delta <= tol:  # a double pole: the top eigenvalue is at least D_T - tol; is it above D_T + tol?
            lo, t = 0.0, tol
        else:  # at t = 0 nu = p_T^T adj(F) p_T / |p_T|^2 tells the side of D_T
            t = 0.0 if self.n else 0.5 * (radius - delta)
        for step in range(self.STEPS):
            value, slope = self(t)
            if value > 0:
                lo = t
            else:
                hi = t
            psi, dpsi = (t + delta) * value, value + (t + delta) * slope
            new = t - psi / dpsi if dpsi else math.nan
            hair = max(2 * _EPS * abs(D_T + t), 0.25 * tol)
            if hi - lo <= max(4 * _EPS * abs(D_T + t), tol):
                return new if lo <= new <= hi else 0.5 * (lo + hi)
            if step == 0 and t == 0:  # the first step: the two nearest poles in closed form
                new = self.two_pole_root(delta)
            elif abs(new - t) <= hair:  # past the root, seen from this end of the bracket
                new += hair if value > 0 else -hair
            if not lo < new < hi:  # also catches nan
                new = 0.5 * (lo + hi)
            t = new
        raise RuntimeError("sharpness: the secular Newton iteration did not converge")


def _adj(f11, f12, f22, p1, p2) -> float:
    """p^T adj(F) p for the symmetric 2 x 2 F = [[f11, f12], [f12, f22]]."""
    return f22 * p1 * p1 - 2 * f12 * p1 * p2 + f11 * p2 * p2


_EPS = float(np.finfo(np.float64).eps)
