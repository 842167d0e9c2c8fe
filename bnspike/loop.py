"""The training loop: gradient descent on the real model, probed every step.

Read top to bottom: build data, model, optimizer and probes; then per step
    forward (train-mode BN, full batch or the step's mini-batch) -> backward -> snapshot w_t
    -> optimizer and schedule step -> probes read the state -> one host sync -> sinks.
In mini-batch runs the probes still see the paper's objective: `loss/train` is the full-batch
train-mode loss at w_t, the mini-batch loss of the step is `loss/batch`.
A non-finite loss at a logged step stops the run cleanly with status "diverged".
"""
from __future__ import annotations

import functools
import json
import math
import pathlib

import torch

from . import analysis, config, dashboard, theory
from .data import load_data
from .losses import get_loss
from .model import build_model, forward_at
from .optim import Batches, build_optimizer
from .probes import RunContext, StepState, build_probes
from .sinks import CSVSink, Progress, TensorBoardSink


def hvp_at(model, X, y, loss_fn, w, alpha, beta):
    """Hessian-vector products in w of the train-mode loss at (w, alpha, beta).

    A separate forward on copies of BN's buffers, so running statistics stay untouched.
    Returns (v -> Hv, V -> V H) for one vector and a batch of rows.
    """
    w = w.detach().clone().view(1, -1).requires_grad_(True)
    grad, = torch.autograd.grad(loss_fn(forward_at(model, X, w, alpha, beta), y), w, create_graph=True)

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
    loss_fn = get_loss(cfg, data.y, data.description)
    model = build_model(cfg, data.facts.d)
    dtype, device = model.w.dtype, model.w.device
    X = torch.as_tensor(data.X, dtype=dtype, device=device)
    y = torch.as_tensor(data.y, dtype=dtype, device=device)
    optimizer, schedule = build_optimizer(cfg, model)
    batches = Batches(cfg, data.facts.n, model.alpha is not None, device)
    probes = build_probes(RunContext(cfg, data, model, dtype, device))
    steps, every = cfg["optim"]["steps"], cfg["probes"]["every"]
    # Theory before the first step (numpy, from the data moments): overlaid on the live curves.
    # It models full-batch GD on the square-loss BN model: other settings run without it.
    unmodelled = theory.outside(cfg, data.facts)
    problem = None if unmodelled else theory.problem(cfg, data.facts)
    reference = theory.reference(problem) if problem else {}

    (run_dir / "config.yaml").write_text(config.dump(cfg))
    if problem:
        theory.save(run_dir, theory.predict(problem, reference), reference)
    sinks = [TensorBoardSink(run_dir, cfg["log"]["flush_secs"]), CSVSink(run_dir, cfg["log"]["flush_secs"])]
    dashboard.start(sinks[0], reference, [t for t in range(steps) if t % every == 0 or t == steps - 1])
    progress = Progress(steps, cfg["log"]["progress"])
    status, stopped = "running", None
    try:
        for step in range(steps):
            rows = batches.next()  # None: the full batch
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(X), y) if rows is None else loss_fn(model(X[rows]), y[rows])
            loss.backward()
            logged = step % every == 0 or step == steps - 1
            if logged:  # snapshot w_t and the step size in force before the in-place update
                w, grad_w = model.w.detach().flatten().clone(), model.w.grad.flatten().clone()
                alpha, beta = _snapshot(model.alpha), _snapshot(model.beta)
                lr_w = optimizer.param_groups[0]["lr"]
                full_loss = loss.detach() if rows is None else _full_batch_loss(model, X, y, loss_fn, w, alpha, beta)
                if not math.isfinite(full_loss):  # smallest clean stop: probes need finite iterates
                    stopped = {"step": step, "cause": f"non-finite training loss ({float(full_loss)})"}
                    break
            optimizer.step()
            schedule.step()
            if not logged:
                continue
            state = StepState(
                step=step, loss=full_loss, w=w, w_next=model.w.detach().flatten(), grad_w=grad_w,
                alpha=alpha, beta=beta, lr_w=lr_w,
                hvp=functools.cache(lambda: hvp_at(model, X, y, loss_fn, w, alpha, beta)),
                batch_loss=None if rows is None else loss.detach())
            values = {}
            for probe in probes:
                values.update(probe(state))
            row = _gather(values)
            for sink in sinks:
                sink.write(step, row)
            progress.update(step, row["loss/train"])
        status = "finished" if stopped is None else "diverged"
    finally:
        progress.close()
        for sink in sinks:
            sink.close()
    summary = {"status": status, "steps": steps, **({"stopped": stopped} if stopped else {}),
               **({"theory": f"not modelled ({unmodelled})"} if unmodelled else {}),
               **analysis.summarize(run_dir)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    dashboard.finish(run_dir, summary)
    return summary


def _snapshot(param: torch.Tensor | None) -> torch.Tensor | None:
    """A one-element parameter (alpha, beta) at step t as a 0-dim copy; None if the model has none."""
    return None if param is None else param.detach()[0].clone()


def _full_batch_loss(model, X, y, loss_fn, w, alpha, beta) -> torch.Tensor:
    """The paper's objective at w_t: train-mode BN on the full batch (mini-batch runs only)."""
    with torch.no_grad():
        return loss_fn(forward_at(model, X, w, alpha, beta), y)


def _gather(values: dict) -> dict[str, float]:
    """All probe outputs to Python floats with ONE device->host transfer."""
    tensors = {k: v for k, v in values.items() if isinstance(v, torch.Tensor)}
    out = {k: float(v) for k, v in values.items() if k not in tensors}
    if tensors:
        flat = torch.stack([t.detach().reshape(()).to(torch.float64) for t in tensors.values()]).tolist()
        out.update(zip(tensors, flat))
    return {k: out[k] for k in values}  # keep the probes' order
