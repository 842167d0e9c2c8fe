"""Checkpoints: all a run needs to continue bit for bit, written atomically, loaded safely.

A checkpoint at step S holds the state *before* step S: the model's parameters and BatchNorm
buffers, the optimizer's state (momentum), the schedule's, the mini-batch order's (random
generator and the rest of the epoch), the state of every probe that has `state_dict` /
`load_state_dict` (the Sharpness probe's warm-start vector and random generator), torch's
global random state, and the size of metrics.csv, flushed at S. Resuming truncates
metrics.csv to that size (rows of steps >= S that a killed run left behind are logged again)
and TensorBoard purges events from step S on, so no replayed step shows twice.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib

# torch (and sinks, which imports it) are imported where they are used: the CLI imports this
# module for CheckpointError, and `bnspike theory` must start without torch.

NAME = "checkpoint.pt"
LOCK = ".lock"
SUMMARY = "summary.json"
FORMAT = 2  # 2: bnspike's own SGD (its state holds the schedule's step count)


class CheckpointError(ValueError):
    """A run directory that cannot be resumed; the message says why and names the file."""


def stateful(probes: list, **objects) -> dict:
    """What a checkpoint carries (model=, optimizer=, ... and the stateful probes), by names that
    are stable for a given config. Each has state_dict() and load_state_dict()."""
    parts = dict(objects)
    parts.update({f"probe.{i}.{type(p).__name__}": p for i, p in enumerate(probes) if hasattr(p, "state_dict")})
    return parts


def save(run_dir: pathlib.Path, step: int, parts: dict, sinks: list) -> None:
    import torch

    from .sinks import METRICS

    for sink in sinks:  # the logs must reach step S before the checkpoint says they do
        sink.flush()
    state = {"format": FORMAT, "step": step, "torch_rng": torch.get_rng_state(),
             "metrics_bytes": (run_dir / METRICS).stat().st_size,
             "parts": {name: obj.state_dict() for name, obj in parts.items()}}
    tmp = run_dir / (NAME + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, run_dir / NAME)  # atomic: a kill mid-write leaves the previous checkpoint


@contextlib.contextmanager
def locked(run_dir: pathlib.Path):
    """Hold run_dir's advisory lock, or refuse at once: one writer per run directory.

    Two processes appending to one metrics.csv and event file (a second `bnspike resume`, or a
    resume while the run still trains) would interleave rows and truncate each other's. flock
    locks the open file, so the OS releases it when the holder dies: a killed run stays
    resumable. The lock file is never removed: a process could still hold it while another
    locked a new one.
    """
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CheckpointError(f"{run_dir}: another bnspike process is using this run directory (it holds "
                                  f"{run_dir / LOCK}); let it end, or stop it and resume") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def check_resumable(run_dir: pathlib.Path) -> None:
    """Refuse a run that finished or diverged, or that never reached its first checkpoint."""
    if not (run_dir / "config.yaml").is_file():
        what = "no such directory" if not run_dir.exists() else "no config.yaml here"
        raise CheckpointError(f"{run_dir}: {what}; is it a bnspike run directory?")
    summary = run_dir / SUMMARY
    status = json.loads(summary.read_text()).get("status") if summary.is_file() else None
    if status == "finished":
        raise CheckpointError(f"{summary}: the run already finished; nothing to resume")
    if status == "diverged":
        raise CheckpointError(f"{summary}: the run diverged; resuming would repeat it bit for bit "
                              "(change the config and start a new run)")
    if not (run_dir / NAME).is_file():
        raise CheckpointError(f"{run_dir / NAME}: no checkpoint (was the run killed before its first one?)")


def restore(run_dir: pathlib.Path, parts: dict) -> int:
    """Load run_dir's checkpoint into `parts`, cut metrics.csv back to it; return its step."""
    import torch

    from .sinks import METRICS

    path = run_dir / NAME
    state = torch.load(path, map_location="cpu", weights_only=True)  # load_state_dict moves to device
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {state.get('format')!r}, this bnspike reads {FORMAT}")
    if set(state["parts"]) != set(parts):
        raise CheckpointError(f"{path}: holds {sorted(state['parts'])} but this config builds {sorted(parts)}")
    _check_like(state["parts"]["model"], parts["model"].state_dict(), path)
    for name, obj in parts.items():
        obj.load_state_dict(state["parts"][name])
    torch.set_rng_state(state["torch_rng"])
    metrics, size = run_dir / METRICS, state["metrics_bytes"]
    if not metrics.is_file() or metrics.stat().st_size < size:
        raise CheckpointError(f"{metrics}: shorter than the {size} bytes flushed at the checkpoint "
                              f"(step {state['step']}); logged rows are missing")
    os.truncate(metrics, size)
    return state["step"]


def _check_like(saved: dict, live: dict, path: pathlib.Path) -> None:
    """load_state_dict would silently cast float32 into float64: refuse, naming both."""
    for key, tensor in live.items():
        got = saved.get(key)
        if got is None or got.dtype != tensor.dtype or got.shape != tensor.shape:
            have = "nothing" if got is None else f"{got.dtype} {tuple(got.shape)}"
            raise CheckpointError(f"{path}: model tensor {key!r} is {have} in the checkpoint but "
                                  f"{tensor.dtype} {tuple(tensor.shape)} in the model built from config.yaml")
