"""Beyond the flagship setting (issue 7): logistic loss and separable data, the plain linear
baseline, mini-batch SGD, weight decay, momentum and schedules, each against an oracle."""
import json

import numpy as np
import pytest
import scipy.optimize
import torch

from bnspike import analysis, config
from bnspike.config import ConfigError
from bnspike.data import DataError, load_data
from bnspike.optim import Batches
from bnspike.probes import Probe
from bnspike.data.separable import max_margin
from tests.conftest import CONFIGS, run_config
from tests.recorder import Recorder

FAST = "probes.sharpness_every=0"


class StepRecorder(Probe):
    """Keeps (w_t, raw gradient, lr) of every step, for the update-rule oracles."""
    states: list = []

    def __call__(self, s):
        StepRecorder.states.append((s.w.numpy().copy(), s.grad_w.numpy().copy(), s.lr_w))
        return {}


def recorded(tmp_path_factory, name, *overrides):
    Recorder.states.clear()
    run = run_config(tmp_path_factory, name, "probes.extra=['tests.recorder:Recorder']", *overrides)
    run.states = list(Recorder.states)
    return run


def bn_output(w, alpha, beta, X, eps):
    Xc = X - X.mean(0)
    return alpha * (Xc @ w) / np.sqrt(w @ (Xc.T @ Xc / len(X)) @ w + eps) + beta


def teacher(seed, d):
    u = np.random.default_rng(seed).standard_normal(d)  # the first draw of both sources
    return u / np.linalg.norm(u)


# ---------------------------------------------------------------- separable data, max margin

@pytest.mark.parametrize("source", ["separable", "knife_edge"])
def test_separable_sources_build_what_they_document(source):
    dc = {"source": source, "n": 64, "d": 6, "margin": 0.7, "spread": 1.3, "data_seed": 5, "task": "classification"}
    cfg = config.resolve({"data": dc | ({"support": 2} if source == "separable" else {})})
    data = load_data(cfg)
    X, y = data.X, data.y
    u = teacher(5, 6)
    t = y * (X @ u)  # the distance of each sample from the teacher hyperplane
    perp = X - np.outer(X @ u, u)
    np.testing.assert_allclose(X.mean(0), 0, atol=1e-15)
    assert sorted(set(y)) == [-1.0, 1.0] and y.sum() == 0
    np.testing.assert_allclose(perp.T @ perp / 64, 1.3 ** 2 * (np.eye(6) - np.outer(u, u)), atol=1e-13)
    np.testing.assert_allclose(data.facts.sigma, np.mean(t ** 2) * np.outer(u, u) + perp.T @ perp / 64, atol=1e-13)
    on_margin = np.abs(t - 0.7) < 1e-13
    assert t.min() == pytest.approx(0.7, abs=1e-13)
    assert on_margin.sum() == (64 if source == "knife_edge" else 8)
    found = max_margin(X, y)
    assert found.margin == pytest.approx(0.7, abs=1e-12)
    assert found.direction @ u == pytest.approx(1.0, abs=1e-14)


def test_knife_edge_with_unit_margin_and_spread_is_white():
    cfg = config.resolve({"data": {"source": "knife_edge", "n": 256, "d": 16, "task": "classification"}})
    np.testing.assert_allclose(load_data(cfg).facts.sigma, np.eye(16), atol=1e-13)


def test_separable_source_refuses_impossible_sizes():
    with pytest.raises(DataError, match="multiple of 4"):
        load_data(config.resolve({"data": {"source": "knife_edge", "n": 30, "d": 4}}))
    with pytest.raises(DataError, match="data.support=9"):
        load_data(config.resolve({"data": {"source": "separable", "n": 32, "d": 4, "support": 9}}))


def test_max_margin_agrees_with_an_independent_qp_and_detects_non_separable():
    rng = np.random.default_rng(7)
    Z = rng.standard_normal((60, 5)) * [3.0, 1.0, 0.5, 2.0, 1.0]
    y = np.sign(Z @ [1.0, -2.0, 0.5, 0.3, 0.0] + 0.2 * rng.standard_normal(60))
    Z = Z + 0.3 * y[:, None] * np.array([1.0, -2.0, 0.5, 0.3, 0.0]) / 2.3  # push the classes apart
    G = y[:, None] * Z
    qp = scipy.optimize.minimize(lambda w: 0.5 * w @ w, np.ones(5), jac=lambda w: w, method="SLSQP",
                                 constraints=[{"type": "ineq", "fun": lambda w: G @ w - 1, "jac": lambda w: G}],
                                 options={"ftol": 1e-15, "maxiter": 500})
    assert qp.success and (G @ qp.x).min() > 1 - 1e-9
    found = max_margin(Z, y)
    np.testing.assert_allclose(found.direction, qp.x / np.linalg.norm(qp.x), atol=1e-7)
    assert found.margin == pytest.approx(1 / np.linalg.norm(qp.x), rel=1e-8)
    y_noisy = y.copy()
    y_noisy[:5] *= -1
    assert max_margin(Z, y_noisy) is None


# ---------------------------------------------------------------- logistic loss, precursor

@pytest.fixture(scope="module")
def logistic_run(tmp_path_factory):
    return recorded(tmp_path_factory, "logistic_precursor.yaml", "probes.sharpness_every=10")


def test_logistic_logged_values_equal_independent_float64(logistic_run):
    m, cfg = logistic_run.metrics, logistic_run.cfg
    data = load_data(cfg)
    u = teacher(cfg["data"]["data_seed"], 16)  # the max-margin direction, by construction
    for step, w, alpha, beta, lr in logistic_run.states[::9]:
        yf = data.y * bn_output(w, alpha, beta, data.X, cfg["model"]["eps"])
        assert m["loss/train"][step] == pytest.approx(np.mean(np.logaddexp(0.0, -yf)), rel=1e-10)
        assert m["margin/min"][step] == pytest.approx(yf.min(), rel=1e-10)
        assert m["train/accuracy"][step] == np.mean(yf > 0)
        cos = u @ w / np.linalg.norm(w)  # Sigma = I here
        assert m["align/cos_maxmargin"][step] == pytest.approx(cos, rel=1e-10)
        sin2 = np.sum((w / np.linalg.norm(w) - cos * u) ** 2)
        assert abs(m["align/sin2_maxmargin"][step] - sin2) <= 1e-6 * sin2 + 1e-13
    assert "stability/kappa" not in m and "loss/direction_term" not in m  # square-loss only


def test_logistic_precursor_direction_error_grows_after_descent(logistic_run):
    m, story = logistic_run.metrics, logistic_run.summary["measured"]
    err, es = m["align/sin2_maxmargin"], m["stability/eta_sharpness"]
    cross, onset = story["crossing"], story["directional_onset"]
    assert story["crossing_from"] == "stability/eta_sharpness" and 100 <= cross < onset
    # descent phase: eta * sharpness below 2 while the direction error falls from O(1) to round-off
    assert np.nanmax(es[:cross]) < 2 and err[0] > 0.5 and err[:cross].min() < 1e-20
    # precursor: after the crossing the error leaves its floor and grows by more than 10 decades,
    # then (finite horizon: alpha keeps growing, the curvature falls) contracts again
    floor, peak = err[:onset].min(), err[onset:].max()
    assert err[onset] > 100 * err[cross:onset].min() and peak > 1e10 * floor and peak > 1e-6
    assert err[-1] < 1e-6 * peak
    assert m["train/accuracy"][cross:].min() == 1.0
    # aligned, all samples on the unit margin, Sigma = I: the Hessian in w along the sphere is
    # alpha s(-alpha) (alpha s(alpha) + 1) / ||w||^2 (s the sigmoid), and it is the top eigenvalue
    alpha, norm = m["param/alpha"], m["norm/w"]
    closed = alpha * (1 + alpha / (1 + np.exp(-alpha))) / (1 + np.exp(alpha)) / norm ** 2
    aligned = (err < 1e-20) & np.isfinite(es)
    assert aligned.sum() > 15
    np.testing.assert_allclose(es[aligned], 1.25 * closed[aligned], rtol=1e-7)
    on_disk = json.loads((logistic_run.dir / "summary.json").read_text())
    assert on_disk["measured"]["directional_onset"] == onset and "not modelled (logistic loss)" in on_disk["theory"]


def test_logistic_refuses_non_binary_labels(tmp_path):
    cfg = config.load(CONFIGS / "whitened_spike.yaml", ["optim.loss=logistic", "log.progress=none"])
    from bnspike.loop import train
    with pytest.raises(DataError, match=r"optim.loss=logistic needs labels in \{-1, \+1\}"):
        train(cfg, tmp_path)


# ---------------------------------------------------------------- plain baseline vs BN

@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return (run_config(tmp_path_factory, "baseline_bn.yaml", FAST),
            run_config(tmp_path_factory, "baseline_plain.yaml"))


def test_plain_model_is_unstable_from_the_first_step_and_stops_cleanly(pair):
    _, plain = pair
    loss = plain.metrics["loss/train"]
    # 1 - eta * lambda = -3 on whitened data: the residual flips sign and the loss grows 9x per step
    np.testing.assert_allclose(loss[1:20] / loss[:19], 9.0, rtol=1e-6)
    assert plain.summary["status"] == "diverged"
    # the Hessian of the plain square loss is Sigma = I: eta * sharpness = 4 at every step
    np.testing.assert_allclose(plain.metrics["stability/eta_sharpness"], 4.0, rtol=1e-12)
    assert plain.summary["measured"]["outcome"] == "unstable_from_start"
    stop = plain.summary["stopped"]
    assert "non-finite" in stop["cause"] and 250 < stop["step"] < 400
    assert plain.metrics["step"][-1] == stop["step"] - 1 and np.all(np.isfinite(loss))
    assert "param/alpha" not in plain.metrics and "stability/kappa" not in plain.metrics
    assert np.all(plain.metrics["lr/effective"] == 4.0)  # no scale invariance: eta itself


def test_bn_model_descends_100_steps_then_spikes_and_heals(pair):
    bn, _ = pair
    excess = bn.metrics["loss/excess"]
    assert bn.summary["status"] == "finished"
    rise = int(np.argmax(np.diff(excess) > 0)) + 1  # first step the loss is above the previous
    assert rise >= 100 and np.all(np.diff(excess[:rise]) < 0)
    peak = rise + int(np.argmax(excess[rise:rise + 50]))
    assert excess[peak] > 2 * excess[rise - 1]
    assert excess[-1] < 1e-2 * excess[peak]
    story = bn.summary["measured"]
    assert story["outcome"] == "delayed_onset" and story["first_spike"]["rising_edge"] == rise


def test_plain_model_with_bias_and_logistic_probes_degrade_without_crashing(tmp_path_factory):
    with pytest.warns(UserWarning, match="trains a bias"):
        run = run_config(tmp_path_factory, "logistic_precursor.yaml", "model.kind=linear", "model.bias=true",
                         "optim.lr_alpha=0.01",
                         "data.source=separable", "optim.steps=20", "optim.lr_w=0.5")
    assert run.summary["status"] == "finished"
    assert {"margin/min", "train/accuracy", "param/beta"} <= set(run.metrics)
    assert "align/cos_maxmargin" not in run.metrics and "param/alpha" not in run.metrics


@pytest.mark.parametrize("overrides, message", [
    (["model.kind=linear", "model.alpha0=0.3"], "model.alpha0 is set to 0.3, but model.kind=linear"),
    (["model.kind=linear", "optim.lr_alpha=0.1"], "optim.lr_alpha is set to 0.1, but model.kind=linear"),
    (["model.kind=linear", "model.beta0=0.5"], "model.beta0 is set to 0.5, but model.bias=false"),
    (["model.bias=true"], "model.bias is set to True, but model.kind=bn_linear"),
    (["optim.nesterov=true"], "optim.nesterov=true needs optim.momentum > 0"),
    (["optim.schedule=step"], "optim.schedule=step needs optim.step_every > 0"),
])
def test_settings_the_run_would_not_read_are_refused(tmp_path, overrides, message):
    from bnspike.loop import train
    cfg = config.load(CONFIGS / "whitened_spike.yaml", ["log.progress=none", "optim.lr_alpha=0.01", *overrides])
    with pytest.raises(ConfigError, match=message):
        train(cfg, tmp_path)


def test_plain_logistic_uses_the_euclidean_max_margin_direction(tmp_path_factory):
    """Without BN, f = <x, w>: the loss and the alignment with u (the Euclidean max-margin
    direction of the separable source, Sigma != I here) against direct float64 formulas."""
    StepRecorder.states.clear()
    run = run_config(tmp_path_factory, "logistic_precursor.yaml", "model.kind=linear", "optim.lr_alpha=0.01",
                     "data.source=separable", "data.spread=0.5", "optim.steps=25", "optim.lr_w=0.5",
                     "probes.extra=['tests.test_beyond:StepRecorder']")
    data, u, m = load_data(run.cfg), teacher(0, 16), run.metrics
    assert not np.allclose(data.facts.sigma, np.eye(16), atol=1e-3)
    for step, (w, g, lr) in enumerate(StepRecorder.states):
        yf = data.y * (data.X @ w)
        assert m["loss/train"][step] == pytest.approx(np.mean(np.logaddexp(0.0, -yf)), rel=1e-12)
        assert m["align/cos_maxmargin"][step] == pytest.approx(u @ w / np.linalg.norm(w), rel=1e-12)


# ---------------------------------------------------------------- weight decay

def test_weight_decay_gives_repeated_separate_spikes(tmp_path_factory):
    run = run_config(tmp_path_factory, "weight_decay_spikes.yaml", FAST)
    m = run.metrics
    found = analysis.spikes(m["step"].astype(int), m["loss/excess"])
    big = [s for s in found if s.height_ratio > 3]
    assert run.summary["measured"]["spikes"] == len(found) and len(big) >= 2
    for first, second in zip(big, big[1:]):  # separate: healed before the next one rises
        assert first.recovery is not None and first.recovery + 50 < second.rising_edge
    norm, lr_eff = m["norm/w"], m["lr/effective"]
    for s in big:  # weight decay shrank ||w|| (effective lr up) before, the spike makes it jump
        t = s.rising_edge
        assert norm[t - 1] < norm[t - 41] and lr_eff[t - 1] > lr_eff[t - 41]
        assert norm[s.recovery] > 1.1 * norm[t - 1]


# ---------------------------------------------------------------- mini-batch SGD

def test_batches_policy_drops_a_lone_last_sample_every_epoch():
    cfg = config.resolve({"optim": {"batch_size": 51, "shuffle_seed": 3}})
    batches = Batches(cfg, 256, True, torch.device("cpu"))
    epochs = [[batches.next().numpy() for _ in range(5)] for _ in range(2)]
    for epoch in epochs:
        assert [len(b) for b in epoch] == [51] * 5
        seen = np.concatenate(epoch)
        assert len(set(seen.tolist())) == 255  # one sample sits out
    assert not np.array_equal(np.concatenate(epochs[0]), np.concatenate(epochs[1]))
    with pytest.raises(ConfigError, match="batch_size=1: BatchNorm cannot normalise"):
        Batches(config.resolve({"optim": {"batch_size": 1}}), 256, True, torch.device("cpu"))
    with pytest.raises(ConfigError, match="larger than the dataset"):
        Batches(config.resolve({"optim": {"batch_size": 300}}), 256, True, torch.device("cpu"))


def test_sgd_with_final_batch_of_one_runs_and_labels_train_and_eval_losses(tmp_path_factory):
    run = recorded(tmp_path_factory, "sgd_last_batch_of_one.yaml", FAST)
    m, cfg = run.metrics, run.cfg
    assert run.summary["status"] == "finished" and m["step"][-1] == 399
    data = load_data(cfg)
    for step, w, alpha, beta, lr in run.states[::37]:  # loss/train is the full-batch objective
        f = bn_output(w, alpha, beta, data.X, cfg["model"]["eps"])
        assert m["loss/train"][step] == pytest.approx(0.5 * np.mean((data.y - f) ** 2), rel=1e-12)
    for tag in ("loss/batch", "loss/eval_running_stats"):
        rel = np.abs(m[tag] - m["loss/train"]) / m["loss/train"]
        assert np.median(rel) > 1e-3, tag  # three different quantities, under three names


# ---------------------------------------------------------------- schedules, momentum

@pytest.mark.parametrize("schedule, overrides, factor", [
    ("warmup", ["optim.warmup_steps=10"], lambda t: min(1.0, (t + 1) / 10)),
    ("cosine", ["optim.cosine_min=0.1"], lambda t: 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * t / 30))),
    ("step", ["optim.step_every=7", "optim.step_gamma=0.5"], lambda t: 0.5 ** (t // 7)),
])
def test_lr_effective_uses_the_scheduled_rate(tmp_path_factory, schedule, overrides, factor):
    run = recorded(tmp_path_factory, "whitened_spike.yaml", f"optim.schedule={schedule}", *overrides,
                   "optim.steps=30", "optim.lr_w=1.5", "probes.sharpness_every=3")
    m, b = run.metrics, load_data(run.cfg).facts.b
    for step, w, alpha, beta, lr in run.states:
        eta = 1.5 * factor(step)
        assert m["lr/effective"][step] == pytest.approx(eta / (w @ w), rel=1e-13)
        rho = b @ w / np.linalg.norm(w)  # Sigma = I
        assert m["stability/kappa"][step] == pytest.approx(eta * alpha * rho / (w @ w), rel=1e-10)
    es, sh = m["stability/eta_sharpness"], m["stability/sharpness"]
    for step in range(0, 30, 3):
        assert es[step] == pytest.approx(1.5 * factor(step) * sh[step], rel=1e-13)


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_and_weight_decay_follow_the_heavy_ball_recursion(tmp_path_factory, nesterov):
    StepRecorder.states.clear()
    run_config(tmp_path_factory, "whitened_spike.yaml", "probes.extra=['tests.test_beyond:StepRecorder']",
               "optim.momentum=0.8", f"optim.nesterov={str(nesterov).lower()}", "optim.weight_decay=0.01",
               "optim.steps=15", FAST)
    states, mu = StepRecorder.states, 0.8
    buf = None
    for (w, g, lr), (w_next, *_) in zip(states, states[1:]):
        g = g + 0.01 * w
        buf = g if buf is None else mu * buf + g
        step = g + mu * buf if nesterov else buf
        np.testing.assert_allclose(w_next, w - lr * step, rtol=0, atol=1e-14)


def test_theory_command_refuses_settings_it_does_not_model(capsys):
    from bnspike import cli
    assert cli.main(["theory", str(CONFIGS / "logistic_precursor.yaml")]) == 2
    assert "the theory models full-batch gradient descent" in capsys.readouterr().err
    assert cli.main(["theory", str(CONFIGS / "weight_decay_spikes.yaml")]) == 2
    assert "weight decay" in capsys.readouterr().err
