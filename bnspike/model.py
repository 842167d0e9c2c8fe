"""The models: a real nn.Linear(d, 1, bias=False) followed by a real nn.BatchNorm1d(1), and
the baseline without BatchNorm (`model.kind: linear`).

In train mode on the full batch, with z = X w (batch mean removed by BN, biased variance):

    f(x) = gamma * <x - mean, w> / sqrt(w^T Sigma w + eps) + beta

so BN's weight gamma is the paper's scale alpha. Scale-invariance in w is what makes the
effective step eta / ||w||^2 rise and fall during training.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from .config import SCHEMA, ConfigError
from .init import initial_weight  # numpy, shared with the theory (no torch there)


class BNLinear(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.linear = nn.Linear(d, 1, bias=False)
        self.bn = nn.BatchNorm1d(1, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(x)).squeeze(-1)

    # The parameters the mechanism talks about, by their paper names.
    @property
    def w(self) -> torch.Tensor:
        return self.linear.weight

    @property
    def alpha(self) -> torch.Tensor:
        return self.bn.weight

    @property
    def beta(self) -> torch.Tensor:
        return self.bn.bias


class PlainLinear(nn.Module):
    """The same linear model without BatchNorm: f(x) = <x, w> (+ bias). No scale alpha."""

    def __init__(self, d: int, bias: bool):
        super().__init__()
        self.linear = nn.Linear(d, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)

    @property
    def w(self) -> torch.Tensor:
        return self.linear.weight

    alpha = None  # probes of BN quantities test for None and skip

    @property
    def beta(self) -> torch.Tensor | None:
        return self.linear.bias


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device: 'cuda' was asked for but torch sees no CUDA device "
                           f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}); "
                           "use model.device=cpu or auto")
    return torch.device(name)


def _refuse_unused_keys(cfg: dict) -> None:
    """A key the chosen model does not read must keep its default (never silently ignored)."""
    mc, bn = cfg["model"], cfg["model"]["kind"] == "bn_linear"
    unused = [("model.bias", "model.kind=bn_linear (its bias is beta: model.train_beta)")] if bn else [
        (key, "model.kind=linear (no BatchNorm)")
        for key in ("model.eps", "model.alpha0", "model.train_beta", "optim.lr_alpha")]
    if not bn and not mc["bias"]:
        unused += [(key, "model.bias=false") for key in ("model.beta0", "optim.lr_beta")]
    for key, why in unused:
        section, name = key.split(".")
        if cfg[section][name] != SCHEMA[section][name].default:
            raise ConfigError(f"{key} is set to {cfg[section][name]!r}, but {why} does not read it; remove it")


def build_model(cfg: dict, d: int) -> BNLinear | PlainLinear:
    _refuse_unused_keys(cfg)
    mc = cfg["model"]
    dtype = getattr(torch, mc["dtype"])
    bn = mc["kind"] == "bn_linear"
    model = BNLinear(d, eps=mc["eps"]) if bn else PlainLinear(d, bias=mc["bias"])
    model = model.to(dtype=dtype, device=resolve_device(mc["device"]))
    with torch.no_grad():
        model.w.copy_(torch.as_tensor(initial_weight(d, mc["w0_norm"], mc["w0_seed"])).view(1, d))
        if bn:
            model.alpha.fill_(mc["alpha0"])
        if model.beta is not None:
            model.beta.fill_(mc["beta0"])
    if bn:
        model.beta.requires_grad_(mc["train_beta"])
    return model.train()  # full-batch statistics: the function gradient descent trains


def params_at(model: nn.Module, w: torch.Tensor, alpha: torch.Tensor | None,
              beta: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """functional_call state of `model` at a snapshot (w_t, alpha_t, beta_t), on copies of its
    buffers so that a diagnostic forward never shifts BatchNorm's running statistics."""
    names = {param: name for name, param in model.named_parameters()}
    state = {name: buf.clone() for name, buf in model.named_buffers()}
    for param, value in ((model.w, w), (model.alpha, alpha), (model.beta, beta)):
        if param is not None:
            state[names[param]] = value.view(param.shape)
    return state


def forward_at(model: nn.Module, X: torch.Tensor, w: torch.Tensor, alpha: torch.Tensor | None,
               beta: torch.Tensor | None) -> torch.Tensor:
    """The model's output on X at a snapshot; BN in the model's current mode (train: X's statistics)."""
    return functional_call(model, params_at(model, w, alpha, beta), (X,))
