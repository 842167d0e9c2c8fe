"""How the parameters move: the optimizer, the learning-rate schedule and the mini-batch order.

One torch.optim.SGD with a parameter group per step size (eta for w, eta_alpha for the BN
weight, eta_beta for the bias). Weight decay acts on w only: it is what stops the norm of the
scale-invariant weight from growing, so the effective step eta / ||w||^2 climbs back and the
spike can repeat; on alpha it would only move the scale's equilibrium. Momentum is torch's
heavy ball (v = mu v + g; w -= eta v) or its Nesterov variant.

The schedule multiplies every group's step size by a factor of the step index t:

    constant  1
    warmup    min(1, (t + 1) / warmup_steps)                     linear ramp, then constant
    cosine    m + (1 - m) (1 + cos(pi t / steps)) / 2            m = optim.cosine_min
    step      step_gamma ** floor(t / step_every)

Mini-batches (optim.batch_size > 0 and < n): each epoch is a fresh permutation from
numpy's default_rng(shuffle_seed) cut into batches of batch_size. A model with BatchNorm
cannot normalise one sample (its batch variance is 0), so the policy for a remainder of
exactly one sample is: that sample is left out of this epoch (the next permutation leaves out
another one). Every model follows the same policy, so a BN run and a plain run see the same
batches. batch_size = 1 with BatchNorm is refused.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .config import ConfigError


def lr_factor(oc: dict, t: int) -> float:
    """Schedule factor at step t (0-based), the formulas of the module docstring."""
    kind = oc["schedule"]
    if kind == "constant":
        return 1.0
    if kind == "warmup":
        return min(1.0, (t + 1) / oc["warmup_steps"])
    if kind == "cosine":
        m = oc["cosine_min"]
        return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * t / oc["steps"]))
    return oc["step_gamma"] ** (t // oc["step_every"])


def _check(oc: dict) -> None:
    if oc["nesterov"] and oc["momentum"] == 0:
        raise ConfigError("optim.nesterov=true needs optim.momentum > 0")
    if oc["schedule"] == "warmup" and oc["warmup_steps"] == 0:
        raise ConfigError("optim.schedule=warmup needs optim.warmup_steps > 0")
    if oc["schedule"] == "step" and oc["step_every"] == 0:
        raise ConfigError("optim.schedule=step needs optim.step_every > 0")


def build_optimizer(cfg: dict, model) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
    """SGD with one group per step size, and its schedule; group 0 is always w."""
    oc = cfg["optim"]
    _check(oc)
    groups = [{"params": [model.w], "lr": oc["lr_w"], "weight_decay": oc["weight_decay"]}]
    if model.alpha is not None:
        groups.append({"params": [model.alpha], "lr": oc["lr_alpha"], "weight_decay": 0.0})
    if model.beta is not None and model.beta.requires_grad:
        groups.append({"params": [model.beta], "lr": oc["lr_beta"], "weight_decay": 0.0})
    optimizer = torch.optim.SGD(groups, lr=oc["lr_w"], momentum=oc["momentum"], nesterov=oc["nesterov"])
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: lr_factor(oc, t))


class Batches:
    """Row indices of each step's mini-batch (None: the full batch), under the policy above."""

    def __init__(self, cfg: dict, n: int, has_batchnorm: bool, device: torch.device):
        size = cfg["optim"]["batch_size"]
        if size > n:
            raise ConfigError(f"optim.batch_size={size} is larger than the dataset (n={n})")
        if size == 1 and has_batchnorm:
            raise ConfigError("optim.batch_size=1: BatchNorm cannot normalise a batch of one sample "
                              "(its batch variance is 0); use batch_size >= 2 or model.kind=linear")
        self.size = 0 if size == n else size
        self.n, self.device = n, device
        self.rng = np.random.default_rng(cfg["optim"]["shuffle_seed"])
        self.queue: list[torch.Tensor] = []

    @property
    def full(self) -> bool:
        return self.size == 0

    def next(self) -> torch.Tensor | None:
        if self.full:
            return None
        if not self.queue:
            order = self.rng.permutation(self.n)
            if self.n % self.size == 1:  # the documented policy: drop a lone last sample
                order = order[:-1]
            self.queue = [torch.as_tensor(order[i:i + self.size], device=self.device)
                          for i in range(0, len(order), self.size)][::-1]
        return self.queue.pop()

    def state_dict(self) -> dict:  # for checkpoints: a resumed run draws the same batches
        return {"rng": self.rng.bit_generator.state, "queue": list(self.queue)}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.queue = [rows.to(self.device) for rows in state["queue"]]
