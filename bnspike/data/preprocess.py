"""Preprocessing, applied in this order, each step switched by its `data.*` key:

    center -> standardize -> whiten (cholesky | zca | pca [top components]; optional ridge)
    regression target: center_target -> scale_target
    classification labels: exactly two distinct values -> {-1, +1} (the smaller one -> -1)

Every step is recorded in the run's config.yaml by its key; the label mapping is returned
so the run can log it. Nothing is guessed: a step that cannot be done raises DataError.
"""
from __future__ import annotations

import numpy as np

from .core import DataError, Origin

SINGULAR = 1e-12  # relative eigenvalue below which a covariance counts as singular


def features(X: np.ndarray, dc: dict, origin: Origin) -> np.ndarray:
    scaled = dc["standardize"] or dc["whiten"] != "none"
    if scaled and not dc["center"]:
        raise DataError("data.center: standardising and whitening are defined on centred features; "
                        "set data.center: true (or turn off data.standardize and data.whiten)")
    if dc["center"]:
        X = X - X.mean(axis=0)
    if scaled:
        constant = np.flatnonzero(np.all(X == X[0], axis=0))
        if constant.size:
            names = ", ".join(origin.column(j) for j in constant[:10])
            raise DataError(f"{origin.where}: {constant.size} constant feature column(s) ({names}): "
                            "cannot standardise or whiten them; drop them")
    if dc["standardize"]:
        X = X / X.std(axis=0)
    if dc["whiten"] != "none":
        X = whiten(X, dc, origin)
    return X


def whiten(X: np.ndarray, dc: dict, origin: Origin) -> np.ndarray:
    """Make X^T X / n = I (exactly without a ridge, shrunk towards it with one). X is centred."""
    n, d = X.shape
    method, ridge = dc["whiten"], dc["whiten_ridge"]
    k = dc["whiten_components"] or d
    if k > d:
        raise DataError(f"data.whiten_components: {k} components asked, but the data has d = {d} features")
    cov = X.T @ X / n + ridge * np.eye(d)
    evals, evecs = np.linalg.eigh(cov)  # ascending
    if evals[d - k] <= SINGULAR * evals[-1]:
        raise DataError(_singular_message(n, d, k, evals, evecs, origin))
    if method == "cholesky":
        import scipy.linalg  # deferred: ~20 MB of imports that only this whitening needs

        L = np.linalg.cholesky(cov)
        return scipy.linalg.solve_triangular(L, X.T, lower=True).T
    # eigenvector signs are LAPACK's choice: fix them (largest loading positive) so pca is reproducible
    evecs = evecs * np.sign(evecs[np.abs(evecs).argmax(axis=0), np.arange(d)])
    pca = X @ evecs[:, ::-1] / np.sqrt(evals[::-1])  # components by decreasing variance
    return pca[:, :k] if method == "pca" else pca @ evecs[:, ::-1].T  # zca rotates back


def _singular_message(n, d, k, evals, evecs, origin: Origin) -> str:
    fix = ("set data.whiten_ridge > 0, or use whiten: pca with data.whiten_components "
           f"<= {int(np.sum(evals > SINGULAR * evals[-1]))}, or drop columns")
    head = f"{origin.where}: cannot whiten: the feature covariance is singular"
    if n <= d:
        return f"{head}: {n} samples in {d} dimensions (rank at most n - 1 = {n - 1}); {fix}"
    null = evecs[:, 0]
    involved = np.argsort(-np.abs(null))[: max(2, int(np.sum(np.abs(null) > 0.1)))][:6]
    cols = ", ".join(f"{origin.column(j)} ({null[j]:+.2f})" for j in involved)
    return (f"{head} (smallest eigenvalue {evals[0]:.3g}, largest {evals[-1]:.3g}): collinear "
            f"columns, this combination is constant: {cols}; {fix}")


def target(y: np.ndarray, dc: dict) -> np.ndarray:
    """Regression target; a constant one was refused by checks.target, so std > 0."""
    if dc["center_target"]:
        y = y - y.mean()
    if dc["scale_target"]:
        y = y / y.std()
    return y


def labels(y: np.ndarray, origin: Origin) -> tuple[np.ndarray, dict]:
    """Exactly two distinct labels of any type -> {-1., +1.}, the smaller (sort order) -> -1.

    So {0, 1} and {-1, +1} map the way one expects, and {'B', 'M'} gives B -> -1, M -> +1.
    """
    try:
        values, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    except TypeError as e:  # an object array mixing types that do not sort together
        raise DataError(f"{origin.where}: the labels in {origin.target} mix types that cannot be "
                        f"compared ({e})") from None
    if len(values) != 2:
        shown = ", ".join(f"{v!r} ({c} rows)" for v, c in zip(values[:10].tolist(), counts[:10]))
        more = f" and {len(values) - 10} more" if len(values) > 10 else ""
        raise DataError(f"{origin.where}: classification needs exactly two classes in the target "
                        f"{origin.target}; found {len(values)}: {shown}{more}")
    low, high = values.tolist()  # plain Python values, readable in a log
    return np.where(inverse.reshape(-1) == 1, 1.0, -1.0), {low: -1, high: 1}
