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

import matplotlib.image
import numpy as np
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import custom_scalars

from . import analysis, report

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


def start(sink, reference: dict[str, np.ndarray], logged_steps: list[int]) -> None:
    """Theory scalars at the steps the run will log, plus the layout; written before step 0.

    `sink` is the run's TensorBoardSink: one event per step, one writer per run directory.
    """
    sink.add_summary(custom_scalars(layout()))
    # Python floats once per tag: indexing numpy arrays element by element costs ~10x more.
    columns = {THEORY + tag: values.tolist() for tag, values in reference.items() if tag != "step"}
    for step in logged_steps:
        row = {tag: values[step] for tag, values in columns.items()}
        row[THEORY + "stability/limit"] = analysis.LIMIT
        sink.write(step, row)
    sink.flush()


def finish(run_dir: pathlib.Path, summary: dict) -> None:
    """The verdict into TensorBoard: analysis table as text, marker points, report figure."""
    measured, _, _ = analysis.load_run(run_dir)
    index = {int(s): i for i, s in enumerate(measured["step"])}
    path, _ = report.write(run_dir, summary)  # reuses the analysis: no second summarize
    writer = SummaryWriter(log_dir=str(run_dir))  # the training writer is closed: one at a time
    try:
        writer.add_text("analysis", analysis.table(summary))
        curve = "loss/excess" if "loss/excess" in measured else "loss/train"  # logistic: no R*
        for name, step in analysis.events(summary).items():
            writer.add_scalar(MARKERS + name, float(measured[curve][index[step]]), step)
        writer.add_image("report", matplotlib.image.imread(path), dataformats="HWC")
    finally:
        writer.close()
