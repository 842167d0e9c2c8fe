"""Where scalars go: TensorBoard events, metrics.csv, and a progress display.

Both file sinks are batched: a logged step costs about a microsecond on the training thread
(the row is kept as it is), and the rows are encoded together, numpy-vectorised, when they
are flushed: by the first write after `log.flush_secs` seconds (2 s), every FLUSH_ROWS rows
(so the buffer stays small), at every checkpoint and at close. A running TensorBoard shows the
curve while it develops, and a killed run loses at most about one flush interval.

TensorBoard: one event file per run (two writers on one directory interleave into a zig-zag,
and TensorBoard's Python loader stops reading a file once a newer one appears). Each logged
step is ONE event holding every tag: the standard encoding that SummaryWriter would produce,
byte for byte, written here by hand because SummaryWriter encodes each event with protobuf and
checksums every byte in pure Python (about 0.5 ms per 17-tag step, more than the training
step itself). Rows with the same tags and the same step-number width are one numpy record
array: fixed bytes per tag, the float32 values, then TFRecord framing, whose CRC-32C is linear,
so a batch's checksums are one table lookup and XOR reduction.
metrics.csv keeps full float64 precision (TensorBoard stores float32).
"""
from __future__ import annotations

import array
import csv
import itertools
import math
import os
import pathlib
import socket
import struct
import sys
import time

import numpy as np
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary

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
    the standard start 0xFFFFFFFF. Tables grow on demand to the longest record seen, up to
    LONG bytes (1 KiB of table per byte); a longer record (the report image, a layout) is rare
    and takes the byte-at-a-time loop.
    """

    CHUNK = 256  # records per numpy pass: bounds the temporary index arrays (~13 bytes per input byte)
    LONG = 4096

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

    def masked_rows(self, data: np.ndarray) -> np.ndarray:
        """Masked CRC-32C of each row of a (k, length) uint8 array (records of one length)."""
        k, length = data.shape
        if length == 0:
            crc = np.zeros(k, dtype=np.uint64)
        else:
            if length >= len(self.S):
                self._grow(length)
            out = np.empty(k, dtype=np.uint32)
            rows = np.arange(length - 1, -1, -1, dtype=np.intp) * 256  # S[L-1-i][data[i]] as one flat gather
            for start in range(0, k, self.CHUNK):
                terms = np.take(self.S.ravel(), data[start:start + self.CHUNK] + rows)
                out[start:start + self.CHUNK] = np.bitwise_xor.reduce(terms, axis=1) ^ self.Z[length] ^ np.uint32(0xFFFFFFFF)
            crc = out.astype(np.uint64)
        return _mask(crc).astype(np.uint32)

    def masked(self, records: list[bytes]) -> list[int]:
        """TFRecord's masked CRC-32C of each record."""
        out = np.empty(len(records), dtype=np.uint32)
        by_length: dict[int, list[int]] = {}
        for i, r in enumerate(records):
            if len(r) > self.LONG:
                out[i] = self._masked_one(r)
            else:
                by_length.setdefault(len(r), []).append(i)
        for length, idx in by_length.items():
            data = np.frombuffer(b"".join(records[i] for i in idx), dtype=np.uint8).reshape(len(idx), length)
            out[idx] = self.masked_rows(data)
        return out.tolist()

    def _masked_one(self, record: bytes) -> int:
        """One long record, byte by byte (the register update of the class docstring)."""
        table, r = self.T.tolist(), 0xFFFFFFFF
        for b in record:
            r = (r >> 8) ^ table[(r ^ b) & 255]
        return _mask(r ^ 0xFFFFFFFF)


def _mask(crc):
    """TFRecord's CRC mask (rotate right by 15, add a constant), on 32-bit values held in wider
    integers: a Python int or a uint64 array."""
    return ((crc >> 15) | (crc << 17)) + 0xA282EAD8 & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_LENGTH, _CRC = struct.Struct("<Q"), struct.Struct("<I")


def _varint_bytes(steps: np.ndarray, width: int) -> np.ndarray:
    """(k, width) uint8: the protobuf varints of `steps`, all `width` bytes long."""
    shifts = np.arange(width, dtype=np.uint64) * np.uint64(7)
    out = ((steps.astype(np.uint64)[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
    out[:, :-1] |= 0x80
    return out


def _width(step: int) -> int:
    """Bytes of the step field's varint; 0 for step 0 (proto3 leaves a zero field out)."""
    return (step.bit_length() + 6) // 7 if step else 0


class _Rows:
    """Rows (step, wall time, {tag: value}) kept as they come and written together.

    The training thread only appends; `flush` encodes what is pending and writes it. It runs
    on the first append after `flush_secs` seconds, at FLUSH_ROWS pending rows, and when called
    (checkpoints, close), so memory stays bounded whatever the interval is.
    """

    def __init__(self, flush_secs: float):
        self.pending: list = []
        self.flush_secs, self.last_flush = flush_secs, time.monotonic()

    def _append(self, item) -> None:
        self.pending.append(item)
        if len(self.pending) >= FLUSH_ROWS or time.monotonic() - self.last_flush >= self.flush_secs:
            self.flush()

    def flush(self) -> None:
        if self.pending and not self.file.closed:
            self.file.write(self._encode(self.pending))
            self.pending = []
        if not self.file.closed:
            self.file.flush()
        self.last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()
        self.file.close()


_FILE_NUMBERS = itertools.count()  # this process's event files, in the order they are opened


class TensorBoardSink(_Rows):
    def __init__(self, run_dir: pathlib.Path, flush_secs: float, purge_step: int | None = None):
        super().__init__(flush_secs)
        if purge_step is not None:
            # Resume: readers drop the older files' events from purge_step on, so replayed steps
            # never show twice (no zig-zag). They read files in name order, and a name starts
            # with its creation second: start a new second so this file sorts after the old ones.
            old = [int(p.name.split(".")[3]) for p in run_dir.glob("events.out.tfevents.*")]
            time.sleep(max(0.0, max(old, default=0) + 1 - time.time()))
        # SummaryWriter's naming, but the file number zero-padded: readers take files in name
        # order, and an unpadded 10 would sort before a 9 opened in the same second (in-process sweeps)
        name = "events.out.tfevents.%010d.%s.%s.%06d" % (time.time(), socket.gethostname(), os.getpid(),
                                                         next(_FILE_NUMBERS))
        self.path = pathlib.Path(run_dir) / name
        self.file = open(self.path, "xb")  # "x": never overwrite
        self.crc = _CRC32C()
        self.layouts: dict[tuple, tuple[np.dtype, list[bytes]]] = {}
        self._append(Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
        if purge_step is not None:  # what SummaryWriter(purge_step=...) writes
            self._append(Event(wall_time=time.time(), step=purge_step, file_version="brain.Event:2").SerializeToString())
            self._append(Event(wall_time=time.time(), step=purge_step,
                               session_log=SessionLog(status=SessionLog.START)).SerializeToString())
        self.flush()

    def add_summary(self, summary: Summary, step: int | None = None) -> None:
        """Any other summary (a Custom Scalars layout, text ...), in order with the scalars;
        SummaryWriter's FileWriter.add_summary, in this run's one event file."""
        event = Event(wall_time=time.time(), summary=summary)
        if step is not None:
            event.step = step
        self._append(event.SerializeToString())

    def write(self, step: int, row: dict[str, float]) -> None:
        """Exactly Event(wall_time, step, summary=Summary(value=[Value(tag, simple_value)...]))."""
        self._append((step, time.time(), row))

    def _encode(self, pending: list) -> bytes:
        """Pending events (serialized bytes, or scalar rows) as TFRecords, in order."""
        out, i = [], 0
        while i < len(pending):
            item = pending[i]
            if isinstance(item, bytes):
                j = i + 1
                while j < len(pending) and isinstance(pending[j], bytes):
                    j += 1
                out.append(self._frame(pending[i:j]))
            else:  # a run of rows with the same tags and step width: one record array
                tags, width = tuple(item[2]), _width(item[0])
                j = i + 1
                while j < len(pending) and not isinstance(pending[j], bytes) and \
                        _width(pending[j][0]) == width and tuple(pending[j][2]) == tags:
                    j += 1
                out.append(self._scalar_records(pending[i:j], tags, width))
            i = j
        return b"".join(out)

    def _frame(self, events: list[bytes]) -> bytes:
        """TFRecords: length, its masked CRC, the data, its masked CRC."""
        heads = [_LENGTH.pack(len(e)) for e in events]
        crcs = self.crc.masked(heads + events)
        k = len(heads)
        return b"".join(h + _CRC.pack(hc) + e + _CRC.pack(ec) for h, hc, e, ec in zip(heads, crcs[:k], events, crcs[k:]))

    def _layout(self, tags: tuple) -> tuple[np.dtype, list[bytes]]:
        """The record layout of a Summary of these tags: fixed bytes per tag, then its float32."""
        prefixes = []
        for tag in tags:
            t = tag.encode()
            value = b"\x0a" + _varint(len(t)) + t + b"\x15"  # Value.tag, then simple_value's key
            prefixes.append(b"\x0a" + _varint(len(value) + 4) + value)  # Summary.value
        fields = [x for j, p in enumerate(prefixes) for x in ((f"p{j}", np.uint8, len(p)), (f"v{j}", "<f4"))]
        self.layouts[tags] = layout = (np.dtype(fields), prefixes)
        return layout

    def _scalar_records(self, rows: list, tags: tuple, width: int) -> bytes:
        body_type, prefixes = self.layouts.get(tags) or self._layout(tags)
        k, m = len(rows), len(tags)
        body = np.zeros(k, body_type)
        with np.errstate(over="ignore"):  # beyond float32 range: +-inf, as protobuf stores it
            values = np.array([list(r[2].values()) for r in rows], dtype=np.float64).reshape(k, m).astype(np.float32)
        for j, p in enumerate(prefixes):
            body[f"p{j}"] = np.frombuffer(p, np.uint8)
            body[f"v{j}"] = values[:, j]
        summary = b"\x2a" + _varint(body_type.itemsize)  # Event.summary
        event_type = np.dtype([("wall_key", np.uint8), ("wall", "<f8"), ("step_key", np.uint8, int(width > 0)),
                               ("step", np.uint8, width), ("summary_key", np.uint8, len(summary)), ("body", body_type)])
        event = np.zeros(k, event_type)
        event["wall_key"] = 0x09  # Event.wall_time
        event["wall"] = [r[1] for r in rows]
        if width:
            event["step_key"] = 0x10  # Event.step
            event["step"] = _varint_bytes(np.array([r[0] for r in rows], dtype=np.uint64), width)
        event["summary_key"] = np.frombuffer(summary, np.uint8)
        event["body"] = body
        size = event_type.itemsize
        data = event.view(np.uint8).reshape(k, size)
        head = _LENGTH.pack(size)
        record = np.zeros(k, [("length", "<u8"), ("length_crc", "<u4"), ("data", np.uint8, size), ("data_crc", "<u4")])
        record["length"] = size
        record["length_crc"] = self.crc.masked([head])[0]
        record["data"] = data
        record["data_crc"] = self.crc.masked_rows(data)
        return record.tobytes()


class CSVSink(_Rows):
    def __init__(self, run_dir: pathlib.Path, flush_secs: float, append: bool = False):
        super().__init__(flush_secs)
        self.path = run_dir / METRICS
        self.columns: tuple[str, ...] | None = None
        if append:  # a resumed run continues, under its header, the file the checkpoint truncated
            with open(self.path) as f:
                self.columns = tuple(f.readline().rstrip("\n").split(",")[1:]) or None
        self.file = open(self.path, "a" if append else "x", newline="")  # "x": never overwrite

    def write(self, step: int, row: dict[str, float]) -> None:
        if self.columns is None:
            self.columns = tuple(row)
            self.file.write(",".join(("step",) + self.columns) + "\n")
        elif tuple(row) != self.columns and not row.keys() <= set(self.columns):
            raise ValueError(f"{self.path}: step {step} has new metric(s) "
                             f"{sorted(row.keys() - set(self.columns))} that were not logged "
                             "at the first step; a probe must return the same names")
        self._append((step, row))

    def _encode(self, pending: list) -> str:
        # repr(float) round-trips exactly; a metric skipped this step is an empty cell
        columns = self.columns
        return "".join(f"{step},{','.join(map(repr, row.values()))}\n" if tuple(row) == columns else
                       f"{step}," + ",".join(repr(row[c]) if c in row else "" for c in columns) + "\n"
                       for step, row in pending)


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
