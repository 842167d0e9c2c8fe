"""Gaussian features with a chosen covariance spectrum, labelled by a linear teacher.

The random stream is the mechanism.md recipe: X first, then the teacher, then the noise, all
from default_rng(data_seed). The teacher acts on the *preprocessed* features, so
`whiten: cholesky` gives exactly the reference run of mechanism.md section 6.
Regression: y = X w* + noise. Classification: y = sign(X w* + noise), with +1 where it is 0.
"""
from __future__ import annotations

import numpy as np

from .core import DataError, Origin, Raw


def spectrum(dc: dict) -> np.ndarray:
    d = dc["d"]
    kind = dc["spectrum"]
    if kind == "isotropic":
        return np.ones(d)
    if kind == "linear":
        return np.linspace(1.0, dc["spectrum_max"], d)
    if kind == "power":  # 1 .. spectrum_max with eigenvalue k ~ k^-power, rescaled
        p = np.arange(1, d + 1, dtype=float) ** -dc["spectrum_power"]
        return 1.0 + (dc["spectrum_max"] - 1.0) * (p - p.min()) / max(p.max() - p.min(), 1e-300)
    values = dc["spectrum_values"]
    if len(values) != d or not all(type(v) in (int, float) and v > 0 for v in values):
        raise DataError(f"data.spectrum_values: need {d} positive numbers (data.d), got {values}")
    return np.asarray(values, dtype=float)


def load(dc: dict) -> Raw:
    rng = np.random.default_rng(dc["data_seed"])
    X = rng.standard_normal((dc["n"], dc["d"])) * np.sqrt(spectrum(dc))

    def teacher(X: np.ndarray) -> np.ndarray:  # X preprocessed: pca may have kept fewer columns
        w_star = rng.standard_normal(X.shape[1])
        w_star *= dc["teacher_norm"] / np.linalg.norm(w_star)
        y = X @ w_star
        if dc["noise"] > 0:
            y = y + dc["noise"] * rng.standard_normal(X.shape[0])
        return np.where(y >= 0, 1.0, -1.0) if dc["task"] == "classification" else y

    where = f"synthetic (spectrum {dc['spectrum']}, data_seed {dc['data_seed']})"
    return Raw(X, teacher, Origin(where))
