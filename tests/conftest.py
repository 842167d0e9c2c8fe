"""Shared fixtures: finished runs are expensive-ish, so each config is trained once per session."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest

from bnspike import config
from bnspike.loop import train
from bnspike.sinks import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


class Run:
    def __init__(self, run_dir: pathlib.Path, cfg: dict, summary: dict):
        self.dir, self.cfg, self.summary = run_dir, cfg, summary
        self.metrics = read_metrics(run_dir / "metrics.csv")


def assert_same_metrics(a: dict, b: dict) -> None:
    """Two read_metrics results: the same columns, equal values (NaN, an empty cell, equals NaN)."""
    assert list(a) == list(b)
    for tag in a:
        np.testing.assert_array_equal(a[tag], b[tag], err_msg=tag)


def sin2_roundoff(sin2, d: int):
    """How far two float64 computations of a misalignment sin^2 = |perp|^2 may differ: each
    carries a few ulps (e = 4 eps) of ABSOLUTE error per component of the perpendicular vector,
    so |difference| <= 2 sqrt(sin2) sqrt(d) e + 2 d e^2 (a floor that matters once aligned)."""
    e = 4 * np.finfo(np.float64).eps
    return 2 * np.sqrt(sin2) * np.sqrt(d) * e + 2 * d * e ** 2


def run_config(tmp_path_factory, name: str, *overrides: str) -> Run:
    cfg = config.load(CONFIGS / name, ["log.progress=none", *overrides])
    # alone in its parent: a TensorBoard on run_dir.parent (tests.tbserver) serves this run's layout,
    # not one merged with the layouts of every other run the session trained
    stem = pathlib.Path(name).stem
    run_dir = tmp_path_factory.mktemp(stem) / stem
    run_dir.mkdir()
    return Run(run_dir, cfg, train(cfg, run_dir))


@pytest.fixture(scope="session")
def default_run(tmp_path_factory) -> Run:
    """configs/whitened_spike.yaml exactly as a user runs it."""
    return run_config(tmp_path_factory, "whitened_spike.yaml")


@pytest.fixture(scope="session")
def spike_run(tmp_path_factory) -> Run:
    """The reference run with eps = 1e-30 (scale invariance to round-off) and a recording
    probe, so every logged metric can be recomputed from w_t independently."""
    Recorder.states.clear()
    run = run_config(tmp_path_factory, "whitened_spike.yaml", "model.eps=1e-30",
                     "probes.extra=['tests.recorder:Recorder']")
    run.states = list(Recorder.states)
    return run


from tests.recorder import Recorder  # noqa: E402
