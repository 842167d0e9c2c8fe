"""theory.py against real nn.BatchNorm1d runs and against its own exact special cases."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from bnspike import analysis, config, theory
from bnspike.data import compute_facts, load_data
from bnspike.sinks import read_metrics
from tests.conftest import CONFIGS, run_config, sin2_roundoff


def _series(run):
    measured, reference, prediction = analysis.load_run(run.dir)
    return measured, reference, prediction


def _assert_tracks_until_crossing(run, crossing):
    measured, reference, _ = _series(run)
    upto = measured["step"] <= crossing
    assert upto.sum() == crossing + 1
    for tag in ("loss/train", "loss/excess", "param/alpha", "norm/w", "align/cos", "stability/kappa"):
        np.testing.assert_allclose(measured[tag][upto], reference[tag][upto], rtol=1e-6, err_msg=tag)
    # sin^2 relative while it is resolved; at the floor both sides are round-off (~1e-31)
    sin2, ref_sin2 = measured["align/sin2"][upto], reference["align/sin2"][upto]
    resolved = ref_sin2 > 1e-20
    assert resolved.sum() >= 20
    np.testing.assert_allclose(sin2[resolved], ref_sin2[resolved], rtol=1e-6)
    assert np.all(sin2[~resolved] < 1e-20)


def test_reference_tracks_real_whitened_run_to_the_crossing_and_the_spike(spike_run):
    """configs/whitened_spike.yaml, float64, eps = 1e-30: the real run vs theory.csv."""
    measured, reference, prediction = _series(spike_run)
    crossing = spike_run.summary["measured"]["crossing"]
    assert crossing == 90
    _assert_tracks_until_crossing(spike_run, crossing)
    run_spike, ref_spike = spike_run.summary["measured"]["first_spike"], spike_run.summary["reference"]["first_spike"]
    assert abs(run_spike["peak"] - ref_spike["peak"]) <= 3
    assert abs(run_spike["rising_edge"] - ref_spike["rising_edge"]) <= 3
    # the summary records the same comparison
    assert max(spike_run.summary["reference_max_rel_dev_to_crossing"].values()) < 1e-6


def test_predicted_crossing_and_onset_on_the_default_config(spike_run):
    prediction = json.loads((spike_run.dir / "theory.json").read_text())
    measured = spike_run.summary["measured"]
    assert prediction["regime"] == measured["outcome"] == "delayed_onset"
    assert abs(prediction["T_cross"] - measured["crossing"]) <= 2
    assert prediction["T_cross_lower_bound"] <= measured["crossing"]
    # the floored recursion places the visible rise from the round-off level alone
    onset = prediction["onset_estimate"]
    assert abs(onset["rising_edge"] - measured["first_spike"]["rising_edge"]) <= 5
    assert abs(onset["peak"] - measured["first_spike"]["peak"]) <= 5


@pytest.fixture(scope="module")
def non_white_run(tmp_path_factory):
    """Sigma spectrum 1..10 (not whitened): eta * sharpness crosses 2 near step 70, spike near 142."""
    return run_config(tmp_path_factory, "whitened_spike.yaml", "data.spectrum=linear",
                      "data.spectrum_max=10", "data.whiten=none", "optim.lr_w=0.1", "optim.steps=150")


def test_closed_form_map_tracks_a_non_whitened_run(non_white_run):
    facts = load_data(non_white_run.cfg).facts
    assert facts.sigma_eigs[-1] / facts.sigma_eigs[0] > 10  # spread over at least 1..10
    assert not facts.whitened
    measured = non_white_run.summary["measured"]
    assert measured["crossing_from"] == "stability/eta_sharpness"
    prediction = json.loads((non_white_run.dir / "theory.json").read_text())
    assert abs(prediction["T_cross"] - measured["crossing"]) <= 2
    assert prediction["mu"] > 5  # the limit on kappa is far below 2 here
    _assert_tracks_until_crossing(non_white_run, measured["crossing"])
    # the map's own round-off seeds its spike: timing within a few steps of the run's
    onset, spike = prediction["onset_estimate"], measured["first_spike"]
    assert abs(onset["peak"] - spike["peak"]) <= 3 and abs(onset["rising_edge"] - spike["rising_edge"]) <= 3


def test_aligned_factor_is_the_ratio_eta_sharpness_over_kappa_at_alignment(non_white_run):
    m = non_white_run.metrics
    aligned = m["align/sin2"] < 1e-5
    assert aligned.sum() > 5
    mu = json.loads((non_white_run.dir / "theory.json").read_text())["mu"]
    ratio = m["stability/eta_sharpness"][aligned] / m["stability/kappa"][aligned]
    np.testing.assert_allclose(ratio, mu, rtol=1e-2)


def _problem(*overrides):
    cfg = config.load(CONFIGS / "whitened_spike.yaml", list(overrides))
    return theory.problem(cfg, load_data(cfg).facts)


def test_reference_in_chunks_is_the_whole_map_and_theory_csv_holds_it_exactly(tmp_path):
    """The map's state crosses chunk boundaries exactly; theory.csv round-trips every float."""
    pr = _problem("data.whiten=none", "data.spectrum=linear", "optim.lr_w=0.1", "optim.steps=300")
    whole = theory.reference(pr)
    chunks = list(theory.save(tmp_path, pr, theory.reference_chunks(pr, size=7)))  # passed through as written
    assert len(chunks) == 43
    for tag, values in whole.items():
        np.testing.assert_array_equal(np.concatenate([c[tag] for c in chunks]), values, err_msg=tag)
    on_disk = read_metrics(tmp_path / analysis.THEORY_CSV)
    assert list(on_disk) == ["step", *theory.TAGS]
    for tag, values in on_disk.items():
        np.testing.assert_array_equal(values, whole[tag], err_msg=tag)
    # the prediction from the series save kept while writing is the one from the whole map
    assert json.loads((tmp_path / analysis.THEORY_JSON).read_text()) == json.loads(json.dumps(theory.predict(pr)))


def test_whitened_recursion_equals_the_closed_form_map():
    pr = _problem("model.eps=1e-300", "optim.steps=90")
    ref = theory.reference(pr)
    f = pr.facts
    cos0 = f.b @ pr.w0 / (f.rho_max * np.linalg.norm(pr.w0))
    rec = theory.whitened_recursion(pr.alpha0, cos0, np.linalg.norm(pr.w0), f.rho_max, pr.eta,
                                    pr.eta_alpha, pr.steps)
    np.testing.assert_allclose(rec["alpha"], ref["param/alpha"], rtol=1e-12)
    np.testing.assert_allclose(rec["norm"], ref["norm/w"], rtol=1e-12)
    np.testing.assert_allclose(rec["kappa"], ref["stability/kappa"], rtol=1e-12)
    np.testing.assert_allclose(rec["loss/excess"], ref["loss/excess"], rtol=1e-9)
    sin2 = rec["tan"] ** 2 / (1 + rec["tan"] ** 2)
    # the map's misalignment vector carries a few ulps of absolute round-off; the recursion none
    assert np.all(np.abs(sin2 - ref["align/sin2"]) <= 1e-9 * sin2 + sin2_roundoff(sin2, f.d))
    # without a floor the recursion aligns forever: far below what float64 can hold in w
    assert abs(rec["tan"][-1]) < 1e-30


def test_closed_form_crossing_is_exact_when_aligned_from_the_start():
    """w_0 along b: the norm never moves and alpha follows the closed form exactly."""
    for eta, eta_alpha, alpha0, norm0 in [(1.0, 0.01, 0.05, 0.5), (2.0, 0.03, 0.2, 0.8), (0.7, 0.005, 0.0, 0.4)]:
        rec = theory.whitened_recursion(alpha0, 1.0, norm0, 1.0, eta, eta_alpha, 3000)
        crossed = int(np.flatnonzero(rec["kappa"] >= 2)[0])
        assert crossed == math.ceil(theory.closed_form_crossing(alpha0, norm0 ** 2, 1.0, eta, eta_alpha))
        np.testing.assert_allclose(rec["norm"], norm0, rtol=1e-15)


def test_no_rising_edge_condition_and_its_regime():
    prediction = theory.predict(_problem("optim.lr_w=0.2"))
    assert prediction["no_rising_edge_condition"] == {"holds": True, "margin": pytest.approx(0.3)}
    assert prediction["regime"] == "no_rising_edge" and prediction["T_cross"] is None
    # just beyond the condition: the limit eta rho_max^2/||w||^2 exceeds 2 -> a late crossing
    late = theory.predict(_problem("optim.lr_w=0.6"))
    assert not late["no_rising_edge_condition"]["holds"]
    assert late["regime"] == "delayed_onset" and late["T_cross"] > 100


def test_crossing_past_the_horizon_is_extrapolated_in_closed_form():
    short = theory.predict(_problem("optim.steps=50"))
    assert short["T_cross_from"] == "closed form past the horizon"
    assert abs(short["T_cross"] - 90) <= 1  # the full run crosses at 90


def test_unstable_from_the_start():
    prediction = theory.predict(_problem("model.alpha0=3.0", "model.w0_norm=0.2"))
    assert prediction["kappa_0"] >= 2 and prediction["regime"] == "unstable_from_start"


def test_float32_round_off_brings_the_onset_earlier():
    p64 = theory.predict(_problem())["onset_estimate"]
    p32 = theory.predict(_problem("model.dtype=float32"))["onset_estimate"]
    assert p32["delta_0"] / p64["delta_0"] == pytest.approx(2.0 ** 29)
    assert p32["lag"] < 0.6 * p64["lag"]


def test_no_signal_is_refused_with_a_clear_message():
    """y uncorrelated with every feature (b = 0 exactly): nothing to align with."""
    X = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    facts = compute_facts(X, np.array([1.0, 1.0, -1.0, -1.0]))
    assert facts.rho_max == 0
    cfg = config.load(CONFIGS / "whitened_spike.yaml")
    with pytest.raises(ValueError, match="no signal"):
        theory.reference(theory.problem(cfg, facts))


def test_theory_cli_prints_the_table_without_importing_torch():
    code = ("import sys; from bnspike import cli; rc = cli.main(['theory', 'configs/whitened_spike.yaml', "
            "'optim.lr_w=0.2']); assert 'torch' not in sys.modules, 'theory imported torch'; sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=CONFIGS.parent)
    assert out.returncode == 0, out.stderr
    assert "no_rising_edge" in out.stdout and "holds (margin 0.3)" in out.stdout
