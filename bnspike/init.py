"""Initial parameters in numpy: device independent, and usable by the theory without torch."""
from __future__ import annotations

import numpy as np


def initial_weight(d: int, norm: float, seed: int) -> np.ndarray:
    """Initial direction from numpy's default_rng(seed), scaled to `norm` (device independent)."""
    w = np.random.default_rng(seed).standard_normal(d)
    return w * (norm / np.linalg.norm(w))
