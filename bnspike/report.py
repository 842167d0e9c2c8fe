"""`bnspike report RUN_DIR`: one multi-panel PNG that explains the run (matplotlib Agg, no display).

Panels: excess loss (log axis) with the theory overlay and the analysed steps marked; the
stability quantities against the limit 2; the misalignment sin^2 (log axis) leaving its
round-off floor; the norm and the scale alpha. Solid lines are the run, dashed the reference
trajectory of theory.py; a vertical line marks the crossing in every panel.
"""
from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, none opened
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import analysis  # noqa: E402

FILE = "report.png"
# event -> (series it is drawn on, symbol, colour)
MARKER_STYLE = {"directional_onset": ("align/sin2", "v", "tab:purple"),
                "rising_edge": ("loss/excess", "^", "tab:orange"), "peak": ("loss/excess", "*", "tab:red"),
                "recovery": ("loss/excess", "o", "tab:green")}


def _plot(ax, measured, reference, tag, label, log=False):
    if tag in measured:
        ax.plot(measured["step"], measured[tag], lw=1.4, label=f"{label} (run)")
    if tag in reference:
        ax.plot(reference["step"], reference[tag], "--", lw=1.0, label=f"{label} (theory)")
    if log:
        ax.set_yscale("log")


def figure(run_dir: pathlib.Path, summary: dict | None = None, run: tuple | None = None):
    """(figure, markers): markers maps each analysed event to the (step, value) drawn for it.

    `run` (analysis.load_run's series, or `analysis.thin` of them) and `summary` (their
    analysis): what the caller already has (the end of training does); read and analysed here
    otherwise.
    """
    run = run or analysis.load_run(run_dir)
    summary = summary or analysis.summarize(run)
    measured, reference, prediction = analysis.thin(run, summary)
    story = summary["measured"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.07, top=0.91, wspace=0.15, hspace=0.18)
    (ax_loss, ax_stab), (ax_dir, ax_geo) = axes

    if "loss/excess" in measured:
        _plot(ax_loss, measured, reference, "loss/excess", "excess loss R - R*", log=True)
        ax_loss.set_title("loss: excess over the least-squares floor")
    else:  # logistic loss: no finite minimiser, no floor
        _plot(ax_loss, measured, reference, "loss/train", "train loss", log=True)
        ax_loss.set_title("loss")
    direction = analysis.direction_tag(measured)
    _plot(ax_dir, measured, reference, direction, "sin^2 (misalignment)", log=True)
    ax_dir.set_title("direction: grows from round-off after the crossing")
    markers = {}
    events = analysis.events(summary)
    for name, (tag, symbol, color) in MARKER_STYLE.items():
        if name not in events:
            continue
        step = events[name]
        ax = ax_dir if tag == "align/sin2" else ax_loss
        tag = direction if tag == "align/sin2" else tag
        if tag not in measured:  # a spike without loss/excess: logistic runs
            continue
        line, = ax.plot([step], [analysis.value_at(measured, tag, step)], symbol, color=color, ms=10, label=f"{name} @ {step}")
        markers[name] = (float(line.get_xdata()[0]), float(line.get_ydata()[0]))

    for tag, label in (("stability/eta_sharpness", "eta * sharpness"), ("stability/kappa", "kappa")):
        _plot(ax_stab, measured, reference if tag == "stability/kappa" else {}, tag, label)
    ax_stab.axhline(analysis.LIMIT, color="k", lw=0.8, label="limit 2")
    ax_stab.set_title("stability: the threshold is crossed long before the spike")

    _plot(ax_geo, measured, reference, "norm/w", "||w||")
    _plot(ax_geo, measured, reference, "param/alpha", "alpha")
    ax_geo.set_title("geometry: alpha rises, ||w|| jumps at the spike")

    cross = events.get("crossing")
    if cross is not None:
        for ax in axes.flat:
            ax.axvline(cross, color="gray", ls=":", lw=1.0)
        line = ax_stab.axvline(cross, color="gray", ls=":", lw=1.0, label=f"crossing @ {cross}")
        markers["crossing"] = (float(line.get_xdata()[0]), analysis.LIMIT)
    for ax in axes.flat:
        if ax.get_legend_handles_labels()[0]:  # a panel can be empty (e.g. no alignment logged)
            ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("step")
    regime = prediction.get("regime", "-")
    fig.suptitle(f"{pathlib.Path(run_dir).name}: predicted {regime}, T_cross {prediction.get('T_cross', '-')}; "
                 f"measured {story['outcome']}, {story['spikes']} spike(s)")
    return fig, markers


def write(run_dir: pathlib.Path, summary: dict | None = None, run: tuple | None = None) -> tuple[pathlib.Path, dict]:
    """Draw the report of a finished run into RUN_DIR/report.png; returns (path, markers).
    `summary`, `run`: as for `figure`."""
    path = pathlib.Path(run_dir) / FILE
    with np.errstate(over="ignore"):  # a diverged run's log axis reaches 1e308: limits overflow harmlessly
        fig, markers = figure(run_dir, summary, run)
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, markers
