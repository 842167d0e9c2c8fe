"""The shipped configs tell the story of mechanism.md section 6."""
import numpy as np
import pytest

from tests.conftest import run_config


def test_default_config_reproduces_reference_run(default_run):
    m, s = default_run.metrics, default_run.summary
    kappa, loss, norm = m["stability/kappa"], m["loss/train"], m["norm/w"]
    # kappa crosses 2 near t = 90
    assert abs(s["first_kappa_above_2"] - 90) <= 2
    # the loss starts rising near t = 181 and peaks near t = 184 (this run: 180 -> 185)
    rise = int(np.argmax(np.diff(loss) > 0))  # first step whose successor is higher
    assert abs(rise - 181) <= 3
    peak = rise + int(np.argmax(loss[rise:rise + 20]))
    assert abs(peak - 184) <= 3
    assert 2.2 <= loss[peak] / loss[:peak].min() <= 3.0  # ~2.4x the running minimum
    # ||w|| jumps 0.55 -> 0.77 and kappa drops 2.77 -> 1.47
    assert norm[rise - 5] == pytest.approx(0.55, abs=0.005)
    assert norm[peak + 10] == pytest.approx(0.77, abs=0.005)
    assert kappa[:peak].max() == pytest.approx(2.77, abs=0.02)
    assert kappa[peak:peak + 10].min() == pytest.approx(1.47, abs=0.04)
    # one spike, then convergence: after the spike the loss only falls, kappa stays below 2
    after = loss[peak + 10:]
    assert np.all(np.diff(after) < 0) and np.all(kappa[peak + 10:] < 2)
    assert after[-1] < loss[:peak].min()


def test_no_spike_config_excess_never_rises(tmp_path_factory):
    run = run_config(tmp_path_factory, "whitened_no_spike.yaml", "probes.sharpness_every=0")
    excess = run.metrics["loss/excess"]
    assert np.all(np.diff(excess) < 0)
    assert run.metrics["stability/kappa"].max() < 2
    assert run.summary["first_kappa_above_2"] is None


def test_reference_with_unit_initial_norm_has_no_spike(tmp_path_factory):
    """mechanism.md: ||w_0|| = 1 (eta = 1): no spike."""
    run = run_config(tmp_path_factory, "whitened_spike.yaml", "model.w0_norm=1.0", "probes.sharpness_every=0")
    assert np.all(np.diff(run.metrics["loss/excess"]) < 0)


def test_diabetes_config_shows_delayed_spike_and_recovery(tmp_path_factory):
    run = run_config(tmp_path_factory, "diabetes_spike.yaml", "probes.sharpness_every=0")
    excess = run.metrics["loss/excess"]
    running_min = np.minimum.accumulate(excess)
    rising = np.flatnonzero(excess >= 2 * running_min)
    assert rising.size, "no 2x rise in loss/excess"
    first = rising[0]
    assert first >= 100
    assert np.all(np.diff(excess[:100]) < 0)  # at least 100 steps of descent first
    peak = first + int(np.argmax(excess[first:first + 50]))
    assert excess[peak] >= 5 * running_min[first]
    assert excess[peak + 30:].min() < running_min[first]  # recovery below the pre-spike level
