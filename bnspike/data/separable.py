"""Linearly separable {-1, +1} data with an exactly known hard margin, and the max-margin solver.

Both sources draw from default_rng(data_seed): a unit teacher u, then Gaussian vectors g_k in
the (d-1)-dimensional complement of u, whitened so that their second moment is exactly
spread^2 times the identity there (p_k = the whitened g_k, as vectors orthogonal to u). Each
group k gives four samples

    ( t_k u + p_k, +1)   ( t_k u - p_k, +1)   (-t_k u - p_k, -1)   (-t_k u + p_k, -1)

so the features are exactly centred, the classes are balanced, y x = t_k u +- p_k, and
Sigma = mean(t_k^2) u u^T + spread^2 (I - u u^T). Over the groups with t_k = margin the +-p_k
cancel, so for any v the smallest <y x, v> is at most margin <u, v>: u is the max-margin
direction and the hard margin is exactly `margin`, in the Euclidean geometry of a plain linear
model and in the Sigma geometry BatchNorm trains in (||v||_Sigma = 1).

    separable:   t_k = margin for the first data.support groups, margin + |N(0, 1)| for the rest
    knife_edge:  t_k = margin for every group: every sample sits on one common margin, so every
                 sample carries the same share of the logistic gradient (the knife-edge,
                 "active-margin" setting of mechanism.md section 5). With margin = spread = 1,
                 Sigma = I exactly.

data.n must be a multiple of 4 with n/4 >= d - 1 (the whitening needs that many g_k).
The statements hold for the features as built; data.standardize / data.whiten act afterwards
and move the margin (the logistic probes solve for the actual max-margin direction anyway).
The labels are -1/+1 already; `data.task: classification` keeps them as they are.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .core import DataError, Origin, Raw


def _groups(dc: dict, t_of) -> Raw:
    n, d = dc["n"], dc["d"]
    if n % 4 or n // 4 < d - 1 or d < 2:
        raise DataError(f"data.n={n}, data.d={d}: the {dc['source']} source needs d >= 2, n a multiple "
                          f"of 4 and n/4 >= d-1 (groups of four samples, whitened in d-1 dimensions)")
    m = n // 4
    rng = np.random.default_rng(dc["data_seed"])
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    basis = np.linalg.qr(np.column_stack([u, rng.standard_normal((d, d - 1))]))[0][:, 1:]
    g = rng.standard_normal((m, d - 1))
    g = g @ np.linalg.inv(np.linalg.cholesky(g.T @ g / m)).T * dc["spread"]
    p = g @ basis.T
    t = t_of(rng, m)[:, None] * u
    X = np.concatenate([t + p, t - p, -t - p, -t + p])
    y = np.concatenate([np.ones(2 * m), -np.ones(2 * m)])
    where = f"{dc['source']} (margin {dc['margin']}, spread {dc['spread']}, data_seed {dc['data_seed']})"
    return Raw(X, y, Origin(where))


def separable(dc: dict) -> Raw:
    if dc["support"] > dc["n"] // 4:
        raise DataError(f"data.support={dc['support']} groups of four need data.n >= {4 * dc['support']}")

    def t_of(rng, m):
        t = dc["margin"] + np.abs(rng.standard_normal(m))
        t[:dc["support"]] = dc["margin"]
        return t

    return _groups(dc, t_of)


def knife_edge(dc: dict) -> Raw:
    return _groups(dc, lambda rng, m: np.full(m, dc["margin"]))


@dataclass(frozen=True)
class MaxMargin:
    direction: np.ndarray  # unit vector u* in the feature space it was solved in
    margin: float  # hard margin min_i y_i <u*, z_i>


def max_margin(Z: np.ndarray, y: np.ndarray) -> MaxMargin | None:
    """Homogeneous hard-margin separator: min ||w|| subject to y_i <w, z_i> >= 1; None when the
    data are not linearly separable through the origin.

    This is a least-distance program, solved exactly (finite active-set method, no tolerance
    to tune) by Lawson & Hanson's reduction to non-negative least squares (scipy's nnls):
    with G = rows y_i z_i, u = argmin_{u >= 0} ||[G^T; 1^T] u - e_{d+1}||, r the residual,
    w = -r[:d] / r[d]; r = 0 means the constraints are infeasible. The result is certified:
    w = G^T lambda with lambda = u / (1 - sum u) >= 0, and every sample with lambda_i > 0
    must sit on the margin (y_i <w, z_i> = 1 to 1e-10): the KKT conditions of the problem.
    (libsvm's SVC stores its kernel in float32 and reaches only ~1e-7 here, slowly.)
    """
    import scipy.optimize  # deferred: ~20 MB of imports that only max-margin directions need

    G = y[:, None] * Z
    n, d = G.shape
    E = np.vstack([G.T, np.ones((1, n))])
    u, _ = scipy.optimize.nnls(E, np.eye(d + 1)[-1], maxiter=50 * (n + d))
    r = E @ u - np.eye(d + 1)[-1]
    if abs(r[-1]) < 1e-12:
        return None
    w = -r[:d] / r[-1]
    functional = G @ w
    lam = u / (1.0 - u.sum())
    if functional.min() < 1 - 1e-10 or np.any(np.abs(functional[lam > 0] - 1) > 1e-10):
        return None
    norm = np.linalg.norm(w)
    return MaxMargin(direction=w / norm, margin=float(functional.min() / norm))
