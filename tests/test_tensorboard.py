"""A real TensorBoard server serves every logged step, the spike peak included."""
import numpy as np
import pytest

from tests.tbserver import tensorboard


def test_tensorboard_serves_every_step_of_loss(default_run):
    m = default_run.metrics
    steps = len(m["step"])
    with tensorboard(default_run.dir.parent) as tb:
        run = default_run.dir.name
        points = tb.scalars(run, "loss/train", expect=steps)
        assert [p[1] for p in points] == list(range(steps))
        served = np.array([p[2] for p in points])
        np.testing.assert_allclose(served, m["loss/train"], rtol=1e-6)  # TensorBoard stores float32
        peak = int(np.argmax(m["loss/train"][100:])) + 100
        assert served[peak] == pytest.approx(m["loss/train"][peak], rel=1e-6)
        tags = tb.get("/data/plugin/scalars/tags")[run]
        for tag in ["loss/excess", "stability/kappa", "stability/eta_sharpness", "align/sin2", "update/angle"]:
            assert tag in tags
