"""The run's dashboards in a real TensorBoard (`make tensorboard`), read over its HTTP API."""
import numpy as np
import pytest

from bnspike import dashboard
from tests.tbserver import tensorboard


@pytest.fixture(scope="module")
def served(default_run):
    """A running TensorBoard on the default run, once its last event (a marker) is loaded."""
    with tensorboard(default_run.dir.parent) as tb:
        tb.scalars(default_run.dir.name, dashboard.MARKERS + "peak", expect=1)
        yield tb


def test_custom_scalars_layout_renders_with_data_in_every_chart(served, default_run):
    run, n = default_run.dir.name, len(default_run.metrics["step"])
    layout = served.get("/data/plugin/custom_scalars/layout")
    categories = {c["title"]: c["chart"] for c in layout["category"]}
    assert list(categories) == ["stability", "loss", "theory vs run", "geometry"]
    for title, charts in categories.items():
        for chart in charts:
            for regex in chart["multiline"]["tag"]:
                answer = served.get("/data/plugin/custom_scalars/scalars", run=run, tag=regex)
                assert answer["regex_valid"], regex
                assert answer["tag_to_events"], f"{title} / {chart['title']}: no tag matches {regex}"
                for tag, points in answer["tag_to_events"].items():
                    if not tag.startswith(dashboard.MARKERS):
                        assert len(points) == n, tag  # every step served, theory included
    overlay = served.get("/data/plugin/custom_scalars/scalars", run=run, tag=r"^(theory/)?loss/excess$")
    theory, measured = (np.array([p[2] for p in overlay["tag_to_events"][t]]) for t in ("theory/loss/excess", "loss/excess"))
    np.testing.assert_allclose(theory[:90], measured[:90], rtol=1e-6)  # float32 in TensorBoard


def test_markers_text_and_report_image_are_in_the_run(served, default_run):
    run, story = default_run.dir.name, default_run.summary["measured"]
    for name, step in [("crossing", story["crossing"]), ("peak", story["first_spike"]["peak"]),
                       ("recovery", story["first_spike"]["recovery"])]:
        (point,) = served.scalars(run, dashboard.MARKERS + name, expect=1)
        assert point[1] == step  # [wall time, step, value]
        assert point[2] == pytest.approx(default_run.metrics["loss/excess"][step], rel=1e-6)
    assert "analysis/text_summary" in served.get("/data/plugin/text/tags")[run]
    assert "report" in served.get("/data/plugin/images/tags")[run]
