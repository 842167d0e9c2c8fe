"""Checks every source's (X, y) goes through before preprocessing: shapes, types, finiteness.

Nothing is reshaped, dropped or coerced here: a 1-D X or an (n, 1) y is refused, because
guessing wrong turns (n,) - (n, 1) into an (n, n) loss that trains without complaint.
"""
from __future__ import annotations

import numpy as np

from .core import DataError, Origin


def _first_bad(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def _numeric(a: np.ndarray, what: str, origin: Origin) -> np.ndarray:
    if a.dtype == bool or np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating):
        return a.astype(np.float64)
    raise DataError(f"{origin.where}: {what} has dtype {a.dtype}, not numbers "
                    "(text, objects and complex values are refused, never converted)")


def features(X: np.ndarray, origin: Origin) -> np.ndarray:
    """A float64 (n, d) matrix with n >= 2, d >= 1 and only finite values."""
    if X.ndim == 1:
        raise DataError(f"{origin.where}: the features are 1-D, shape {X.shape}: one feature of "
                        f"{X.shape[0]} samples or one sample of {X.shape[0]} features? Give a 2-D "
                        "array, X.reshape(-1, 1) or X.reshape(1, -1)")
    if X.ndim != 2:
        raise DataError(f"{origin.where}: the features must be a 2-D (n, d) array, got shape {X.shape}")
    n, d = X.shape
    if n < 2:
        raise DataError(f"{origin.where}: {n} sample(s); BatchNorm needs at least 2 rows")
    if d < 1:
        raise DataError(f"{origin.where}: no feature columns (shape {X.shape})")
    X = _numeric(X, "the features", origin)
    bad = ~np.isfinite(X)
    if bad.any():
        i, j = _first_bad(bad)
        raise DataError(f"{origin.where}: {int(bad.sum())} NaN or infinite value(s) in the features; "
                        f"first at {origin.row(i)}, {origin.column(j)} ({X[i, j]}); "
                        "bnspike neither drops nor imputes them")
    return X


def target(y: np.ndarray, n: int, task: str, origin: Origin) -> np.ndarray:
    """A 1-D target of n values: finite floats (regression) or any labels (classification)."""
    if y.ndim != 1:
        hint = "; for one target column pass y.ravel()" if y.ndim == 2 and y.shape[1] == 1 else ""
        raise DataError(f"{origin.where}: the target {origin.target} must be 1-D (n,), got shape "
                        f"{y.shape}{hint}")
    if len(y) != n:
        raise DataError(f"{origin.where}: the features have {n} rows but the target {origin.target} "
                        f"has {len(y)}")
    if y.dtype == bool or np.issubdtype(y.dtype, np.number):
        bad = ~np.isfinite(y)
        if bad.any():
            i, = _first_bad(bad)
            raise DataError(f"{origin.where}: {int(bad.sum())} NaN or infinite value(s) in the target "
                            f"{origin.target}; first at {origin.row(i)} ({y[i]})")
    if task == "classification":
        return y  # labels of any type, as given: preprocess.labels maps them to -1/+1
    y = _numeric(y, f"the target {origin.target}", origin)
    if np.all(y == y[0]):
        raise DataError(f"{origin.where}: the regression target {origin.target} is constant "
                        f"(= {y[0]} in all {n} rows): there is nothing to fit")
    return y
