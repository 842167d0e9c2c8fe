"""Datasets: sources (synthetic, bundled scikit-learn data), preprocessing, and the data facts.

Everything here is float64 numpy; the training loop moves X and y to the model's dtype and
device. `Data.facts` holds the moments the theory needs (mechanism.md section 2), computed on
the *centred* features because BatchNorm subtracts the batch mean of Xw anyway:

    Sigma = Xc^T Xc / n     b = Xc^T y / n     c = ||y||^2 / n
    w_ls = Sigma^+ b        rho_max = sqrt(b^T w_ls)
    R*   = least-squares optimum of the BN model class (linear + intercept)
         = 1/2 mean((y - ybar - Xc w_ls)^2) = 1/2 (c - ybar^2 - rho_max^2)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg


class DataError(ValueError):
    """Bad data; the message names the source (file, column, row or config key)."""


@dataclass(frozen=True)
class Facts:
    n: int
    d: int
    sigma: np.ndarray  # (d, d) covariance of the centred features
    b: np.ndarray  # (d,)
    c: float  # ||y||^2 / n
    y_mean: float
    w_ls: np.ndarray  # least-squares direction Sigma^+ b
    rho_max: float
    r_star: float
    sigma_eigs: np.ndarray  # ascending

    @property
    def whitened(self) -> bool:
        return bool(np.allclose(self.sigma, np.eye(self.d), atol=1e-10))


@dataclass(frozen=True)
class Data:
    X: np.ndarray  # (n, d) float64
    y: np.ndarray  # (n,) float64
    facts: Facts
    description: str


def compute_facts(X: np.ndarray, y: np.ndarray) -> Facts:
    n, d = X.shape
    Xc = X - X.mean(axis=0)
    y_mean = float(y.mean())
    sigma = Xc.T @ Xc / n
    b = Xc.T @ y / n
    w_ls, *_ = np.linalg.lstsq(Xc, y - y_mean, rcond=None)
    resid = y - y_mean - Xc @ w_ls
    return Facts(
        n=n, d=d, sigma=sigma, b=b, c=float(y @ y / n), y_mean=y_mean, w_ls=w_ls,
        rho_max=float(np.sqrt(max(b @ w_ls, 0.0))), r_star=float(0.5 * resid @ resid / n),
        sigma_eigs=np.linalg.eigvalsh(sigma))


# ---------------------------------------------------------------- preprocessing

def whiten(X: np.ndarray, method: str, ridge: float = 0.0, where: str = "data") -> np.ndarray:
    """Make Xc^T Xc / n = I (up to the ridge). X must already be centred."""
    n, d = X.shape
    if n <= d:
        raise DataError(f"{where}: cannot whiten {n} samples in {d} dimensions (need n > d): "
                        "the covariance is singular; set data.whiten_ridge > 0 or reduce d")
    cov = X.T @ X / n + ridge * np.eye(d)
    if method == "cholesky":
        try:
            L = np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            raise DataError(f"{where}: covariance is singular (collinear columns); "
                            "set data.whiten_ridge > 0 or drop columns") from None
        return scipy.linalg.solve_triangular(L, X.T, lower=True).T
    evals, evecs = np.linalg.eigh(cov)
    if evals[0] <= 1e-12 * max(evals[-1], 1e-300):
        raise DataError(f"{where}: covariance is singular (smallest eigenvalue {evals[0]:.3g}; "
                        "collinear columns); set data.whiten_ridge > 0 or drop columns")
    pca = X @ evecs / np.sqrt(evals)
    return pca if method == "pca" else pca @ evecs.T  # zca rotates back


def preprocess_features(X: np.ndarray, dc: dict, where: str) -> np.ndarray:
    if dc["center"] or dc["standardize"] or dc["whiten"] != "none":
        X = X - X.mean(axis=0)
    if dc["standardize"]:
        std = X.std(axis=0)
        if np.any(std == 0):
            raise DataError(f"{where}: column(s) {np.flatnonzero(std == 0).tolist()} are constant; "
                            "cannot standardise")
        X = X / std
    if dc["whiten"] != "none":
        X = whiten(X, dc["whiten"], dc["whiten_ridge"], where)
    return X


def preprocess_target(y: np.ndarray, dc: dict, where: str) -> np.ndarray:
    if dc["center_target"]:
        y = y - y.mean()
    if dc["scale_target"]:
        std = y.std()
        if std == 0:
            raise DataError(f"{where}: the regression target is constant; cannot scale it")
        y = y / std
    return y


# ---------------------------------------------------------------- sources

def _spectrum(dc: dict) -> np.ndarray:
    d = dc["d"]
    kind = dc["spectrum"]
    if kind == "isotropic":
        return np.ones(d)
    if kind == "linear":
        return np.linspace(1.0, dc["spectrum_max"], d)
    if kind == "power":  # 1 .. spectrum_max with eigenvalue k ~ k^-power, rescaled
        p = np.arange(1, d + 1, dtype=float) ** -dc["spectrum_power"]
        return 1.0 + (dc["spectrum_max"] - 1.0) * (p - p.min()) / max(p.max() - p.min(), 1e-300)
    values = np.asarray(dc["spectrum_values"], dtype=float)
    if values.shape != (d,) or np.any(values <= 0):
        raise DataError(f"data.spectrum_values: need {d} positive numbers (data.d), got {values.tolist()}")
    return values


def synthetic(dc: dict) -> tuple[np.ndarray, np.ndarray, str]:
    """Gaussian features with covariance spectrum, preprocessed, then a unit teacher.

    The random stream is the mechanism.md recipe: X first, then the teacher, then the noise,
    all from default_rng(data_seed). The teacher acts on the *preprocessed* features, so
    `whiten: cholesky` gives exactly the reference run of mechanism.md section 6.
    """
    rng = np.random.default_rng(dc["data_seed"])
    X = rng.standard_normal((dc["n"], dc["d"])) * np.sqrt(_spectrum(dc))
    X = preprocess_features(X, dc, "data (synthetic)")
    w_star = rng.standard_normal(dc["d"])
    w_star *= dc["teacher_norm"] / np.linalg.norm(w_star)
    y = X @ w_star
    if dc["noise"] > 0:
        y = y + dc["noise"] * rng.standard_normal(dc["n"])
    return X, y, f"synthetic n={dc['n']} d={dc['d']} spectrum={dc['spectrum']}"


def sklearn_dataset(dc: dict) -> tuple[np.ndarray, np.ndarray, str]:
    """A dataset shipped inside scikit-learn (no download), e.g. diabetes (442 x 10)."""
    import sklearn.datasets

    loader = getattr(sklearn.datasets, f"load_{dc['name']}", None)
    if loader is None:
        raise DataError(f"data.name: scikit-learn ships no dataset {dc['name']!r} "
                        "(try diabetes, breast_cancer, wine, iris, linnerud)")
    bunch = loader()
    X = np.asarray(bunch.data, dtype=float)
    y = np.asarray(bunch.target, dtype=float)
    return preprocess_features(X, dc, f"data (sklearn {dc['name']})"), y, f"sklearn {dc['name']}"


SOURCES = {"synthetic": synthetic, "sklearn": sklearn_dataset}


def load_data(cfg: dict) -> Data:
    dc = cfg["data"]
    if dc["source"] not in SOURCES:
        raise DataError(f"data.source: unknown source {dc['source']!r}; known: {', '.join(SOURCES)}")
    X, y, description = SOURCES[dc["source"]](dc)
    y = preprocess_target(y, dc, f"data ({description})")
    return Data(X=X, y=y, facts=compute_facts(X, y), description=description)
