"""What TensorBoard shows beyond the raw scalars: theory overlay, Custom Scalars layout, verdict.

Before training `start` writes the reference trajectory under `theory/<tag>` (same tag names
as the run, so one chart overlays theory and run); with the first logged step, once the run's
tags are known, `add_layout` writes a Custom Scalars layout of the charts those tags fill, so
TensorBoard opens on charts that tell the story. After training `finish` adds the analysis as
text, the analysed steps as single-point marker series `markers/<event>` (valued at the loss
curve they are marked on, `marked_curve`), and the report figure as an image.
"""
from __future__ import annotations

import math
import pathlib
import re
import struct
from typing import Iterable

import numpy as np
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard.summary import custom_scalars, text

from . import analysis, theory
from .sinks import TensorBoardSink

THEORY = "theory/"
MARKERS = "markers/"
LIMIT_TAG = THEORY + "stability/limit"  # the limit 2, written with or without a theory


def marked_curve(tags) -> str:
    """The loss curve the analysed steps are marked on: the excess loss, or the train loss where
    the run has no R* (logistic)."""
    return "loss/excess" if "loss/excess" in tags else "loss/train"


def _versus(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A theory-vs-run chart: about the reference, which exists only where the theory models the run."""
    return (THEORY + name,), (name,)


def _charts(tags) -> dict:
    """{category: {title: (tags the chart is about, tags drawn with them)}}, every chart a run may get."""
    curve = marked_curve(tags)
    return {
        "stability": {
            "eta*sharpness, kappa and the limit 2": (
                ("stability/eta_sharpness", "stability/kappa"),
                (LIMIT_TAG, THEORY + "stability/kappa_limit")),
        },
        "loss": {
            "train loss and its terms": (("loss/train", "loss/excess", "loss/scale_term",
                                          "loss/direction_term", "loss/bias_term"), ()),
            f"{curve} with the analysed steps": ((curve,), (MARKERS,)),
        },
        "theory vs run": {
            "excess loss": _versus("loss/excess"),
            "kappa": _versus("stability/kappa"),
            "alpha": _versus("param/alpha"),
            "||w||": _versus("norm/w"),
            "sin^2 (misalignment)": _versus("align/sin2"),
        },
        "geometry": {
            "norms": (("norm/w", "norm/w_sigma"), ()),
            "alpha and beta": (("param/alpha", "param/beta"), ()),
            "alignment": (("align/cos", "align/sin2"), ()),
            "effective lr eta/||w||^2": (("lr/effective",), ()),
        },
        "margin": {  # logistic loss (probes.Margin)
            "minimum margin and train accuracy": (("margin/min", "train/accuracy"), ()),
            "alignment with the max-margin direction": (("align/cos_maxmargin", "align/sin2_maxmargin"), ()),
        },
    }


def _regex(name: str) -> str:
    """Exact match (the plugin uses re.match: without `$`, loss/train matches loss/train_x); the
    markers as a prefix: which steps get one is known only once the run is analysed."""
    return f"^{MARKERS}" if name == MARKERS else f"^{re.escape(name)}$"


def layout(tags) -> dict:
    """{category: {title: ["Multiline", [tag regexes]]}}, the form add_custom_scalars takes.

    `tags`: every scalar tag the run writes before its analysis (metrics.csv's columns and the
    theory/ ones). A chart is left out unless the run logs a tag it is about (the limit 2 alone
    tells nothing; a theory-vs-run chart is about the theory), and shows only the tags the run
    has; an empty category is left out.
    """
    tags = set(tags)
    out = {}
    for category, specs in _charts(tags).items():
        kept = {title: ["Multiline", [_regex(n) for n in about + drawn if n in tags or n == MARKERS]]
                for title, (about, drawn) in specs.items() if tags.intersection(about)}
        if kept:
            out[category] = kept
    return out


def add_layout(sink, columns, modelled: bool) -> None:
    """The Custom Scalars layout of the run whose metrics.csv has `columns`, into its TensorBoardSink;
    `modelled`: the theory's reference is overlaid (start wrote it)."""
    theory_tags = [THEORY + tag for tag in theory.TAGS] if modelled else []
    sink.add_summary(custom_scalars(layout([*columns, *theory_tags, LIMIT_TAG])))


def start(sink, reference: Iterable[dict[str, np.ndarray]], logged_steps: Iterable[int]) -> None:
    """Theory scalars at the steps the run will log; written before step 0.

    `sink` is the run's TensorBoardSink: one event per step, one writer per run directory.
    `reference`: the theory's map in chunks of consecutive steps from step 0
    (theory.reference_chunks; none when the theory does not model the run), consumed to the
    end as it comes, so a long run never holds it whole. `logged_steps`: increasing.
    """
    steps = iter(logged_steps)
    step = next(steps, None)
    for chunk in reference:
        first, size = int(chunk["step"][0]), len(chunk["step"])
        # Python floats once per tag: indexing numpy arrays element by element costs ~10x more.
        columns = {THEORY + tag: values.tolist() for tag, values in chunk.items() if tag != "step"}
        while step is not None and step < first + size:
            row = {tag: values[step - first] for tag, values in columns.items()}
            row[LIMIT_TAG] = analysis.LIMIT
            sink.write(step, row)
            step = next(steps, None)
    while step is not None:  # no theory: the limit alone
        sink.write(step, {LIMIT_TAG: analysis.LIMIT})
        step = next(steps, None)
    sink.flush()


def finish(run_dir: pathlib.Path, summary: dict, run: tuple[dict, dict, dict]) -> None:
    """The verdict into TensorBoard: analysis table as text, marker points, report figure.
    `run`: analysis.load_run's series (or `analysis.thin` of them), which `summary` analyses."""
    from . import report  # matplotlib: loaded at the end of a run, not held while it trains

    measured = run[0]
    path, _ = report.write(run_dir, summary, run)
    # one more event file, after the training one in name order (readers replay files in that order)
    sink = TensorBoardSink(run_dir, flush_secs=math.inf)
    try:
        sink.add_summary(text("analysis", analysis.table(summary)))
        curve = marked_curve(measured)
        for name, step in analysis.events(summary).items():
            value = analysis.value_at(measured, curve, step)
            sink.add_summary(Summary(value=[Summary.Value(tag=MARKERS + name, simple_value=value)]), step)
        sink.add_summary(_image("report", path.read_bytes()))
    finally:
        sink.close()


def _image(tag: str, png: bytes) -> Summary:
    """An image summary holding the PNG file's bytes as they are: what add_image writes after
    decoding the file to floats and encoding it again (tens of MB for a report figure)."""
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk, first in every PNG
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[png[25]]  # PNG colour type: grey, RGB, grey + alpha, RGBA
    image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=png)
    return Summary(value=[Summary.Value(tag=tag, image=image)])
