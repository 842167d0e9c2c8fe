"""The model: a real nn.Linear(d, 1, bias=False) followed by a real nn.BatchNorm1d(1).

In train mode on the full batch, with z = X w (batch mean removed by BN, biased variance):

    f(x) = gamma * <x - mean, w> / sqrt(w^T Sigma w + eps) + beta

so BN's weight gamma is the paper's scale alpha. Scale-invariance in w is what makes the
effective step eta / ||w||^2 rise and fall during training.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import ConfigError
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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device: 'cuda' was asked for but torch sees no CUDA device "
                           f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}); "
                           "use model.device=cpu or auto")
    return torch.device(name)


def build_model(cfg: dict, d: int) -> BNLinear:
    mc = cfg["model"]
    dtype = getattr(torch, mc["dtype"])
    model = BNLinear(d, eps=mc["eps"]).to(dtype=dtype, device=resolve_device(mc["device"]))
    with torch.no_grad():
        model.w.copy_(torch.as_tensor(initial_weight(d, mc["w0_norm"], mc["w0_seed"])).view(1, d))
        model.alpha.fill_(mc["alpha0"])
        model.beta.fill_(mc["beta0"])
    model.beta.requires_grad_(mc["train_beta"])
    return model.train()  # full-batch statistics: the function gradient descent trains
