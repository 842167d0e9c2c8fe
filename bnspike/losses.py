"""Training losses, selected by `optim.loss` (mechanism.md section 1).

    square:   R = 1/(2n) sum_i (y_i - f_i)^2            (bnspike's convention: the 1/2)
    logistic: R = 1/n sum_i log(1 + exp(-y_i f_i)),  y_i in {-1, +1}

The logistic loss uses softplus(-y f), which is exact where log1p(exp(.)) would overflow.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .data import DataError


def square_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # mse_loss: one fused kernel each way instead of subtract, square and mean (~20 us per step
    # at n = 1000 on the CPU); value and gradient equal 0.5 * ((out - y) ** 2).mean()'s bit for bit
    return 0.5 * F.mse_loss(out, y)


def logistic_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.softplus(-y * out).mean()


LOSSES = {"square": square_loss, "logistic": logistic_loss}


def get_loss(cfg: dict, y: np.ndarray, description: str):
    """The loss named by optim.loss, after checking that the targets suit it."""
    name = cfg["optim"]["loss"]
    if name == "logistic":
        bad = np.flatnonzero((y != 1.0) & (y != -1.0))
        if bad.size:
            raise DataError(
                f"optim.loss=logistic needs labels in {{-1, +1}}, but data ({description}) has "
                f"y[{bad[0]}] = {y[bad[0]]!r} ({bad.size} such rows); set data.task=classification "
                "(it maps two distinct labels to -1/+1)")
    return LOSSES[name]
