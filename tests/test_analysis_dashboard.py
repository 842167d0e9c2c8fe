"""The run's dashboards in a real TensorBoard, read over its HTTP API (no browser)."""
import json
import socket
import time
import urllib.parse
import urllib.request

import pytest
from tensorboard import program

from bnspike import dashboard


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tensorboard(spike_run):
    tb = program.TensorBoard()
    tb.configure(argv=[None, "--logdir", str(spike_run.dir), "--host", "127.0.0.1",
                       "--port", str(_free_port()), "--load_fast", "false",
                       "--samples_per_plugin", "scalars=1000000,images=10"])
    url = tb.launch().rstrip("/")  # serves from a daemon thread

    def get(path, **query):
        full = f"{url}{path}" + ("?" + urllib.parse.urlencode(query) if query else "")
        with urllib.request.urlopen(full, timeout=30) as response:
            return json.loads(response.read())

    deadline = time.monotonic() + 60
    while True:  # the first load runs in the background: wait for the last thing written
        tags = get("/data/plugin/scalars/tags").get(".", {})
        if dashboard.MARKERS + "peak" in tags or time.monotonic() > deadline:
            return get
        time.sleep(0.2)


def test_custom_scalars_layout_renders_with_data_in_every_chart(tensorboard, spike_run):
    layout = tensorboard("/data/plugin/custom_scalars/layout")
    categories = {c["title"]: c["chart"] for c in layout["category"]}
    assert list(categories) == ["stability", "loss", "theory vs run", "geometry"]
    n = len(spike_run.metrics["step"])
    for title, charts in categories.items():
        for chart in charts:
            for regex in chart["multiline"]["tag"]:
                answer = tensorboard("/data/plugin/custom_scalars/scalars", run=".", tag=regex)
                assert answer["regex_valid"], regex
                assert answer["tag_to_events"], f"{title} / {chart['title']}: no tag matches {regex}"
                for tag, points in answer["tag_to_events"].items():
                    assert points, f"{title} / {chart['title']}: {tag} has no data"
                    if not tag.startswith(dashboard.MARKERS):
                        assert len(points) == n, tag  # every step served, theory included
    overlay = tensorboard("/data/plugin/custom_scalars/scalars", run=".", tag=r"^(theory/)?loss/excess$")
    assert set(overlay["tag_to_events"]) == {"loss/excess", "theory/loss/excess"}


def test_markers_text_and_report_image_are_in_the_run(tensorboard, spike_run):
    events = spike_run.summary["measured"]
    peak = events["first_spike"]["peak"]
    points = tensorboard("/data/plugin/scalars/scalars", run=".", tag=dashboard.MARKERS + "peak")
    assert [p[1] for p in points] == [peak]  # (wall time, step, value)
    assert points[0][2] == pytest.approx(spike_run.metrics["loss/excess"][peak], rel=1e-6)
    assert "analysis/text_summary" in tensorboard("/data/plugin/text/tags")["."]
    assert "report" in tensorboard("/data/plugin/images/tags")["."]
