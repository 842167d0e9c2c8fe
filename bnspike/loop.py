"""The training loop: full-batch gradient descent on the real BN-linear model, probed every step.

Read top to bottom: build data, model, optimizer and probes; then per step
    forward (train-mode BN, full batch) -> backward -> snapshot w_t -> optimizer step
    -> probes read the state -> one host sync -> sinks.
"""
from __future__ import annotations

import functools
import json
import pathlib

import torch
from torch.func import functional_call

from . import analysis, config, dashboard, theory
from .data import load_data
from .model import build_model
from .probes import RunContext, StepState, build_probes
from .sinks import CSVSink, Progress, TensorBoardSink


def square_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((out - y) ** 2).mean()  # bnspike's convention: the 1/2


def build_optimizer(cfg: dict, model) -> torch.optim.Optimizer:
    """Plain gradient descent with one step size per parameter group (eta, eta_alpha, eta_beta)."""
    oc = cfg["optim"]
    groups = [{"params": [model.w], "lr": oc["lr_w"]}, {"params": [model.alpha], "lr": oc["lr_alpha"]}]
    if cfg["model"]["train_beta"]:
        groups.append({"params": [model.beta], "lr": oc["lr_beta"]})
    return torch.optim.SGD(groups, lr=oc["lr_w"])


def hvp_at(model, X, y, loss_fn, w, alpha, beta):
    """Hessian-vector products in w of the train-mode loss at (w, alpha, beta).

    A separate forward on copies of BN's buffers, so running statistics stay untouched.
    Returns (v -> Hv, V -> V H) for one vector and a batch of rows.
    """
    w = w.detach().clone().view(1, -1).requires_grad_(True)
    state = {"linear.weight": w, "bn.weight": alpha, "bn.bias": beta}
    state.update({name: buf.clone() for name, buf in model.named_buffers()})
    grad, = torch.autograd.grad(loss_fn(functional_call(model, state, (X,)), y), w, create_graph=True)

    def hvp(v):
        return torch.autograd.grad(grad, w, v.view_as(w), retain_graph=True)[0].flatten()

    def hvp_batched(V):
        return torch.autograd.grad(grad, w, V.view(-1, 1, w.shape[1]), retain_graph=True,
                                   is_grads_batched=True)[0].view(V.shape[0], -1)

    return hvp, hvp_batched


def train(cfg: dict, run_dir: pathlib.Path) -> dict:
    torch.manual_seed(cfg["seed"])
    data = load_data(cfg)
    print(f"bnspike: data {data.description}", flush=True)  # includes a classification label map
    model = build_model(cfg, data.facts.d)
    dtype, device = model.w.dtype, model.w.device
    X = torch.as_tensor(data.X, dtype=dtype, device=device)
    y = torch.as_tensor(data.y, dtype=dtype, device=device)
    optimizer = build_optimizer(cfg, model)
    probes = build_probes(RunContext(cfg, data, model, dtype, device))
    steps, every = cfg["optim"]["steps"], cfg["probes"]["every"]
    # Theory before the first step (numpy, from the data moments): overlaid on the live curves.
    problem = theory.problem(cfg, data.facts)
    reference = theory.reference(problem)
    prediction = theory.predict(problem, reference)

    (run_dir / "config.yaml").write_text(config.dump(cfg))
    theory.save(run_dir, prediction, reference)
    sinks = [TensorBoardSink(run_dir, cfg["log"]["flush_secs"]), CSVSink(run_dir, cfg["log"]["flush_secs"])]
    dashboard.start(sinks[0], reference, [t for t in range(steps) if t % every == 0 or t == steps - 1])
    progress = Progress(steps, cfg["log"]["progress"])
    status = "running"
    try:
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            loss = square_loss(model(X), y)
            loss.backward()
            logged = step % every == 0 or step == steps - 1
            if logged:  # snapshot w_t before the in-place update
                w, grad_w = model.w.detach().flatten().clone(), model.w.grad.flatten().clone()
                alpha, beta = model.alpha.detach()[0].clone(), model.beta.detach()[0].clone()
            optimizer.step()
            if not logged:
                continue
            state = StepState(
                step=step, loss=loss.detach(), w=w, w_next=model.w.detach().flatten(), grad_w=grad_w,
                alpha=alpha, beta=beta, lr_w=optimizer.param_groups[0]["lr"],
                hvp=functools.cache(lambda: hvp_at(model, X, y, square_loss, w, alpha.view(1), beta.view(1))))
            values = {}
            for probe in probes:
                values.update(probe(state))
            row = _gather(values)
            for sink in sinks:
                sink.write(step, row)
            progress.update(step, row["loss/train"])
        status = "finished"
    finally:
        progress.close()
        for sink in sinks:
            sink.close()
    summary = {"status": status, "steps": steps, **analysis.summarize(run_dir)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    dashboard.finish(run_dir, summary)
    return summary


def _gather(values: dict) -> dict[str, float]:
    """All probe outputs to Python floats with ONE device->host transfer."""
    tensors = {k: v for k, v in values.items() if isinstance(v, torch.Tensor)}
    out = {k: float(v) for k, v in values.items() if k not in tensors}
    if tensors:
        flat = torch.stack([t.detach().reshape(()).to(torch.float64) for t in tensors.values()]).tolist()
        out.update(zip(tensors, flat))
    return {k: out[k] for k in values}  # keep the probes' order
