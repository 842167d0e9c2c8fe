"""Datasets for the tests, as a user's package would provide them: a function for
`data.function: tests.datasets:toy` and the registered source `toy_registered`
(`data.module: tests.datasets`)."""
import numpy as np
import torch

from bnspike.data import register


def toy(n=40, d=3, seed=0, as_tensors=False):
    """Correlated features and a noisy linear target with an offset."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) @ (np.eye(d) + 0.5 * rng.standard_normal((d, d))) + 1.0
    y = X @ rng.standard_normal(d) + 0.3 * rng.standard_normal(n) + 2.0
    return (torch.as_tensor(X), torch.as_tensor(y)) if as_tensors else (X, y)


@register("toy_registered")
def toy_registered(n=40, d=3, seed=0):
    return toy(n, d, seed)


def returns_one_array():
    return np.zeros((4, 2))
