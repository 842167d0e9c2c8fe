"""Where scalars go: TensorBoard events, metrics.csv, and a progress display.

Both file sinks are batched: a logged step costs a few microseconds on the training thread.
TensorBoard events are encoded and appended to a buffer that a timer thread frames and writes
every `log.flush_secs` seconds (the training thread does it itself every FLUSH_ROWS steps, so
the buffer stays small, and on close); metrics.csv rows go through the file's own buffer and
are flushed by the first write after `log.flush_secs`. A running TensorBoard shows the curve
while it develops, and a killed run loses at most about one flush interval.

TensorBoard: one event file per run (two writers on one directory interleave into a zig-zag,
and TensorBoard's Python loader stops reading a file once a newer one appears). Each logged
step is ONE event holding every tag: the standard encoding that SummaryWriter would produce,
written here by hand because SummaryWriter's record framing checksums every byte in pure
Python (about 0.5 ms per 17-tag step, more than the training step itself). CRC-32C is linear,
so the checksums of a whole batch of records are one numpy table lookup and XOR reduction.
metrics.csv keeps full float64 precision (TensorBoard stores float32).
"""
from __future__ import annotations

import array
import csv
import math
import os
import pathlib
import socket
import struct
import sys
import threading
import time

import numpy as np
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer import event_file_writer

METRICS = "metrics.csv"
FLUSH_ROWS = 4096  # bounds the buffered steps, hence memory, whatever flush_secs is


# ---------------------------------------------------------------- TFRecord framing

_POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected, as TFRecord uses


def _byte_table() -> np.ndarray:
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(_POLY), t >> 1).astype(np.uint32)
    return t


class _CRC32C:
    """Masked CRC-32C of many byte strings at once.

    With register r, one byte b updates r -> (r >> 8) ^ T[(r ^ b) & 255]: linear over GF(2).
    So crc(data) = Z[L] ^ XOR_i S[L-1-i][data[i]] ^ 0xFFFFFFFF, where S[k][b] is the register
    after byte b then k zero bytes from r = 0, and Z[L] the register after L zero bytes from
    the standard start 0xFFFFFFFF. Tables grow on demand to the longest record seen.
    """

    CHUNK = 256  # records per numpy pass: bounds the temporary index arrays (~13 bytes per input byte)

    def __init__(self):
        self.T = _byte_table()
        self.S = self.T[None, :].copy()  # S[k]: rows for k = 0 .. len-1
        self.Z = np.array([0xFFFFFFFF], dtype=np.uint32)  # Z[L] for L = 0 .. len-1

    def _grow(self, length: int) -> None:
        S, Z = [self.S], [self.Z]
        s, z, have = self.S[-1], self.Z[-1:], len(self.S)
        for _ in range(have, length + 1):
            s = (s >> 8) ^ self.T[s & 255]
            z = (z >> 8) ^ self.T[z & 255]
            S.append(s[None, :])
            Z.append(z)
        self.S, self.Z = np.concatenate(S), np.concatenate(Z)

    def masked(self, records: list[bytes]) -> list[int]:
        """TFRecord's masked CRC-32C of each record."""
        out = []
        for start in range(0, len(records), self.CHUNK):
            out += self._masked(records[start:start + self.CHUNK])
        return out

    def _masked(self, records: list[bytes]) -> list[int]:
        out = np.empty(len(records), dtype=np.uint32)
        by_length: dict[int, list[int]] = {}
        for i, r in enumerate(records):
            by_length.setdefault(len(r), []).append(i)
        longest = max(by_length)
        if longest >= len(self.S):
            self._grow(longest)
        for length, idx in by_length.items():
            if length == 0:
                out[idx] = 0
                continue
            data = np.frombuffer(b"".join(records[i] for i in idx), dtype=np.uint8).reshape(len(idx), length)
            # S[L-1-i][data[i]] as one flat gather
            rows = np.arange(length - 1, -1, -1, dtype=np.intp) * 256
            terms = np.take(self.S.ravel(), data + rows)
            out[idx] = np.bitwise_xor.reduce(terms, axis=1) ^ self.Z[length] ^ np.uint32(0xFFFFFFFF)
        crc = out.astype(np.uint64)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8 & 0xFFFFFFFF).tolist()


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_DOUBLE, _LENGTH, _CRC = struct.Struct("<d"), struct.Struct("<Q"), struct.Struct("<I")


class TensorBoardSink:
    def __init__(self, run_dir: pathlib.Path, flush_secs: float, purge_step: int | None = None):
        if purge_step is not None:
            # Resume: readers drop the older files' events from purge_step on, so replayed steps
            # never show twice (no zig-zag). They read files in name order, and a name starts
            # with its creation second: start a new second so this file sorts after the old ones.
            old = [int(p.name.split(".")[3]) for p in run_dir.glob("events.out.tfevents.*")]
            time.sleep(max(0.0, max(old, default=0) + 1 - time.time()))
        # SummaryWriter's naming, numbered from ITS counter: a SummaryWriter opened later in this
        # process and second (the end-of-run dashboard) gets the next number, never this name
        name = "events.out.tfevents.%010d.%s.%s.%d" % (time.time(), socket.gethostname(), os.getpid(),
                                                       event_file_writer._global_uid.get())
        self.path = pathlib.Path(run_dir) / name
        self.file = open(self.path, "xb")  # "x": never overwrite
        self.crc = _CRC32C()
        self.pending: list[bytes] = []  # serialized events not yet framed and written
        self.lock = threading.Lock()  # the timer thread and the training thread share `pending`
        self.layouts: dict[tuple, tuple[struct.Struct, list]] = {}
        self._append(Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        if purge_step is not None:  # what SummaryWriter(purge_step=...) writes
            self._append(Event(wall_time=time.time(), step=purge_step, file_version="brain.Event:2").SerializeToString())
            self._append(Event(wall_time=time.time(), step=purge_step,
                               session_log=SessionLog(status=SessionLog.START)).SerializeToString())
        self.flush()
        self.stop = threading.Event()
        self.timer = threading.Thread(target=self._flush_every, args=(flush_secs,), daemon=True,
                                      name=f"bnspike events {name}")
        self.timer.start()

    def _flush_every(self, seconds: float) -> None:
        while not self.stop.wait(seconds):
            self.flush()

    def add_summary(self, summary: Summary, step: int | None = None) -> None:
        """Any other summary (a Custom Scalars layout, text ...), in order with the scalars;
        SummaryWriter's FileWriter.add_summary, in this run's one event file."""
        event = Event(wall_time=time.time(), summary=summary)
        if step is not None:
            event.step = step
        self._append(event.SerializeToString())

    def _append(self, event: bytes) -> None:
        with self.lock:
            self.pending.append(event)
            full = len(self.pending) >= FLUSH_ROWS
        if full:
            self.flush()

    def _layout(self, tags: tuple) -> tuple[struct.Struct, list]:
        """The Summary of these tags as one struct: fixed bytes per tag, then its float32."""
        prefixes = []
        for tag in tags:
            t = tag.encode()
            value = b"\x0a" + _varint(len(t)) + t + b"\x15"  # Value.tag, then simple_value's key
            prefixes.append(b"\x0a" + _varint(len(value) + 4) + value)  # Summary.value
        fmt = struct.Struct("<" + "".join(f"{len(p)}sf" for p in prefixes))
        self.layouts[tags] = layout = (fmt, [x for p in prefixes for x in (p, 0.0)])
        return layout

    def write(self, step: int, row: dict[str, float]) -> None:
        """Exactly Event(wall_time, step, summary=Summary(value=[Value(tag, simple_value)...]))."""
        fmt, args = self.layouts.get(tuple(row)) or self._layout(tuple(row))
        args[1::2] = row.values()
        try:
            body = fmt.pack(*args)
        except OverflowError:  # beyond float32 range: stored as +-inf, as protobuf does
            with np.errstate(over="ignore"):
                args[1::2] = np.asarray(args[1::2], dtype=np.float32).tolist()
            body = fmt.pack(*args)
        head = b"\x09" + _DOUBLE.pack(time.time()) + (b"\x10" + _varint(step) if step else b"")
        self._append(head + b"\x2a" + _varint(len(body)) + body)

    def flush(self) -> None:
        """Frame the pending events as TFRecords (length, its CRC, data, its CRC) and write them."""
        with self.lock:
            if self.file.closed:
                return
            if self.pending:
                heads = [_LENGTH.pack(len(e)) for e in self.pending]
                crcs = self.crc.masked(heads + self.pending)
                k = len(heads)
                self.file.write(b"".join(h + _CRC.pack(hc) + e + _CRC.pack(ec) for h, hc, e, ec
                                         in zip(heads, crcs[:k], self.pending, crcs[k:])))
                self.pending.clear()
            self.file.flush()

    def close(self) -> None:
        self.stop.set()
        self.timer.join()
        self.flush()
        self.file.close()


class CSVSink:
    def __init__(self, run_dir: pathlib.Path, flush_secs: float, append: bool = False):
        self.path = run_dir / METRICS
        self.columns: tuple[str, ...] | None = None
        if append:  # a resumed run continues, under its header, the file the checkpoint truncated
            with open(self.path) as f:
                self.columns = tuple(f.readline().rstrip("\n").split(",")[1:]) or None
        self.file = open(self.path, "a" if append else "x", newline="")  # "x": never overwrite
        self.flush_secs, self.last_flush = flush_secs, time.monotonic()

    def write(self, step: int, row: dict[str, float]) -> None:
        if self.columns is None:
            self.columns = tuple(row)
            self.file.write(",".join(("step",) + self.columns) + "\n")
        # repr(float) round-trips exactly
        if tuple(row) == self.columns:
            self.file.write(f"{step},{','.join(map(repr, row.values()))}\n")
        else:
            if not row.keys() <= set(self.columns):
                raise ValueError(f"{self.path}: step {step} has new metric(s) "
                                 f"{sorted(row.keys() - set(self.columns))} that were not logged "
                                 "at the first step; a probe must return the same names")
            # a metric skipped this step is an empty cell
            self.file.write(f"{step}," + ",".join(repr(row[c]) if c in row else "" for c in self.columns) + "\n")
        now = time.monotonic()
        if now - self.last_flush >= self.flush_secs:
            self.flush()

    def flush(self) -> None:
        self.file.flush()
        self.last_flush = time.monotonic()

    def close(self) -> None:
        self.file.close()


def read_metrics(path: str | pathlib.Path, columns: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """metrics.csv (or theory.csv) -> {column: float64 values}; empty cells are NaN; a torn last
    line (killed run) is dropped. `columns`: only these (those the file has), in the file's order.

    Streams the file into one growing array of doubles per column: memory holds 8 bytes per
    value read, never the text of a long run nor a Python float per value.
    """
    with open(path, newline="") as fh:
        complete = (line for line in fh if line.endswith("\n"))  # a torn line can only be the last
        rows = csv.reader(complete)
        header = next(rows, None)
        if header is None:
            return {}
        wanted = [(i, name) for i, name in enumerate(header) if columns is None or name in columns]
        values = {name: array.array("d") for _, name in wanted}
        for r in rows:
            for i, name in wanted:
                values[name].append(float(r[i]) if r[i] else math.nan)
    return {name: np.frombuffer(v, dtype=np.float64) if v else np.empty(0) for name, v in values.items()}


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
