"""Writes toy.csv, the worked example of the README's "Bring your own data" section.

200 samples of 5 correlated features (covariance eigenvalues spread over a decade)
and a noisy linear target, rounded to 4 decimals so the file reads back exactly as written.
Run from the repository root: `python examples/data/make_toy.py`.
"""
import pathlib

import numpy as np

rng = np.random.default_rng(2026)
n, d = 200, 5
mixing = (np.eye(d) + 0.4 * rng.standard_normal((d, d))) * np.array([2.0, 1.6, 1.3, 1.0, 0.8])[:, None]
X = np.round(rng.standard_normal((n, d)) @ mixing + rng.uniform(-5, 5, d), 4)
y = np.round(X @ rng.standard_normal(d) + 1.5 * rng.standard_normal(n) + 10.0, 4)

path = pathlib.Path(__file__).with_name("toy.csv")
header = ",".join([f"x{j + 1}" for j in range(d)] + ["y"])
np.savetxt(path, np.column_stack([X, y]), fmt="%.4f", delimiter=",", header=header, comments="")
