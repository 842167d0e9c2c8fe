"""Where scalars go: TensorBoard events, metrics.csv, and a progress display.

One writer per run directory (two writers on one directory interleave into a zig-zag). Each
logged step becomes ONE TensorBoard event holding every tag (the standard encoding, one
protobuf instead of fifteen), flushed every `log.flush_secs` seconds so a running TensorBoard
shows the curve while it develops. metrics.csv keeps full float64 precision (TensorBoard
stores float32) and is flushed on the same clock, so a killed run loses at most that much.
"""
from __future__ import annotations

import csv
import io
import math
import pathlib
import sys
import time

from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter

METRICS = "metrics.csv"


class TensorBoardSink:
    def __init__(self, run_dir: pathlib.Path, flush_secs: float, purge_step: int | None = None):
        if purge_step is not None:
            # Resume: readers drop the older files' events from purge_step on, so replayed steps
            # never show twice (no zig-zag). They read files in name order, and a name starts
            # with its creation second: start a new second so this file sorts after the old ones.
            old = [int(p.name.split(".")[3]) for p in run_dir.glob("events.out.tfevents.*")]
            time.sleep(max(0.0, max(old, default=0) + 1 - time.time()))
        self.writer = SummaryWriter(log_dir=str(run_dir), flush_secs=flush_secs, purge_step=purge_step)

    def write(self, step: int, row: dict[str, float]) -> None:
        values = [Summary.Value(tag=tag, simple_value=value) for tag, value in row.items()]
        self.writer.file_writer.add_summary(Summary(value=values), step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class CSVSink:
    def __init__(self, run_dir: pathlib.Path, flush_secs: float, append: bool = False):
        self.path = run_dir / METRICS
        self.columns: list[str] | None = None
        if append:  # a resumed run continues, under its header, the file the checkpoint truncated
            with open(self.path) as f:
                self.columns = f.readline().rstrip("\n").split(",")[1:] or None
        self.file = open(self.path, "a" if append else "x", newline="")  # "x": never overwrite
        self.flush_secs, self.last_flush = flush_secs, time.monotonic()

    def write(self, step: int, row: dict[str, float]) -> None:
        if self.columns is None:
            self.columns = list(row)
            self.file.write(",".join(["step"] + self.columns) + "\n")
        extra = row.keys() - set(self.columns)
        if extra:
            raise ValueError(f"{self.path}: step {step} has new metric(s) {sorted(extra)} that were "
                             "not logged at the first step; a probe must return the same names")
        # repr(float) round-trips exactly; a metric skipped this step is an empty cell
        cells = [repr(row[c]) if c in row else "" for c in self.columns]
        self.file.write(f"{step}," + ",".join(cells) + "\n")
        now = time.monotonic()
        if now - self.last_flush >= self.flush_secs:
            self.flush()

    def flush(self) -> None:
        self.file.flush()
        self.last_flush = time.monotonic()

    def close(self) -> None:
        self.file.close()


def read_metrics(path: str | pathlib.Path) -> dict[str, list[float]]:
    """metrics.csv -> {column: values}; empty cells are NaN; a torn last line (killed run) is dropped."""
    text = pathlib.Path(path).read_text()
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines = lines[:-1]  # the writer was killed mid-line
    rows = list(csv.reader(io.StringIO("\n".join(lines))))
    if not rows:
        return {}
    header, body = rows[0], rows[1:]
    return {name: [float(r[i]) if r[i] else math.nan for r in body] for i, name in enumerate(header)}


class Progress:
    """A tqdm bar on a terminal, a plain line every ~10% otherwise."""

    def __init__(self, total: int, mode: str, stream=sys.stderr, initial: int = 0):
        if mode == "auto":
            mode = "bar" if stream.isatty() else "lines"
        self.mode, self.total, self.stream = mode, total, stream
        self.every = max(1, total // 10)
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, file=stream, unit="step", dynamic_ncols=True)

    def update(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if step % 50 == 0:
                self.bar.set_postfix(loss=f"{loss:.3e}", refresh=False)
        elif self.mode == "lines" and (step % self.every == 0 or step == self.total - 1):
            print(f"step {step:>7}/{self.total}  loss {loss:.6e}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
