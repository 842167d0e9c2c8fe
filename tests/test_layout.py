"""The Custom Scalars layout a run writes fits the tags it logs: read back from its events."""
import re

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2, metadata

from bnspike import dashboard
from tests.conftest import run_config


@pytest.fixture(scope="module")
def logistic_run(tmp_path_factory):
    """Long enough for eta * sharpness to cross 2 (step 135): the analysis marks a step."""
    return run_config(tmp_path_factory, "logistic_precursor.yaml", "optim.steps=150", "probes.sharpness_every=5")


def written(run_dir) -> tuple[dict, set]:
    """The run's layout as the plugin reads it, {category: {title: [regexes]}}, and its scalar tags."""
    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    (config,) = events.Tensors(metadata.CONFIG_SUMMARY_TAG)
    layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
    charts = {c.title: {chart.title: list(chart.multiline.tag) for chart in c.chart} for c in layout.category}
    return charts, set(events.Tags()["scalars"])


def assert_layout_fits(run) -> dict:
    """Every chart draws a tag of metrics.csv, and each of its regexes matches a tag the events hold."""
    charts, scalars = written(run.dir)
    measured = set(run.metrics) - {"step"}
    assert measured <= scalars and any(t.startswith(dashboard.MARKERS) for t in scalars)
    for category, chart in charts.items():
        for title, regexes in chart.items():
            assert any(re.match(r, tag) for r in regexes for tag in measured), f"{category} / {title}"
            for r in regexes:
                assert any(re.match(r, tag) for tag in scalars), f"{category} / {title}: nothing matches {r}"
    return charts


def test_logistic_run_gets_margin_charts_and_none_of_the_square_loss(logistic_run):
    charts = assert_layout_fits(logistic_run)
    assert list(charts) == ["stability", "loss", "geometry", "margin"]  # no theory: it models the square loss
    assert charts["margin"] == {
        "minimum margin and train accuracy": ["^margin/min$", "^train/accuracy$"],
        "alignment with the max-margin direction": ["^align/cos_maxmargin$", "^align/sin2_maxmargin$"]}
    assert charts["stability"] == {"eta*sharpness, kappa and the limit 2":
                                   ["^stability/eta_sharpness$", "^theory/stability/limit$"]}
    assert charts["loss"]["loss/train with the analysed steps"] == ["^loss/train$", "^markers/"]
    assert "alignment" not in charts["geometry"]  # align/cos, align/sin2: the least-squares direction


def test_square_loss_run_gets_no_margin_charts(default_run):
    charts = assert_layout_fits(default_run)
    assert list(charts) == ["stability", "loss", "theory vs run", "geometry"]
    assert charts["loss"]["loss/excess with the analysed steps"] == ["^loss/excess$", "^markers/"]
    assert charts["theory vs run"]["kappa"] == ["^theory/stability/kappa$", "^stability/kappa$"]


def test_a_chart_keeps_only_logged_tags_and_goes_when_it_has_none():
    """A logistic run whose data are not separable and whose sharpness is off: no alignment and
    no stability chart (the limit 2 alone tells nothing)."""
    charts = dashboard.layout(["loss/train", "margin/min", "train/accuracy", "norm/w", "lr/effective",
                               dashboard.LIMIT_TAG])
    assert charts == {
        "loss": {"train loss and its terms": ["Multiline", ["^loss/train$"]],
                 "loss/train with the analysed steps": ["Multiline", ["^loss/train$", "^markers/"]]},
        "geometry": {"norms": ["Multiline", ["^norm/w$"]], "effective lr eta/||w||^2": ["Multiline", ["^lr/effective$"]]},
        "margin": {"minimum margin and train accuracy": ["Multiline", ["^margin/min$", "^train/accuracy$"]]}}
