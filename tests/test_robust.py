"""Runs that end badly end cleanly: divergence, bad probe values, dtype and device mismatches,
and paths with spaces in the CLI and every make target."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from bnspike import cli, config, data
from bnspike.loop import _Divergence, _gather, train
from bnspike.model import build_model
from bnspike.optim import build_optimizer
from bnspike.probes import Probe
from bnspike.sinks import read_metrics
from tests.conftest import CONFIGS, ROOT, assert_same_metrics
from tests.test_resume import scalars

SPIKE = CONFIGS / "whitened_spike.yaml"
QUICK = ["probes.sharpness_every=0", "log.progress=none"]

# alpha doubles (and flips sign) every step: alpha_{t+1} - rho = -2 (alpha_t - rho) with eta_alpha = 3.
# w is frozen (eta = 1e-300) and eps is negligible even against alpha^2, so the loss is a closed
# form in alpha alone and overflows float64 once alpha passes ~1.9e154.
OVERFLOW = ["model.alpha0=1e145", "optim.lr_alpha=3", "optim.lr_w=1e-300", "model.eps=1e-300",
            "optim.steps=80", *QUICK]


def overflow_oracle(cfg):
    """Independent numpy recursion for alpha; the first step whose loss is not finite."""
    d = data.load_data(cfg)
    w = np.random.default_rng(cfg["model"]["w0_seed"]).standard_normal(d.facts.d)
    Xc = d.X - d.X.mean(0)
    z = Xc @ w / np.sqrt(np.mean((Xc @ w) ** 2) + cfg["model"]["eps"])
    alphas, alpha = [], cfg["model"]["alpha0"]
    with np.errstate(over="ignore", invalid="ignore"):
        for step in range(cfg["optim"]["steps"]):
            loss = 0.5 * np.mean((alpha * z - d.y) ** 2)
            if not np.isfinite(loss):
                return step, alphas
            alphas.append(alpha)
            alpha = alpha - cfg["optim"]["lr_alpha"] * np.mean((alpha * z - d.y) * z)
    raise AssertionError("the oracle run never overflows")


def test_overflow_stops_at_the_right_step_with_readable_logs(tmp_path, capsys):
    run_dir = tmp_path / "diverging run"
    assert cli.main(["train", str(SPIKE), *OVERFLOW, "--run-dir", str(run_dir)]) == 3
    cfg = config.load(run_dir / "config.yaml")
    step, alphas = overflow_oracle(cfg)
    assert 20 < step < 40  # the story: ~30 doublings from 1e145 to 1e154
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["stopped"] == {"step": step, "cause": "non-finite loss (inf)"}
    assert f"bnspike: diverged at step {step}: non-finite loss (inf)" in capsys.readouterr().err

    m = read_metrics(run_dir / "metrics.csv")  # everything before the step, all finite
    assert m["step"].tolist() == list(range(step)) and np.isfinite(m["loss/train"]).all()
    np.testing.assert_allclose(m["param/alpha"], alphas, rtol=1e-12)
    # alpha doubles, the loss quadruples: the next sum of n squared residuals passes the float64 max
    assert float(m["loss/train"][-1]) * 4 * cfg["data"]["n"] > np.finfo(np.float64).max  # a Python float: no overflow warning
    events = scalars(run_dir)["loss/train"]
    assert [s for s, _ in events] == list(range(step))
    assert summary["logged_steps"] == step and summary["final_step"] == step - 1


def test_overflowing_update_names_the_parameter(tmp_path):
    """Loss and gradient finite at step 0 (alpha = 1e150); the update alpha - 1e200 (alpha - rho)
    overflows to -inf."""
    summary = train(config.load(SPIKE, ["model.alpha0=1e150", "optim.lr_alpha=1e200", *QUICK]), tmp_path)
    assert summary["stopped"] == {"step": 0, "cause": "non-finite parameter bn.weight after the update (-inf)"}
    assert summary["status"] == "diverged" and summary["logged_steps"] == 0


def test_nonfinite_names_loss_then_gradient_then_parameter():
    model = torch.nn.Linear(3, 1)
    model.weight.grad, model.bias.grad = torch.zeros(1, 3), torch.zeros(1)
    diverged = _Divergence(model)
    assert diverged(torch.tensor(1.0)) is None
    assert diverged(torch.tensor(float("nan"))) == "non-finite loss (nan)"
    with torch.no_grad():  # the update carries a non-finite gradient into its parameter
        model.bias.grad[0], model.bias[0] = float("inf"), -float("inf")
    assert diverged(torch.tensor(1.0)) == "non-finite gradient of bias (inf)"
    assert diverged(torch.tensor(float("nan"))) == "non-finite loss (nan)"
    with torch.no_grad():
        model.bias.grad[0], model.bias[0] = 0.0, 0.0
        model.weight[0, 2] = -float("inf")
    assert diverged(torch.tensor(1.0)) == "non-finite parameter weight after the update (-inf)"


@pytest.mark.parametrize("overrides", [[], ["optim.lr_alpha=0"], ["optim.momentum=0.9"],
                                       ["optim.momentum=0.9", "optim.nesterov=true"], ["optim.weight_decay=0.1"]])
def test_a_nonfinite_gradient_always_reaches_its_parameter(overrides):
    """Why the divergence test may read the updated parameters only: SGD's update makes a
    parameter non-finite whenever its gradient is, even at step size 0 (0 * inf is NaN)."""
    cfg = config.load(SPIKE, overrides)
    model = build_model(cfg, 4)
    optimizer = build_optimizer(cfg, model)
    for bad in (float("inf"), float("nan")):
        for p in model.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
                p.grad.view(-1)[-1] = bad
        optimizer.step()
        assert all(not torch.isfinite(p).all() for p in model.parameters() if p.requires_grad), overrides


def test_nonfinite_is_not_fooled_by_a_sum_that_overflows():
    """The fast path tests the sum of all values; finite values whose sum is inf are still finite."""
    model = torch.nn.Linear(3, 1).double()
    with torch.no_grad():
        model.weight.fill_(1e308)
    model.weight.grad, model.bias.grad = torch.full((1, 3), 1e308, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    diverged = _Divergence(model)
    assert diverged(torch.tensor(1e308, dtype=torch.float64)) is None
    with torch.no_grad():
        model.bias.grad[0], model.bias[0] = -float("inf"), -float("inf")
    assert diverged(torch.tensor(1e308, dtype=torch.float64)) == "non-finite gradient of bias (-inf)"


def rounded_to_float32(as_dtype: str):
    """A callable data source: the reference data rounded to float32, as torch tensors of `as_dtype`."""
    d = data.load_data(config.load(SPIKE))
    return tuple(torch.as_tensor(a.astype(np.float32)).to(getattr(torch, as_dtype)) for a in (d.X, d.y))


def test_float32_data_and_float32_model_are_handled(tmp_path):
    """float32 data in a float64 model: exactly the run on the same values given as float64.
    float64 data in a float32 model: the data is cast; step 0 agrees to float32 round-off."""
    runs = {}
    for data_dtype, model_dtype in [("float32", "float64"), ("float64", "float64"), ("float64", "float32")]:
        name = f"{data_dtype} data, {model_dtype} model"
        raw = {"data": {"source": "callable", "function": "tests.test_robust:rounded_to_float32",
                        "kwargs": {"as_dtype": data_dtype}},
               "model": {"dtype": model_dtype}, "optim": {"steps": 30},
               "probes": {"sharpness_every": 0}, "log": {"progress": "none"}}
        (tmp_path / name).mkdir()
        assert train(config.resolve(raw), tmp_path / name)["status"] == "finished"
        runs[name] = read_metrics(tmp_path / name / "metrics.csv")
    assert_same_metrics(runs["float32 data, float64 model"], runs["float64 data, float64 model"])
    f32, f64 = runs["float64 data, float32 model"]["loss/train"], runs["float64 data, float64 model"]["loss/train"]
    assert f32[0] == pytest.approx(f64[0], rel=1e-6) and f32[0] != f64[0]


def test_probe_values_of_other_dtype_are_cast_and_non_scalars_refused():
    row = _gather({"a": torch.tensor(1.5, dtype=torch.float32), "b": torch.tensor([2.0], dtype=torch.float64),
                   "c": np.float32(0.25), "d": 3})
    assert row == {"a": 1.5, "b": 2.0, "c": 0.25, "d": 3.0} and list(row) == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match=r"'custom/vec' has shape \(3,\)"):
        _gather({"ok": torch.tensor(1.0), "custom/vec": torch.ones(3)})


VENV = pathlib.Path(sys.prefix)  # the venv `make` made and these tests run in


@pytest.mark.skipif(not (VENV / "bin" / ".installed").exists(), reason="needs the venv that `make` creates")
def test_make_from_a_directory_with_spaces(tmp_path):
    """`make train` and `make clean-venv` in a checkout, venv, config and run dir with spaces."""
    checkout = tmp_path / "my checkout"
    (checkout / "configs").mkdir(parents=True)
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, checkout / name)
    shutil.copy2(SPIKE, checkout / "configs" / "my spike.yaml")
    (checkout / "my venv").symlink_to(VENV)  # the installed venv, under a name with a space
    args = f'optim.steps=20 {" ".join(QUICK)} --run-dir "runs/my run"'
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # -o: never remake the venv (it is the one these tests run in), whatever pyproject.toml's age
    proc = subprocess.run(["make", "-o", "my venv/bin/.installed", "train", "VENV=my venv",
                           "CONFIG=configs/my spike.yaml", f"ARGS={args}"],
                          cwd=checkout, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pip install" not in proc.stdout  # nothing reinstalled
    summary = json.loads((checkout / "runs" / "my run" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["logged_steps"] == 20

    (checkout / "old venv" / "bin").mkdir(parents=True)
    proc = subprocess.run(["make", "clean-venv", "VENV=old venv"], cwd=checkout, capture_output=True, text=True)
    assert proc.returncode == 0 and not (checkout / "old venv").exists() and (checkout / "my venv").exists()
    proc = subprocess.run(["make", "-n", "-o", "my venv/bin/.installed", "tensorboard", "VENV=my venv",
                           "LOGDIR=runs/my run"], cwd=checkout, capture_output=True, text=True)
    assert proc.returncode == 0 and '"my venv/bin/tensorboard" --logdir "runs/my run"' in proc.stdout


class ThreadCount(Probe):
    """Records torch's thread count as the probes see it during training."""
    seen: list[int] = []

    def __call__(self, state):
        ThreadCount.seen.append(torch.get_num_threads())
        return {}


@pytest.mark.parametrize("threads", [1, 2])
def test_model_threads_holds_while_training_and_is_put_back(tmp_path, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        ThreadCount.seen.clear()
        cfg = config.load(CONFIGS / "whitened_spike.yaml", ["optim.steps=5", "log.progress=none", f"model.threads={threads}",
                                                            "probes.extra=['tests.test_robust:ThreadCount']"])
        train(cfg, tmp_path)
        assert ThreadCount.seen == [threads] * 5 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
