"""The training loop: gradient descent on the real model, probed every step.

Read top to bottom: build data, model, optimizer and probes (or restore them from a
checkpoint); then per step
    [checkpoint when due or signalled] -> forward (train-mode BN, full batch or the step's
    mini-batch) -> backward -> copy w_t -> scheduled optimizer step
    -> the step's snapshot in one tensor, copied to the host once
    -> stop if the loss, a gradient or a parameter is NaN/inf
    -> probes read the state -> their tensors to the host in one transfer -> sinks.
In mini-batch runs the probes still see the paper's objective: `loss/train` is the full-batch
train-mode loss at w_t, the mini-batch loss of the step is `loss/batch`.
The run ends "finished", "diverged" or "interrupted" (SIGINT/SIGTERM: the current step
completes, then a checkpoint; `bnspike resume` continues); summary.json's `stopped` says where.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import pathlib
import signal
import threading

import torch

from . import analysis, checkpoint, config, dashboard, theory
from .data import load_data
from .losses import get_loss
from .model import build_model, forward_at
from .optim import Batches, build_optimizer
from .probes import Layout, RunContext, StepState, build_probes, host_copy
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


class _Snapshot:
    """A logged step as ONE flat tensor (probes.Layout): w_t, alpha_t, beta_t, copied before the
    in-place update, then the loss, grad_w and every parameter after the update; plus its
    float64 host copy, the one device->host transfer of the step. Two `torch.cat`s, where
    separate clones, views and transfers per quantity cost microseconds each."""

    def __init__(self, model: torch.nn.Module):
        named = [p for p in (model.w, model.alpha, model.beta) if p is not None]
        others = [p for p in model.parameters() if all(p is not q for q in named)]
        self.before_views = [p.detach().view(-1) for p in named]  # made once: the update is in place
        self.after_views = [p.detach().view(-1) for p in named + others]
        self.w = model.w
        self.layout = Layout(model.w.numel(), model.alpha is not None, model.beta is not None)

    def before(self) -> torch.Tensor:
        return torch.cat(self.before_views)

    def after(self, before: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        return torch.cat([before, loss.detach().view(1), self.w.grad.view(-1), *self.after_views])


class _Divergence:
    """What went NaN/inf in a step (the loss, a gradient, an updated parameter), or None.

    One sum per step, over the loss and the updated parameters: NaN and inf propagate through
    a sum, and through the update into the parameter (p - lr g is NaN or inf when g is, even
    at lr = 0: 0 * inf is NaN), so a finite sum means every value is finite. A logged step
    passes the sum of its host snapshot (no extra transfer); otherwise one sum and one sync,
    through flat views of the parameters made once. A sum that overflows from finite values,
    and naming the culprit, take the exact slow path.
    """

    def __init__(self, model: torch.nn.Module):
        self.params = list(model.named_parameters())
        self.views = [p.detach().view(-1) for _, p in self.params]

    def __call__(self, loss: torch.Tensor, total: float | None = None) -> str | None:
        if total is None:
            total = torch.cat([loss.detach().view(1), *self.views]).sum().item()
        if math.isfinite(total):
            return None
        named = [("loss", loss)] + [(f"gradient of {n}", p.grad) for n, p in self.params if p.grad is not None]
        named += [(f"parameter {n} after the update", p) for n, p in self.params]
        bad = next(((name, t.detach().reshape(-1)) for name, t in named if not torch.isfinite(t).all()), None)
        if bad is None:  # finite values whose sum overflowed
            return None
        name, t = bad
        return f"non-finite {name} ({t[~torch.isfinite(t)][0].item()})"


class _StopOnSignal:
    """While in its `with` block, SIGINT/SIGTERM only set `self.signal`: the loop finishes the
    step, checkpoints, stops. Installed before the data load and the theory map, so a signal
    there stops the run at its first step with a checkpoint of the initial state (resumable).

    A second signal gets the previous handler (Ctrl-C twice aborts at once). Handlers can only
    be installed from the main thread; elsewhere signals keep their usual effect.
    """

    def __enter__(self) -> "_StopOnSignal":
        self.signal: str | None = None
        main = threading.current_thread() is threading.main_thread()
        signals = (signal.SIGINT, signal.SIGTERM) if main else ()
        self.previous = {s: signal.signal(s, self._handle) for s in signals}
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def _handle(self, signum, frame) -> None:
        if self.signal is None:
            self.signal = signal.Signals(signum).name
        else:
            self.restore()
            signal.raise_signal(signum)

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        self.previous = {}


def train(cfg: dict, run_dir: pathlib.Path, resume: bool = False) -> dict:
    """Train `cfg` into `run_dir`, or with `resume` continue it from its checkpoint; refused
    (CheckpointError) while another process uses `run_dir`, before anything in it is touched."""
    with checkpoint.locked(run_dir), _StopOnSignal() as stop, _threads(cfg["model"]["threads"]):
        return _train(cfg, run_dir, resume, stop)


@contextlib.contextmanager
def _threads(n: int):
    """torch's intra-op threads for the run (0: leave torch's default), put back after. A
    reduction split over threads sums in another order, and the unstable direction grows from
    that round-off: with one thread a run logs the same numbers on any core count."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(cfg: dict, run_dir: pathlib.Path, resume: bool, stop: _StopOnSignal) -> dict:
    torch.manual_seed(cfg["seed"])
    data = load_data(cfg)
    print(f"bnspike: data {data.description}", flush=True)  # includes a classification label map
    loss_fn = get_loss(cfg, data.y, data.description)
    model = build_model(cfg, data.facts.d)
    dtype, device = model.w.dtype, model.w.device
    X = torch.as_tensor(data.X, dtype=dtype, device=device)
    y = torch.as_tensor(data.y, dtype=dtype, device=device)
    optimizer = build_optimizer(cfg, model)
    batches = Batches(cfg, data.facts.n, model.alpha is not None, device)
    probes = build_probes(RunContext(cfg, data, model, dtype, device))
    steps, every = cfg["optim"]["steps"], cfg["probes"]["every"]
    # Theory before the first step (numpy, from the data moments): overlaid on the live curves.
    # It models full-batch GD on the square-loss BN model: other settings run without it.
    unmodelled = theory.outside(cfg, data.facts)
    problem = None if unmodelled else theory.problem(cfg, data.facts)
    parts = checkpoint.stateful(probes, model=model, optimizer=optimizer, batches=batches)
    diverged, snapshot = _Divergence(model), _Snapshot(model)
    layout = snapshot.layout
    hessian_at = functools.partial(hvp_at, model, X, y, loss_fn)
    objective = _objective(model, loss_fn, cfg["model"]["compile"])
    start = checkpoint.restore(run_dir, parts) if resume else 0

    # The reference map, chunk by chunk: to theory.csv and theory.json (a new run) and to the
    # TensorBoard overlay (dashboard.start consumes it), never held whole.
    reference = theory.reference_chunks(problem) if problem else ()
    if not resume:
        (run_dir / "config.yaml").write_text(config.dump(cfg))
        if problem:
            reference = theory.save(run_dir, problem, reference)
    flush_secs, checkpoint_every = cfg["log"]["flush_secs"], cfg["checkpoint"]["every"]
    sinks = [TensorBoardSink(run_dir, flush_secs, purge_step=start if resume else None),
             CSVSink(run_dir, flush_secs, append=resume)]
    dashboard.start(sinks[0], reference, (t for t in range(start, steps) if t % every == 0 or t == steps - 1))
    progress = Progress(steps, cfg["log"]["progress"], initial=start)
    outcome = {"status": "finished"}
    charts_due = True
    try:
        for step in range(start, steps):
            if stop.signal or (checkpoint_every and step % checkpoint_every == 0):
                checkpoint.save(run_dir, step, parts, sinks)
                if stop.signal:
                    outcome = {"status": "interrupted", "stopped": {"step": step, "signal": stop.signal}}
                    break
            rows = batches.next()  # None: the full batch
            optimizer.zero_grad()
            loss = objective(X, y) if rows is None else objective(X[rows], y[rows])
            loss.backward()
            logged = step % every == 0 or step == steps - 1
            if logged:  # w_t, alpha_t, beta_t and the step size in force, before the in-place update
                before, lr_w = snapshot.before(), optimizer.lr(0)
                full_loss = loss if rows is None else _full_batch_loss(model, X, y, loss_fn, before, layout)
            optimizer.step()
            if logged:
                values = snapshot.after(before, full_loss)
                host = host_copy(values)
                cause = diverged(full_loss, float(host[layout.loss:].sum()))
            else:
                cause = diverged(loss)
            if cause:  # the probes only ever see finite iterates
                outcome = {"status": "diverged", "stopped": {"step": step, "cause": cause}}
                break
            if not logged:
                continue
            state = StepState(step, lr_w, values, host, layout, hessian_at,
                              batch_loss=None if rows is None else loss.detach())
            scalars = {}
            for probe in probes:
                scalars.update(probe(state))
            row = _gather(scalars)
            for sink in sinks:
                sink.write(step, row)
            if charts_due:  # the run's tags are known now: metrics.csv's columns, fixed by its first row
                dashboard.add_layout(sinks[0], sinks[1].columns, modelled=problem is not None)
                charts_due = False
            progress.update(step, row["loss/train"])
    finally:
        progress.close()
        for sink in sinks:
            sink.close()
    seeds = {"seed": cfg["seed"], "data.data_seed": cfg["data"]["data_seed"],
             "model.w0_seed": cfg["model"]["w0_seed"], "optim.shuffle_seed": cfg["optim"]["shuffle_seed"]}
    run = analysis.load_run(run_dir)  # read once, for the summary, the report and the dashboard
    summary = {**outcome, "steps": steps, "seeds": seeds,
               **({"theory": f"not modelled ({unmodelled})"} if unmodelled else {}),
               **analysis.summarize(run)}
    if resume:
        summary["resumed_from_step"] = start
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if outcome["status"] != "interrupted" and summary["logged_steps"]:  # a resumed run gets it at its end
        run = analysis.thin(run, summary)  # what the report draws: the full series go before matplotlib comes
        dashboard.finish(run_dir, summary, run)
    return summary


def _objective(model, loss_fn, compiled: bool):
    """The training loss of a batch, (X, y) -> loss: eager, or through torch.compile (model.compile).
    Compiled, the forward and its backward become a few fused kernels: the same function, equal to
    the eager one up to the order of floating-point sums. Only this step is compiled: the probes'
    diagnostic forwards stay eager, the module itself (and its checkpoint) is unchanged."""
    def objective(X, y):
        return loss_fn(model(X), y)
    return torch.compile(objective) if compiled else objective


def _full_batch_loss(model, X, y, loss_fn, before: torch.Tensor, layout) -> torch.Tensor:
    """The paper's objective at w_t: train-mode BN on the full batch (mini-batch runs only).
    `before`: the snapshot of w_t, alpha_t, beta_t (laid out as probes.Layout)."""
    alpha = None if layout.alpha is None else before[layout.alpha]
    beta = None if layout.beta is None else before[layout.beta]
    with torch.no_grad():
        return loss_fn(forward_at(model, X, before[layout.w], alpha, beta), y)


def _gather(values: dict) -> dict[str, float]:
    """All probe outputs to Python floats with ONE device->host transfer."""
    tensors = {k: v for k, v in values.items() if isinstance(v, torch.Tensor)}
    if not tensors:  # host-side probes only (the built-in ones on the CPU): nothing to transfer
        return {k: float(v) for k, v in values.items()}
    out = {k: float(v) for k, v in values.items() if k not in tensors}
    shaped = [f"{k!r} has shape {tuple(t.shape)}" for k, t in tensors.items() if t.numel() != 1]
    if shaped:
        raise ValueError(f"probe values must be 0-dim tensors or floats: {'; '.join(shaped)}")
    device = next(iter(tensors.values())).device  # a probe may compute on another device or dtype
    ready = lambda t: t.dim() == 0 and t.dtype == torch.float64 and t.device == device and not t.requires_grad  # noqa: E731
    flat = torch.stack([t if ready(t) else t.detach().reshape(()).to(device, torch.float64)
                        for t in tensors.values()]).tolist()  # no-op casts skipped: ~2 us each
    out.update(zip(tensors, flat))
    return {k: out[k] for k in values}  # keep the probes' order
