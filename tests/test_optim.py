"""bnspike's SGD makes torch.optim.SGD's update under a LambdaLR schedule, bit for bit."""
import copy

import pytest
import torch

from bnspike import config
from bnspike.data import load_data
from bnspike.losses import square_loss
from bnspike.model import build_model
from bnspike.optim import build_optimizer, lr_factor
from tests.conftest import CONFIGS

SMALL = ["data.n=64", "data.d=5", "data.whiten=none", "data.spectrum=linear"]


@pytest.mark.parametrize("name, overrides", [
    ("whitened_spike", []),
    ("whitened_spike", ["model.train_beta=true", "optim.lr_beta=0.05", "optim.schedule=cosine", "optim.cosine_min=0.2"]),
    ("whitened_spike", ["optim.momentum=0.9", "optim.weight_decay=0.01", "optim.schedule=warmup", "optim.warmup_steps=7"]),
    ("whitened_spike", ["optim.momentum=0.8", "optim.nesterov=true", "optim.schedule=step", "optim.step_every=5",
                        "optim.step_gamma=0.5"]),
    ("baseline_plain", ["model.bias=true", "optim.lr_w=0.1", "optim.momentum=0.5", "optim.weight_decay=0.01"]),
])
def test_sgd_matches_torch_sgd_with_lambdalr_bit_for_bit(name, overrides):
    cfg = config.load(CONFIGS / f"{name}.yaml", SMALL + overrides)
    oc, data = cfg["optim"], load_data(cfg)
    X, y = torch.as_tensor(data.X), torch.as_tensor(data.y)
    ours = build_model(cfg, data.facts.d)
    theirs = copy.deepcopy(ours)
    optimizer = build_optimizer(cfg, ours)
    groups = [{"params": [theirs.w], "lr": oc["lr_w"], "weight_decay": oc["weight_decay"]}]
    if theirs.alpha is not None:
        groups.append({"params": [theirs.alpha], "lr": oc["lr_alpha"], "weight_decay": 0.0})
    if theirs.beta is not None and theirs.beta.requires_grad:
        groups.append({"params": [theirs.beta], "lr": oc["lr_beta"], "weight_decay": 0.0})
    reference = torch.optim.SGD(groups, lr=oc["lr_w"], momentum=oc["momentum"], nesterov=oc["nesterov"])
    schedule = torch.optim.lr_scheduler.LambdaLR(reference, lambda t: lr_factor(oc, t))
    assert len(groups) == len(optimizer.groups)
    for step in range(25):
        assert optimizer.lr(0) == reference.param_groups[0]["lr"], step
        for model, opt in ((ours, optimizer), (theirs, reference)):
            opt.zero_grad()
            square_loss(model(X), y).backward()
            opt.step()
        schedule.step()
        for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
            assert torch.equal(a, b), f"{name} differs at step {step}"
    assert not torch.equal(ours.w, build_model(cfg, data.facts.d).w)  # it moved
