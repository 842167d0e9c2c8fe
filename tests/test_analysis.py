"""Spike analysis on hand-made series with known answers, and on the reference run's outputs."""
import json
import subprocess

import matplotlib.image
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto.event_pb2 import Event

from bnspike import analysis, cli, report
from tests.conftest import ROOT


def _decay(n=300, rate=0.98):
    return 0.5 * rate ** np.arange(n)


def test_two_spikes_are_found_with_their_edges_peaks_and_recoveries():
    steps = np.arange(300)
    e = _decay()
    e[101:106] = e[100] * np.array([1.5, 3.0, 4.0, 2.0, 1.2])  # rises after step 100
    e[106] = 0.9 * e[100]  # back below the pre-spike minimum
    e[201:204] = e[200] * np.array([1.05, 2.0, 1.5])  # second spike after a new descent
    found = analysis.spikes(steps, e)
    assert [(s.rising_edge, s.peak, s.recovery) for s in found] == [(101, 103, 106), (201, 202, 204)]
    assert found[0].height_ratio == pytest.approx(4.0) and found[0].floor == e[100]
    assert found[1].height_ratio == pytest.approx(2.0)


def test_round_off_wiggles_and_small_bumps_are_not_spikes():
    steps = np.arange(300)
    e = _decay()
    e[250:] = 1e-20 * (1 + np.random.default_rng(0).random(50))  # converged: noise at the floor
    e[50] = e[49] * 1.05  # a 5% bump is below SPIKE_RATIO
    assert analysis.spikes(steps, e) == []


def test_spike_that_never_recovers_has_no_recovery_step():
    steps = np.arange(100)
    e = _decay(100)
    e[80:] = e[79] * np.linspace(1.05, 5.0, 20)
    (spike,) = analysis.spikes(steps, e)
    assert (spike.rising_edge, spike.peak, spike.recovery) == (80, 99, None)


def test_crossing_prefers_eta_sharpness_and_honours_kappa_limit():
    steps = np.arange(10)
    kappa = np.linspace(0, 0.9, 10)
    sharp = np.linspace(0, 4.5, 10)  # reaches 2 at step 4 (2.0 exactly)
    assert analysis.crossing({"step": steps, "stability/kappa": kappa, "stability/eta_sharpness": sharp}) == \
        (4, "stability/eta_sharpness")
    # no sharpness logged: kappa against the reference's own limit 2/mu
    limit = np.full(10, 0.5)
    assert analysis.crossing({"step": steps, "stability/kappa": kappa, "stability/kappa_limit": limit}) == \
        (5, "stability/kappa")
    assert analysis.analyse({"step": steps, "stability/kappa": kappa})["outcome"] == "no_rising_edge"
    assert analysis.analyse({"step": steps, "stability/kappa": kappa + 2})["outcome"] == "unstable_from_start"
    # sharpness probe switched off (NaN everywhere): fall back to kappa
    nan = np.full(10, np.nan)
    assert analysis.crossing({"step": steps, "stability/kappa": kappa * 3, "stability/eta_sharpness": nan}) == \
        (7, "stability/kappa")


def test_directional_onset_is_where_sin2_leaves_its_floor():
    steps = np.arange(60)
    sin2 = np.full(60, 1e-31)
    sin2[30:] = 1e-31 * 2.0 ** np.arange(30)  # doubles every step from step 30
    assert analysis.directional_onset(steps, sin2, start=10) == 37  # 2^7 = 128 > 100


def test_summary_of_the_reference_run(spike_run):
    s = json.loads((spike_run.dir / "summary.json").read_text())
    assert s["measured"] == spike_run.summary["measured"]
    m = s["measured"]
    assert (m["crossing"], m["outcome"], m["spikes"]) == (90, "delayed_onset", 1)
    spike = m["first_spike"]
    # the story of mechanism.md section 6, with this run's exact steps
    assert 178 <= spike["rising_edge"] < spike["peak"] <= 190 and spike["recovery"] > spike["peak"]
    excess = spike_run.metrics["loss/excess"]
    assert spike["height_ratio"] == pytest.approx(excess[spike["peak"]] / excess[spike["rising_edge"] - 1])
    assert excess[spike["rising_edge"] - 1] == excess[:spike["rising_edge"]].min()
    assert m["crossing"] < m["directional_onset"] < spike["rising_edge"]
    assert s["predicted"]["regime"] == "delayed_onset"
    table = analysis.table(s)
    assert "| crossing step | 90 | 90 | 90 |" in table
    assert (f"| peak step | {s['predicted']['onset_estimate']['peak']} | "
            f"{s['reference']['first_spike']['peak']} | {spike['peak']} |") in table


def test_report_png_marks_the_analysed_steps(default_run):
    assert (default_run.dir / report.FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # written by train
    done = subprocess.run(["make", "-s", "-C", str(ROOT), "report", f"RUN={default_run.dir}"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"wrote {default_run.dir / report.FILE}" in done.stdout
    fig, markers = report.figure(default_run.dir)
    events = analysis.events(default_run.summary)
    assert set(markers) == set(events) == {"crossing", "directional_onset", "rising_edge", "peak", "recovery"}
    m = default_run.metrics
    for name, (x, y) in markers.items():
        step = events[name]
        assert x == step, name
        want = {"crossing": analysis.LIMIT, "directional_onset": m["align/sin2"][step]}.get(name, m["loss/excess"][step])
        assert y == pytest.approx(want), name


def test_extremes_keep_every_block_extreme_in_step_order():
    """Of every block of consecutive steps a drawn line keeps the smallest and largest value, in
    step order; a block with no value at all stays a gap."""
    rng = np.random.default_rng(0)
    values = np.exp(rng.standard_normal(100_003))
    values[5_000], values[6_000] = 1e6, -1e-3  # a spike, a round-off dip below the floor
    values[7_000:9_500] = np.nan  # steps without a value
    rows = analysis.extremes(values, points=1000)
    per, blocks = 201, 498  # ceil(100003 / 500) steps per block, ceil(100003 / 201) blocks
    assert rows.size == 2 * blocks and np.all(np.diff(rows) >= 0)
    for block in range(blocks):
        got, want = values[rows[2 * block: 2 * block + 2]], values[block * per: (block + 1) * per]
        assert block * per <= rows[2 * block] and rows[2 * block + 1] < (block + 1) * per
        if np.isnan(want).all():
            assert np.isnan(got).all()
        else:
            assert sorted(got) == [np.nanmin(want), np.nanmax(want)]
    assert analysis.extremes(values[:999], points=1000).tolist() == list(range(999))  # short: all


def test_thinned_run_keeps_the_extremes_and_the_marked_steps_exactly(default_run):
    run = analysis.load_run(default_run.dir)
    measured, reference, prediction = analysis.thin(run, default_run.summary, points=20)
    assert 20 <= measured["step"].size < 100 and 20 <= reference["step"].size < 100
    assert prediction is run[2]
    for series, full in ((measured, run[0]), (reference, run[1])):
        rows = np.searchsorted(full["step"], series["step"])
        for tag, values in series.items():
            np.testing.assert_array_equal(values, full[tag][rows], err_msg=tag)  # rows of the run, unchanged
        assert np.nanmax(series["loss/excess"]) == np.nanmax(full["loss/excess"])
    for step in analysis.events(default_run.summary).values():
        assert analysis.value_at(measured, "loss/excess", step) == default_run.metrics["loss/excess"][step]


def test_report_image_in_the_event_file_is_the_png(default_run):
    png = (default_run.dir / report.FILE).read_bytes()
    (image,) = [v.image for path in default_run.dir.glob("events.out.tfevents.*")
                for raw in RawEventFileLoader(str(path)).Load() for v in Event.FromString(raw).summary.value
                if v.tag == "report"]  # as written (EventFileLoader would convert it to a tensor)
    assert image.encoded_image_string == png
    assert (image.height, image.width, image.colorspace) == matplotlib.image.imread(default_run.dir / report.FILE).shape


def test_report_of_a_directory_without_a_run_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "no metrics.csv" in capsys.readouterr().err
