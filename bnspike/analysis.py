"""Read a run's logged series back and summarise what happened."""
from __future__ import annotations

import math
import pathlib

import numpy as np

from .sinks import METRICS, read_metrics


def first_step_above(steps: np.ndarray, values: np.ndarray, level: float) -> int | None:
    idx = np.flatnonzero(values > level)
    return int(steps[idx[0]]) if idx.size else None


def summarize(run_dir: pathlib.Path) -> dict:
    m = {k: np.asarray(v) for k, v in read_metrics(pathlib.Path(run_dir) / METRICS).items()}
    if not m or m["step"].size == 0:
        return {"logged_steps": 0}
    steps, loss = m["step"].astype(int), m["loss/train"]
    out = {"logged_steps": int(steps.size), "final_step": int(steps[-1]), "final_loss": float(loss[-1])}
    crossing = first_step_above(steps, m["stability/kappa"], 2.0) if "stability/kappa" in m else None
    out["first_kappa_above_2"] = crossing
    if "stability/eta_sharpness" in m and np.isfinite(m["stability/eta_sharpness"]).any():
        es = m["stability/eta_sharpness"]
        i = int(np.nanargmax(es))
        out["max_eta_sharpness"] = {"step": int(steps[i]), "value": float(es[i])}
    if crossing is not None:
        after = steps >= crossing
        i = int(np.argmax(np.where(after, loss, -math.inf)))
        out["loss_peak_after_crossing"] = {"step": int(steps[i]), "loss": float(loss[i])}
    return out
