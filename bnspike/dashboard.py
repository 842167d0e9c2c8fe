"""What TensorBoard shows beyond the raw scalars: theory overlay, Custom Scalars layout, verdict.

Before training `start` writes the reference trajectory under `theory/<tag>` (same tag names
as the run, so one chart overlays theory and run) and a Custom Scalars layout, so TensorBoard
opens on charts that tell the story. After training `finish` adds the analysis as text, the
analysed steps as single-point marker series `markers/<event>` (valued at the excess loss, so
they sit on the loss curve), and the report figure as an image.
"""
from __future__ import annotations

import pathlib
import re
import struct
from typing import Iterable

import numpy as np
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


def start(sink, reference: Iterable[dict[str, np.ndarray]], logged_steps: Iterable[int]) -> None:
    """Theory scalars at the steps the run will log, plus the layout; written before step 0.

    `sink` is the run's TensorBoardSink: one event per step, one writer per run directory.
    `reference`: the theory's map in chunks of consecutive steps from step 0
    (theory.reference_chunks; none when the theory does not model the run), consumed to the
    end as it comes, so a long run never holds it whole. `logged_steps`: increasing.
    """
    sink.add_summary(custom_scalars(layout()))
    steps = iter(logged_steps)
    step = next(steps, None)
    for chunk in reference:
        first, size = int(chunk["step"][0]), len(chunk["step"])
        # Python floats once per tag: indexing numpy arrays element by element costs ~10x more.
        columns = {THEORY + tag: values.tolist() for tag, values in chunk.items() if tag != "step"}
        while step is not None and step < first + size:
            row = {tag: values[step - first] for tag, values in columns.items()}
            row[THEORY + "stability/limit"] = analysis.LIMIT
            sink.write(step, row)
            step = next(steps, None)
    while step is not None:  # no theory: the limit alone
        sink.write(step, {THEORY + "stability/limit": analysis.LIMIT})
        step = next(steps, None)
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
