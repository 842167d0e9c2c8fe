"""What TensorBoard shows beyond the raw scalars: theory overlay, Custom Scalars layout, verdict.

Before training `start` writes the reference trajectory under `theory/<tag>` (same tag names
as the run, so one chart overlays theory and run) and a Custom Scalars layout, so TensorBoard
opens on charts that tell the story. After training `finish` adds the analysis as text, the
analysed steps as single-point marker series `markers/<event>` (valued at the excess loss, so
they sit on the loss curve), and the report figure as an image.
"""
from __future__ import annotations

import contextlib
import csv
import pathlib
import re
import struct
from typing import Iterable

from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import custom_scalars

from . import analysis

THEORY = "theory/"
MARKERS = "markers/"


def _tags(*names: str) -> list[str]:
    """Exact-match regexes (the plugin uses re.match: without `$`, loss/train matches loss/train_x)."""
    return [f"^{re.escape(name)}$" for name in names]


def _with_theory(*names: str) -> list[str]:
    return _tags(*names, *(THEORY + n for n in names))


LAYOUT = {
    "stability": {
        "eta*sharpness, kappa and the limit 2": _tags(
            "stability/eta_sharpness", "stability/kappa", THEORY + "stability/limit",
            THEORY + "stability/kappa_limit"),
    },
    "loss": {
        "train loss and its terms": _tags("loss/train", "loss/excess", "loss/scale_term",
                                          "loss/direction_term", "loss/bias_term"),
        "excess loss with the analysed steps": _tags("loss/excess") + [f"^{MARKERS}"],
    },
    "theory vs run": {
        "excess loss": _with_theory("loss/excess"),
        "kappa": _with_theory("stability/kappa"),
        "alpha": _with_theory("param/alpha"),
        "||w||": _with_theory("norm/w"),
        "sin^2 (misalignment)": _with_theory("align/sin2"),
    },
    "geometry": {
        "norms": _tags("norm/w", "norm/w_sigma"),
        "alpha and beta": _tags("param/alpha", "param/beta"),
        "alignment": _tags("align/cos", "align/sin2"),
        "effective lr eta/||w||^2": _tags("lr/effective"),
    },
}


def layout() -> dict:
    """{category: {title: ["Multiline", [tag regexes]]}}, the form add_custom_scalars takes."""
    return {cat: {title: ["Multiline", tags] for title, tags in charts.items()}
            for cat, charts in LAYOUT.items()}


def start(sink, reference: pathlib.Path | None, logged_steps: Iterable[int]) -> None:
    """Theory scalars at the steps the run will log (increasing), plus the layout; written
    before step 0.

    `sink` is the run's TensorBoardSink: one event per step, one writer per run directory.
    `reference`: the run's theory.csv (every step), read row by row as the steps go, so a long
    run never holds its reference in memory; None when the theory does not model the run.
    """
    sink.add_summary(custom_scalars(layout()))
    with open(reference, newline="") if reference else contextlib.nullcontext([]) as fh:
        rows = csv.reader(fh)
        tags = [THEORY + tag for tag in next(rows, ["step"])[1:]]
        for step in logged_steps:
            row = next((dict(zip(tags, map(float, cells[1:]))) for cells in rows if int(cells[0]) == step), {})
            row[THEORY + "stability/limit"] = analysis.LIMIT
            sink.write(step, row)
    sink.flush()


def finish(run_dir: pathlib.Path, summary: dict, run: tuple[dict, dict, dict]) -> None:
    """The verdict into TensorBoard: analysis table as text, marker points, report figure.
    `run`: analysis.load_run's series (or `analysis.thin` of them), which `summary` analyses."""
    from . import report  # matplotlib: loaded at the end of a run, not held while it trains

    measured = run[0]
    path, _ = report.write(run_dir, summary, run)
    writer = SummaryWriter(log_dir=str(run_dir))  # the training writer is closed: one at a time
    try:
        writer.add_text("analysis", analysis.table(summary))
        curve = "loss/excess" if "loss/excess" in measured else "loss/train"  # logistic: no R*
        for name, step in analysis.events(summary).items():
            writer.add_scalar(MARKERS + name, analysis.value_at(measured, curve, step), step)
        writer.file_writer.add_summary(_image("report", path.read_bytes()))
    finally:
        writer.close()


def _image(tag: str, png: bytes) -> Summary:
    """An image summary holding the PNG file's bytes as they are: what add_image writes after
    decoding the file to floats and encoding it again (tens of MB for a report figure)."""
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk, first in every PNG
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[png[25]]  # PNG colour type: grey, RGB, grey + alpha, RGBA
    image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=png)
    return Summary(value=[Summary.Value(tag=tag, image=image)])
