"""What every source produces: the Data object, its theory facts, and where the numbers came from.

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
from typing import Callable

import numpy as np


class DataError(ValueError):
    """Bad data; the message names the source (file, column, row or config key)."""


@dataclass(frozen=True)
class Origin:
    """Where a source's arrays came from, so that errors can name the file, column and row."""
    where: str  # "examples/data/toy.csv", "npz file d.npz", "sklearn diabetes", ...
    columns: tuple[str, ...] | None = None  # feature j as a message names it: "'age'", "3"
    target: str = "y"  # how to name the target in a message: "column 'price'", "array 'y'"
    lines: tuple[int, ...] | None = None  # file line of each sample (csv); else rows are indices

    def row(self, i: int) -> str:
        return f"line {self.lines[i]}" if self.lines is not None else f"row {i}"

    def column(self, j: int) -> str:
        return f"column {self.columns[j] if self.columns is not None else j}"


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
    y: np.ndarray  # (n,) float64; in {-1, +1} for classification
    facts: Facts
    description: str
    # classification: original label -> -1 or +1 (log it: a flipped sign flips every margin)
    label_map: dict | None = None


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


@dataclass(frozen=True)
class Raw:
    """A source's output before checks and preprocessing."""
    X: np.ndarray
    # the target; or, for synthetic data, a teacher that labels the *preprocessed* features
    y: np.ndarray | Callable[[np.ndarray], np.ndarray]
    origin: Origin
