"""Sinks: live flushing and readable files."""
import math
import pathlib
import time

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bnspike.sinks import CSVSink, TensorBoardSink, read_metrics


def test_events_and_csv_are_readable_while_the_run_is_still_writing(tmp_path):
    tb, csv = TensorBoardSink(tmp_path, flush_secs=0.2), CSVSink(tmp_path, flush_secs=0.2)
    try:
        for step in range(50):
            row = {"loss/train": 1.0 / (step + 1), "norm/w": 0.5 + step * 1e-17}
            tb.write(step, row)
            csv.write(step, row)
        time.sleep(1.0)
        csv.write(50, {"loss/train": 0.1, "norm/w": 0.6})  # a write after the interval flushes
        acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
        acc.Reload()
        events = acc.Scalars("loss/train")
        assert [e.step for e in events[:50]] == list(range(50))
        assert math.isclose(events[9].value, 0.1, rel_tol=1e-7)
        m = read_metrics(tmp_path / "metrics.csv")
        assert m["step"][:51] == list(range(51))
        assert m["norm/w"][3] == 0.5 + 3e-17  # full float64 precision in the CSV
    finally:
        tb.close()
        csv.close()


def test_read_metrics_drops_a_torn_last_line(tmp_path):
    path = pathlib.Path(tmp_path / "metrics.csv")
    path.write_text("step,loss/train,stability/sharpness\n0,1.5,2.0\n1,1.25,\n2,1.1")
    m = read_metrics(path)
    assert m["step"] == [0.0, 1.0]
    assert m["loss/train"] == [1.5, 1.25]
    assert m["stability/sharpness"][0] == 2.0 and math.isnan(m["stability/sharpness"][1])
