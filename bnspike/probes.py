"""Probes: small objects that read the state after a step and return named scalars.

    class MyProbe(Probe):
        def setup(self, run):          # optional, once before training
            self.sigma = torch.as_tensor(run.data.facts.sigma, dtype=run.dtype, device=run.device)
        def __call__(self, state):     # after every logged step
            return {"custom/w_sigma_norm": (state.w @ self.sigma @ state.w).sqrt()}

A probe that carries state from step to step (a warm start, a random generator) also defines
`state_dict()` and `load_state_dict(state)`, so checkpoints save it and a resumed run logs
exactly what an uninterrupted one would.

Name it in the config as `probes.extra: ["mypackage.probes:MyProbe"]`. Return 0-dim tensors
(preferred: the loop gathers every probe's tensors and syncs with the device once per step) or
Python floats. Every value at step t describes the iterate w_t the step started from, plus the
move to w_{t+1}: `loss/train` at t is R(w_t), `update/angle` at t is the angle(w_t, w_{t+1}).
"""
from __future__ import annotations

import importlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from . import hessian, losses
from .config import ConfigError
from .data import separable
from .model import forward_at


@dataclass
class RunContext:
    """What a probe may look at once, before training."""
    cfg: dict
    data: "bnspike.data.Data"  # noqa: F821
    model: torch.nn.Module
    dtype: torch.dtype
    device: torch.device


class Layout:
    """Where each quantity of a logged step sits in `StepState.values` and `StepState.host`.

    [ w_t (d) | alpha_t | beta_t | loss | grad_w (d) | w_{t+1} (d) | alpha_{t+1} | beta_{t+1} | other parameters ]
    alpha and beta only where the model has them. Everything from `loss` on is what the
    divergence test sums: the loss, the gradient and every parameter after the update.
    """

    def __init__(self, d: int, alpha: bool, beta: bool):
        self.d = d
        self.w = slice(0, d)
        i = d
        self.alpha = i if alpha else None
        i += alpha
        self.beta = i if beta else None
        i += beta
        self.loss = i
        self.grad_w = slice(i + 1, i + 1 + d)
        self.w_next = slice(i + 1 + d, i + 1 + 2 * d)


@dataclass
class StepState:
    """The state after step `step`: the iterate it started from and the one it produced.

    All numbers sit in ONE flat tensor, `values` (on the model's device, fresh each step, so a
    probe may keep what it reads), and in its float64 copy on the host, `host` (one transfer
    per step); `layout` says where. Torch views by name: `w`, `w_next`, `grad_w` (d,), and the
    0-dim `loss`, `alpha`, `beta` (None where the model has no such parameter). Host-side
    probes read `host[layout.w]` etc. as numpy without any further transfer.
    """
    step: int
    lr_w: float  # step size of w in force at this step (after the schedule)
    values: torch.Tensor
    host: np.ndarray
    layout: Layout
    # (w, alpha, beta) -> (v -> Hv, V -> V H): Hessian-vector products in w (loop.hvp_at)
    hessian_at: Callable | None = None
    batch_loss: torch.Tensor | None = None  # the step's mini-batch loss; None in full-batch runs
    _hvp: tuple | None = field(default=None, repr=False)

    @classmethod
    def of(cls, step: int, loss, w, w_next, grad_w, alpha, beta, lr_w: float, hessian_at=None,
           batch_loss=None) -> "StepState":
        """A StepState from separate tensors (tests, probes tried by hand); alpha, beta may be None."""
        parts = [w.reshape(-1)] + [t.reshape(1) for t in (alpha, beta) if t is not None]
        values = torch.cat(parts + [loss.reshape(1), grad_w.reshape(-1), w_next.reshape(-1)]).detach()
        layout = Layout(w.numel(), alpha is not None, beta is not None)
        return cls(step, lr_w, values, host_copy(values), layout, hessian_at, batch_loss)

    @property
    def w(self) -> torch.Tensor:  # (d,) w_t
        return self.values[self.layout.w]

    @property
    def w_next(self) -> torch.Tensor:  # (d,) w_{t+1}
        return self.values[self.layout.w_next]

    @property
    def grad_w(self) -> torch.Tensor:  # (d,) the gradient the step used (the mini-batch's in SGD runs)
        return self.values[self.layout.grad_w]

    @property
    def loss(self) -> torch.Tensor:  # R(w_t), train-mode BN on the full batch
        return self.values[self.layout.loss]

    @property
    def alpha(self) -> torch.Tensor | None:  # BN weight at t
        return None if self.layout.alpha is None else self.values[self.layout.alpha]

    @property
    def beta(self) -> torch.Tensor | None:  # BN bias (or plain bias) at t
        return None if self.layout.beta is None else self.values[self.layout.beta]

    def hvp(self) -> tuple[Callable, Callable]:
        """(v -> Hv, V -> V H) at w_t, built on first use (one autograd graph per step)."""
        if self._hvp is None:
            self._hvp = self.hessian_at(self.w, self.alpha, self.beta)
        return self._hvp


def host_copy(values: torch.Tensor) -> np.ndarray:
    """A float64 numpy copy on the host: ONE device->host transfer (on the CPU in float64: a view)."""
    if values.is_cpu and values.dtype is torch.float64:
        return values.detach().numpy()
    return values.detach().to("cpu", torch.float64).numpy()


class Probe:
    """Base class: override __call__; setup is optional."""

    def setup(self, run: RunContext) -> None:
        pass

    def __call__(self, state: StepState) -> dict[str, torch.Tensor | float]:
        raise NotImplementedError


class Mechanism(Probe):
    """Every mechanism.md quantity in one fused computation, in float64 on the host.

    kappa = eta alpha rho / ||w||_Sigma^2. The loss is split exactly (any Sigma, any eps) as
        R = 1/2 (alpha_eff - rho)^2 + 1/2 rho_max^2 sin^2 + 1/2 (beta - ybar)^2 + R*
    with alpha_eff = alpha ||w||_Sigma / sqrt(||w||_Sigma^2 + eps) (-> alpha as eps -> 0).
    sin^2 = ||v - cos v_ls||_Sigma^2 (v, v_ls of unit Sigma-norm): no 1 - cos^2 cancellation.

    Outside the flagship setting the quantities keep only their meaning there: the split, rho
    and kappa need the square loss and BatchNorm; `loss/excess` and the alignment with the
    least-squares direction need the square loss; without BatchNorm the step is not
    scale-invariant, so `lr/effective` is eta itself.

    Why numpy, on the step's host copy: these are a few d-vectors, where each torch op costs
    microseconds of dispatch and numpy's a fraction of that. One matrix-vector product gives
    p = A w (A^T A = Sigma, so ||w||_Sigma = |p|), <Sigma v_ls, w> and <b, w>; the
    misalignment is the explicit vector q = p - <Sigma v_ls, w> A v_ls = ||w||_Sigma A (v - cos v_ls),
    whose norm carries no 1 - cos^2 cancellation.
    """

    def setup(self, run: RunContext) -> None:
        f = run.data.facts
        evals, evecs = np.linalg.eigh(f.sigma)
        A = np.sqrt(np.clip(evals, 0.0, None))[:, None] * evecs.T  # A^T A = Sigma
        with np.errstate(divide="ignore", invalid="ignore"):  # w_ls = 0 (no signal): nan, as torch gives
            v_ls = f.w_ls / np.sqrt(f.w_ls @ f.sigma @ f.w_ls)
        self.M = np.vstack([A, f.sigma @ v_ls, f.b])  # one product gives A w, <Sigma v_ls, w>, <b, w>
        self.A_v_ls = A @ v_ls
        self.rho_max, self.r_star, self.y_mean = f.rho_max, f.r_star, f.y_mean
        self.bn = run.model.alpha is not None
        self.eps = run.model.bn.eps if self.bn else 0.0
        self.square = run.cfg["optim"]["loss"] == "square"

    def __call__(self, s: StepState) -> dict[str, float]:
        h, at = s.host, s.layout
        w, w_next, g = h[at.w], h[at.w_next], h[at.grad_w]
        loss = float(h[at.loss])
        alpha = None if at.alpha is None else h[at.alpha]
        beta = None if at.beta is None else h[at.beta]
        with np.errstate(all="ignore"):  # 0/0 -> nan, overflow -> inf, silently, as torch gives
            r = self.M @ w  # A w, then <Sigma v_ls, w> and <b, w>
            p = r[:-2]
            q = p - r[-2] * self.A_v_ls
            w_sigma2 = p @ p  # numpy scalars, not Python floats: x / 0 is inf or nan, not an error
            w_sigma = np.sqrt(w_sigma2)
            rho = r[-1] / w_sigma
            cos = rho / self.rho_max
            sin2 = (q @ q) / w_sigma2
            norm_w, norm_g = np.sqrt(w @ w), np.sqrt(g @ g)
            u, u_next = w / norm_w, w_next / np.sqrt(w_next @ w_next)
            du, su = u - u_next, u + u_next
            out = {"loss/train": loss}
            if self.square:
                out["loss/excess"] = loss - self.r_star
            if self.square and self.bn:
                alpha_eff = alpha * w_sigma / np.sqrt(w_sigma2 + self.eps)
                out["loss/scale_term"] = 0.5 * (alpha_eff - rho) ** 2
                out["loss/direction_term"] = 0.5 * self.rho_max ** 2 * sin2
                out["loss/bias_term"] = 0.5 * (beta - self.y_mean) ** 2
            out["norm/w"], out["norm/w_sigma"] = norm_w, w_sigma
            if self.bn:
                out["param/alpha"], out["param/beta"], out["lr/effective"] = alpha, beta, s.lr_w / norm_w ** 2
            else:  # no scale invariance: the effective step is eta itself
                if beta is not None:
                    out["param/beta"] = beta
                out["lr/effective"] = s.lr_w
            if self.square and self.bn:
                out["stability/kappa"] = s.lr_w * alpha * rho / w_sigma2
            if self.square:
                out["align/cos"], out["align/sin2"] = cos, sin2
            out["grad/norm_w"] = norm_g
            # ~0 for a scale-invariant weight (exactly 0 as eps -> 0): <w, grad> = 0
            out["grad/cos_w"] = (w @ g) / (norm_w * norm_g)
            # angle between unit vectors without arccos's loss of precision near 0
            out["update/angle"] = 2 * math.atan2(np.sqrt(du @ du), np.sqrt(su @ su))
        return out


class Sharpness(Probe):
    """Largest algebraic eigenvalue of the Hessian of the train-mode loss in w.

    probes.sharpness_method: "closed_form" (what "auto" picks for the BN-linear model with the
    square loss) is exact, from the Hessian's closed form (hessian.BNLinearSquare): no
    autograd, a fraction of a training step. "autograd" works for any model and loss: exact
    dense eigh for d <= dense_max, otherwise warm-started Lanczos with a residual test and the
    dense fallback. Its products run on copies of BN's buffers: the running statistics are left
    exactly as training leaves them. Both are checked against a dense autograd Hessian.
    """

    def setup(self, run: RunContext) -> None:
        pc = run.cfg["probes"]
        self.every, self.tol, self.max_iter = pc["sharpness_every"], pc["sharpness_tol"], pc["sharpness_max_iter"]
        self.dense_max = pc["sharpness_dense_max"]
        self.vector: torch.Tensor | None = None
        self.generator = torch.Generator(device=run.device).manual_seed(run.cfg["seed"])
        closed = run.cfg["model"]["kind"] == "bn_linear" and run.cfg["optim"]["loss"] == "square"
        if pc["sharpness_method"] == "closed_form" and not closed:
            raise ConfigError("probes.sharpness_method: closed_form exists only for model.kind=bn_linear "
                             "with optim.loss=square; use auto or autograd")
        self.closed_form = None
        if pc["sharpness_method"] == "closed_form" or (pc["sharpness_method"] == "auto" and closed):
            f = run.data.facts
            self.closed_form = hessian.BNLinearSquare(f.sigma, f.b, run.model.bn.eps)

    def __call__(self, s: StepState) -> dict[str, torch.Tensor | float]:
        if self.every == 0 or s.step % self.every:
            return {}
        if self.closed_form is not None:
            value = self.closed_form.top(s.host[s.layout.w], float(s.host[s.layout.alpha]))
            return {"stability/sharpness": value, "stability/eta_sharpness": s.lr_w * value,
                    "stability/sharpness_products": 0.0}
        hvp, hvp_batched = s.hvp()
        d = s.layout.d
        top = None
        if d > self.dense_max:
            # warm start, nudged off the old eigenvector so the Krylov space is never trapped
            start = torch.randn(d, generator=self.generator, dtype=s.values.dtype, device=s.values.device)
            if self.vector is not None:
                start = self.vector + 1e-3 * start / start.norm()
            top = hessian.lanczos_top(hvp, start, self.max_iter, self.tol)
        if top is None:
            top = hessian.dense_top(hvp_batched, d, s.values)
        self.vector = top.vector
        # what the estimate cost: d for the dense path (d products in one batch)
        return {"stability/sharpness": top.value, "stability/eta_sharpness": s.lr_w * top.value,
                "stability/sharpness_products": float(top.products)}

    def state_dict(self) -> dict:
        return {"vector": self.vector, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        vector = state["vector"]
        self.vector = None if vector is None else vector.to(self.generator.device)
        self.generator.set_state(state["generator"])


class Margin(Probe):
    """Logistic-loss quantities (mechanism.md section 5), full batch, train-mode BN, at w_t.

    `margin/min` = min_i y_i f(x_i), `train/accuracy` = fraction with y_i f(x_i) > 0, and the
    alignment of w with the max-margin direction u* (separable.max_margin, exact), taken in
    the geometry the model trains in: Sigma for BatchNorm (f depends on w only through
    w / ||w||_Sigma), Euclidean for the plain linear model. `align/sin2_maxmargin` =
    ||u - cos u*||^2 is the direction error, computed without 1 - cos^2 cancellation.
    The alignment is left out, with a warning, when the data are not separable through the
    origin or the model trains a bias (its reference would be a separator with intercept).
    """

    def setup(self, run: RunContext) -> None:
        self.on = run.cfg["optim"]["loss"] == "logistic"
        if not self.on:
            return
        self.model, X, y = run.model, run.data.X, run.data.y
        self.X = torch.as_tensor(X, dtype=run.dtype, device=run.device)
        self.y = torch.as_tensor(y, dtype=run.dtype, device=run.device)
        if run.model.alpha is not None:  # whiten: Z = Xc Sigma^{-1/2}, and w -> Sigma^{1/2} w
            evals, evecs = np.linalg.eigh(run.data.facts.sigma)
            keep = evals > 1e-12 * evals[-1]  # Xc lies in the range of Sigma
            evals, evecs = evals[keep], evecs[:, keep]
            Z = (X - X.mean(axis=0)) @ (evecs / np.sqrt(evals)) @ evecs.T
            to_z = (evecs * np.sqrt(evals)) @ evecs.T
        else:
            Z, to_z = X, np.eye(X.shape[1])
        self.direction = None
        if run.model.beta is not None and run.model.beta.requires_grad:
            warnings.warn("align/*_maxmargin skipped: the model trains a bias (intercept)")
            return
        found = separable.max_margin(Z, y)
        if found is None:
            warnings.warn("align/*_maxmargin skipped: the data are not linearly separable through the origin")
            return
        self.direction = torch.as_tensor(found.direction, dtype=run.dtype, device=run.device)
        self.to_z = torch.as_tensor(to_z, dtype=run.dtype, device=run.device)

    def __call__(self, s: StepState) -> dict[str, torch.Tensor]:
        if not self.on:
            return {}
        with torch.no_grad():
            yf = self.y * forward_at(self.model, self.X, s.w, s.alpha, s.beta)
        out = {"margin/min": yf.min(), "train/accuracy": (yf > 0).to(yf.dtype).mean()}
        if self.direction is not None:
            wz = self.to_z @ s.w
            uz = wz / wz.norm()
            cos = uz @ self.direction
            out.update({"align/cos_maxmargin": cos, "align/sin2_maxmargin": (uz - cos * self.direction).pow(2).sum()})
        return out


class MiniBatch(Probe):
    """Mini-batch runs only. `loss/batch`: the loss of the step's mini-batch (what SGD
    descended). `loss/eval_running_stats`: the full-batch loss of the BN model in eval mode,
    normalising with BN's running statistics (as step t's forward left them) instead of batch
    statistics: what model.eval() reports, NOT the training objective `loss/train`."""

    def setup(self, run: RunContext) -> None:
        self.model, self.bn = run.model, run.model.alpha is not None
        self.X = torch.as_tensor(run.data.X, dtype=run.dtype, device=run.device)
        self.y = torch.as_tensor(run.data.y, dtype=run.dtype, device=run.device)
        self.loss_fn = losses.LOSSES[run.cfg["optim"]["loss"]]

    def __call__(self, s: StepState) -> dict[str, torch.Tensor]:
        if s.batch_loss is None:
            return {}
        out = {"loss/batch": s.batch_loss}
        if self.bn:
            self.model.eval()
            try:
                with torch.no_grad():
                    out["loss/eval_running_stats"] = self.loss_fn(forward_at(self.model, self.X, s.w, s.alpha, s.beta), self.y)
            finally:
                self.model.train()
        return out


BUILTIN = [Mechanism, Sharpness, Margin, MiniBatch]


def load_probe(spec: str) -> Probe:
    """'package.module:ClassName' -> an instance (the class is called with no arguments)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"probes.extra: {spec!r} must look like 'package.module:ClassName'")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        hint = " (is its package importable: installed, or on PYTHONPATH?)" if isinstance(e, ImportError) else ""
        raise ConfigError(f"probes.extra: cannot load {spec!r}: {e}{hint}") from None
    probe = obj()
    if not callable(probe):
        raise ConfigError(f"probes.extra: {spec!r} is not callable on a StepState")
    return probe


def build_probes(run: RunContext) -> list[Probe]:
    probes = [cls() for cls in BUILTIN] + [load_probe(s) for s in run.cfg["probes"]["extra"]]
    for p in probes:
        if hasattr(p, "setup"):
            p.setup(run)
    return probes
