"""Sinks: live flushing and readable files; the batched writers produce exactly what the
standard ones would (TFRecord framing checked with TensorBoard's own CRC, events byte-identical
to protobuf's serialisation, exact CSV)."""
import math
import pathlib
import struct
import time

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

from bnspike import sinks
from bnspike.sinks import CSVSink, TensorBoardSink, read_metrics


def test_events_and_csv_are_readable_while_the_run_is_still_writing(tmp_path):
    tb, csv = TensorBoardSink(tmp_path, flush_secs=0.2), CSVSink(tmp_path, flush_secs=0.2)
    try:
        for step in range(50):
            row = {"loss/train": 1.0 / (step + 1), "norm/w": 0.5 + step * 1e-17}
            tb.write(step, row)
            csv.write(step, row)
        time.sleep(1.0)
        for sink in (tb, csv):  # a write after the interval flushes
            sink.write(50, {"loss/train": 0.1, "norm/w": 0.6})
        acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
        acc.Reload()
        events = acc.Scalars("loss/train")
        assert [e.step for e in events[:50]] == list(range(50))
        assert math.isclose(events[9].value, 0.1, rel_tol=1e-7)
        m = read_metrics(tmp_path / "metrics.csv")
        assert m["step"][:51].tolist() == list(range(51))
        assert m["norm/w"][3] == 0.5 + 3e-17  # full float64 precision in the CSV
    finally:
        tb.close()
        csv.close()


def test_read_metrics_drops_a_torn_last_line(tmp_path):
    path = pathlib.Path(tmp_path / "metrics.csv")
    path.write_text("step,loss/train,stability/sharpness\n0,1.5,2.0\n1,1.25,\n2,1.1")
    m = read_metrics(path)
    assert m["step"].tolist() == [0.0, 1.0]
    assert m["loss/train"].tolist() == [1.5, 1.25]
    assert m["stability/sharpness"][0] == 2.0 and math.isnan(m["stability/sharpness"][1])
    assert all(v.dtype == np.float64 for v in m.values())
    some = read_metrics(path, ("stability/sharpness", "step", "not/logged"))  # in the file's order
    assert list(some) == ["step", "stability/sharpness"] and some["step"].tolist() == [0.0, 1.0]


def records(path):
    """(data, header crc ok, data crc ok) of each TFRecord, checked with TensorBoard's CRC."""
    blob, pos, out = path.read_bytes(), 0, []
    while pos < len(blob):
        header = blob[pos:pos + 8]
        (length,), (hcrc,) = struct.unpack("<Q", header), struct.unpack("<I", blob[pos + 8:pos + 12])
        data = blob[pos + 12:pos + 12 + length]
        (dcrc,) = struct.unpack("<I", blob[pos + 12 + length:pos + 16 + length])
        out.append((data, hcrc == masked_crc32c(header), dcrc == masked_crc32c(data)))
        pos += 16 + length
    assert pos == len(blob)
    return out


def test_batched_crc_equals_tensorboards():
    rng = np.random.default_rng(0)
    lengths = [0, 1, 7, 8, 9, 255, 256, 1000, 3000, 4096, 4097, 50_000] + [37] * 600  # chunks of one length; long records
    data = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in lengths]
    assert sinks._CRC32C().masked(data) == [masked_crc32c(d) for d in data]


ROWS = [
    (0, {"loss/train": 0.5, "align/sin2": -0.0}),  # step 0: proto3 leaves the field out
    (7, {"loss/train": 1e39, "align/sin2": math.nan}),  # beyond float32: inf, as protobuf stores it
    (300, {"loss/train": -1e-45, "stability/sharpness": math.inf}),  # another set of tags
    (2 ** 40, {}),
    (8, {"loss/train": 0.1, "align/sin2": 2.5e-30}),
]


def test_events_are_the_standard_encoding(tmp_path):
    sink = TensorBoardSink(tmp_path, flush_secs=3600)
    for step, row in ROWS[:2]:
        sink.write(step, row)
    text = Summary(value=[Summary.Value(tag="note", simple_value=1.0)])
    sink.add_summary(text, step=3)
    for step, row in ROWS[2:]:
        sink.write(step, row)
    sink.close()
    recs = records(sink.path)
    assert all(h and d for _, h, d in recs)
    events = [Event.FromString(data) for data, *_ in recs]
    assert events[0].file_version == "brain.Event:2"
    assert events[3].summary == text and events[3].step == 3  # kept in order with the scalars
    for (step, row), (data, *_), event in zip(ROWS, recs[1:3] + recs[4:], events[1:3] + events[4:]):
        standard = Event(wall_time=event.wall_time, step=step, summary=Summary(
            value=[Summary.Value(tag=t, simple_value=v) for t, v in row.items()]))
        assert data == standard.SerializeToString()
        assert abs(event.wall_time - events[0].wall_time) < 60
    # and TensorBoard's own loader reads every value back (float32)
    loaded = [e for e in EventFileLoader(str(sink.path)).Load() if e.HasField("summary")]
    got = {(e.step, v.tag): v.tensor.float_val[0] for e in loaded for v in e.summary.value}
    assert got[(7, "loss/train")] == math.inf and math.isnan(got[(7, "align/sin2")])
    assert got[(8, "loss/train")] == np.float32(0.1) and got[(300, "stability/sharpness")] == math.inf


def test_one_batch_across_step_widths_is_the_standard_encoding(tmp_path):
    """Rows are encoded together at the flush; the step's varint grows at 128 and 16384."""
    sink = TensorBoardSink(tmp_path, flush_secs=3600)
    rows = [(step, {"loss/train": step / 3, "grad/cos_w": -1e-17 * step}) for step in range(0, 20000, 61)]
    for step, row in rows:
        sink.write(step, row)
    sink.close()
    recs = records(sink.path)[1:]
    assert len(recs) == len(rows) and all(h and d for _, h, d in recs)
    for (step, row), (data, *_) in zip(rows, recs):
        wall = Event.FromString(data).wall_time
        assert data == Event(wall_time=wall, step=step, summary=Summary(
            value=[Summary.Value(tag=t, simple_value=v) for t, v in row.items()])).SerializeToString()


def test_events_wait_for_the_flush_and_the_buffer_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(sinks, "FLUSH_ROWS", 10)
    sink = TensorBoardSink(tmp_path, flush_secs=3600)
    for step in range(9):
        sink.write(step, {"loss/train": float(step)})
    assert len(records(sink.path)) == 1  # only the file version: nothing on the hot path
    sink.write(9, {"loss/train": 9.0})
    assert len(records(sink.path)) == 11
    sink.write(10, {"loss/train": 10.0})
    sink.close()
    assert [Event.FromString(r[0]).step for r in records(sink.path)[1:]] == list(range(11))


def test_csv_rows_are_exact_and_skipped_metrics_are_empty(tmp_path):
    sink = CSVSink(tmp_path, flush_secs=3600)
    sink.write(0, {"a": 0.1, "b": 1 / 3})
    sink.write(1, {"a": -2.5e-300})  # b skipped this step
    with pytest.raises(ValueError, match=r"step 2 has new metric\(s\) \['c'\]"):
        sink.write(2, {"a": 1.0, "c": 2.0})
    sink.close()
    m = read_metrics(sink.path)
    assert m["step"].tolist() == [0.0, 1.0] and m["a"].tolist() == [0.1, -2.5e-300]
    assert m["b"][0] == 1 / 3 and math.isnan(m["b"][1])


def test_two_event_sinks_in_one_directory_never_collide(tmp_path):
    first, second = TensorBoardSink(tmp_path, 3600), TensorBoardSink(tmp_path, 3600)
    first.close()
    second.close()
    assert first.path != second.path and first.path.exists() and second.path.exists()


def test_a_summary_writer_opened_in_the_same_second_never_takes_the_sinks_file(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    sink = TensorBoardSink(tmp_path, 3600)
    sink.write(0, {"loss/train": 1.0})
    sink.close()
    writer = SummaryWriter(str(tmp_path))  # what the end-of-run dashboard does
    writer.add_scalar("markers/peak", 2.0, 5)
    writer.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    assert [Event.FromString(r[0]).step for r in records(sink.path)] == [0, 0]
