"""How the parameters move: the optimizer, the learning-rate schedule and the mini-batch order.

SGD with a parameter group per step size (eta for w, eta_alpha for the BN weight, eta_beta
for the bias): torch.optim.SGD's update, bit for bit, at a fraction of its cost per call.
Weight decay acts on w only: it is what stops the norm of the scale-invariant weight from
growing, so the effective step eta / ||w||^2 climbs back and the spike can repeat; on alpha
it would only move the scale's equilibrium. Momentum is torch's heavy ball (v = mu v + g;
w -= eta v) or its Nesterov variant.

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


class SGD:
    """Gradient descent with one step size per parameter group, momentum and weight decay.

    The update is torch.optim.SGD's with a LambdaLR schedule, operation for operation (a test
    checks the iterates are bit-identical over momentum, Nesterov, weight decay and every
    schedule), without their per-call machinery (hooks, profiler ranges, group bookkeeping):
    at n = 1000, d = 16 on the CPU that machinery alone costs about a quarter of a bare step.
    Group 0 is always w; `lr(0)` is its step size in force at the current step.
    """

    def __init__(self, groups: list[tuple[torch.Tensor, float, float]], oc: dict):
        self.groups = groups  # (parameter, base step size, weight decay)
        self.oc, self.momentum, self.nesterov = oc, oc["momentum"], oc["nesterov"]
        self.t = 0  # steps taken: the schedule's index
        self.buffers: list[torch.Tensor | None] = [None] * len(groups)  # heavy-ball velocities

    def lr(self, group: int) -> float:
        return self.groups[group][1] * lr_factor(self.oc, self.t)

    def zero_grad(self) -> None:
        for p, _, _ in self.groups:
            p.grad = None

    def step(self) -> None:
        factor = lr_factor(self.oc, self.t)
        with torch.no_grad():  # (a with-block: the decorator form costs microseconds per call)
            for i, (p, base_lr, weight_decay) in enumerate(self.groups):
                g = p.grad
                if weight_decay:
                    g = g.add(p, alpha=weight_decay)
                if self.momentum:
                    buf = self.buffers[i]
                    if buf is None:
                        buf = self.buffers[i] = g.clone()
                    else:
                        buf.mul_(self.momentum).add_(g)
                    g = g.add(buf, alpha=self.momentum) if self.nesterov else buf
                p.add_(g, alpha=-(base_lr * factor))
        self.t += 1

    def state_dict(self) -> dict:  # for checkpoints
        return {"t": self.t, "buffers": list(self.buffers)}

    def load_state_dict(self, state: dict) -> None:
        self.t = state["t"]
        self.buffers = [None if b is None else b.to(p.device) for b, (p, _, _) in zip(state["buffers"], self.groups)]


def build_optimizer(cfg: dict, model) -> SGD:
    """SGD with one group per step size, scheduled; group 0 is always w."""
    oc = cfg["optim"]
    _check(oc)
    groups = [(model.w, oc["lr_w"], oc["weight_decay"])]
    if model.alpha is not None:
        groups.append((model.alpha, oc["lr_alpha"], 0.0))
    if model.beta is not None and model.beta.requires_grad:
        groups.append((model.beta, oc["lr_beta"], 0.0))
    return SGD(groups, oc)


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
