"""Spike analysis from logged series: what happened, at which step, and how it compares with theory.

Everything works on plain numpy series keyed by tag (plus "step"), so the same functions read a
run's metrics.csv and the theory's reference trajectory (theory.csv). Definitions (this
project's; the paper gives none in numbers):

- crossing: first logged step where the stability quantity reaches 2: `stability/eta_sharpness`
  when it was logged (the classical limit, any Sigma), else `stability/kappa` (equal near
  alignment for whitened data, mechanism.md section 3).
- directional onset: first step after the crossing where `align/sin2` (logistic runs:
  `align/sin2_maxmargin`) exceeds DIRECTION_FACTOR times its minimum since the crossing (the
  misalignment leaves its round-off floor).
- spike, on `loss/excess`: an excursion above SPIKE_RATIO times the running minimum. Its rising
  edge is the first step after that minimum (the loss stops falling), its peak the largest
  excess in the excursion, its height ratio peak / minimum, its recovery the first step after
  the peak where the excess is back at or below the minimum. The running minimum restarts after
  each recovery, so repeated spikes are counted separately.
- outcome: "unstable_from_start" (crossing at the first logged step), "delayed_onset" (a later
  crossing) or "no_rising_edge" (no crossing), the measured counterpart of theory's regime.
"""
from __future__ import annotations

import json
import math
import pathlib
from dataclasses import asdict, dataclass

import numpy as np

LIMIT = 2.0  # the classical stability limit eta * sharpness < 2
SPIKE_RATIO = 1.1  # an excursion counts as a spike when the excess rises 10% above its minimum
DIRECTION_FACTOR = 100.0
# Rises smaller than this fraction of the largest excess are round-off at the loss floor.
RESOLUTION = 1e-9
PLOT_POINTS = 4096  # per series drawn: a figure's panel is about 600 pixels wide

THEORY_CSV, THEORY_JSON = "theory.csv", "theory.json"
# Measured series compared with the reference trajectory up to the crossing.
TRACKED = ("loss/train", "param/alpha", "norm/w", "align/cos")
# The columns the analysis, the report figure and the dashboard read from a run's CSV files;
# the others stay on disk (8 bytes per value and column held: a long run's read stays small).
SERIES = ("step", "loss/train", "loss/excess", "stability/eta_sharpness", "stability/kappa",
          "stability/kappa_limit", "align/sin2", "align/sin2_maxmargin", "align/cos", "param/alpha",
          "norm/w")


@dataclass(frozen=True)
class Spike:
    rising_edge: int  # first step the excess rose above its running minimum
    peak: int
    height_ratio: float  # peak excess / the minimum before the spike
    floor: float  # that minimum
    recovery: int | None  # first step after the peak back at or below the floor


def first_step_at_or_above(steps: np.ndarray, values: np.ndarray, level: float) -> int | None:
    idx = np.flatnonzero(values >= level)
    return int(steps[idx[0]]) if idx.size else None


def crossing(series: dict[str, np.ndarray]) -> tuple[int | None, str | None]:
    """(first step at the stability limit, the tag it was read from)."""
    for tag in ("stability/eta_sharpness", "stability/kappa"):
        values = series.get(tag)
        if values is not None and np.isfinite(values).any():
            finite = np.isfinite(values)
            # the reference carries kappa's own limit 2/mu (= 2 when Sigma = I), theory.py
            level = series["stability/kappa_limit"][finite] if tag == "stability/kappa" and \
                "stability/kappa_limit" in series else LIMIT
            idx = np.flatnonzero(values[finite] >= level)
            return (int(series["step"][finite][idx[0]]) if idx.size else None), tag
    return None, None


def direction_tag(series: dict) -> str | None:
    """The logged direction error: to the least-squares direction, or (logistic) the max-margin one."""
    return next((t for t in ("align/sin2", "align/sin2_maxmargin") if t in series), None)


def directional_onset(steps: np.ndarray, sin2: np.ndarray, start: int) -> int | None:
    after = steps >= start
    s, v = steps[after], sin2[after]
    floor = np.minimum.accumulate(v)
    idx = np.flatnonzero(v > DIRECTION_FACTOR * floor)
    return int(s[idx[0]]) if idx.size else None


def spikes(steps: np.ndarray, excess: np.ndarray) -> list[Spike]:
    """Excursions of the excess loss above SPIKE_RATIO x its running minimum, in one pass."""
    found = []
    resolution = RESOLUTION * np.nanmax(np.abs(excess)) if excess.size else 0.0
    low, t, n = 0, 1, excess.size  # low: index of the running minimum
    while t < n:
        if excess[t] <= excess[low]:
            low = t
        elif excess[t] >= SPIKE_RATIO * excess[low] and excess[t] - excess[low] > resolution:
            end = t
            while end < n and excess[end] > excess[low]:
                end += 1
            peak = low + 1 + int(np.argmax(excess[low + 1:end]))
            found.append(Spike(
                rising_edge=int(steps[low + 1]), peak=int(steps[peak]),
                height_ratio=float(excess[peak] / excess[low]), floor=float(excess[low]),
                recovery=int(steps[end]) if end < n else None))
            low, t = end, end
        t += 1
    return found


def analyse(series: dict[str, np.ndarray]) -> dict:
    """The spike story of one set of series (a run's, or the theory's reference)."""
    steps = series["step"].astype(int)
    cross, source = crossing(series)
    out: dict = {"crossing": cross, "crossing_from": source}
    if cross is None:
        out["outcome"] = "no_rising_edge"
    else:
        out["outcome"] = "unstable_from_start" if cross == steps[0] else "delayed_onset"
    direction = direction_tag(series)
    if cross is not None and direction is not None:
        out["directional_onset"] = directional_onset(steps, series[direction], cross)
    found = spikes(steps, series["loss/excess"]) if "loss/excess" in series else []
    out["spikes"] = len(found)
    out["first_spike"] = asdict(found[0]) if found else None
    return out


def compare(measured: dict[str, np.ndarray], reference: dict[str, np.ndarray], until: int | None) -> dict:
    """Largest relative deviation of each tracked series from the reference, steps <= until."""
    steps, mi, ri = np.intersect1d(measured["step"], reference["step"], assume_unique=True, return_indices=True)
    if until is not None:
        mi, ri = mi[steps <= until], ri[steps <= until]
    if not mi.size:
        return {}
    out = {}
    for tag in TRACKED:
        if tag in measured and tag in reference:
            got, want = measured[tag][mi], reference[tag][ri]
            out[tag] = float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-300)))
    return out


def load_run(run_dir: pathlib.Path) -> tuple[dict, dict, dict]:
    """(measured series, reference series or {}, theory prediction or {}) of a run directory:
    the SERIES columns of metrics.csv and theory.csv, float64. The end of a run reads them once
    and hands them to `summarize`, the report and the dashboard."""
    from .sinks import METRICS, read_metrics  # sinks imports TensorBoard's protobufs: only when reading a run

    run_dir = pathlib.Path(run_dir)
    measured = read_metrics(run_dir / METRICS, SERIES)
    reference = read_metrics(run_dir / THEORY_CSV, SERIES) if (run_dir / THEORY_CSV).is_file() else {}
    prediction = json.loads((run_dir / THEORY_JSON).read_text()) if (run_dir / THEORY_JSON).is_file() else {}
    return measured, reference, prediction


def summarize(run: tuple[dict, dict, dict]) -> dict:
    """The analysis of a run as `load_run` returns it: measured story, reference story, prediction."""
    m, reference, prediction = run
    if not m or m["step"].size == 0:
        return {"logged_steps": 0}
    steps, loss = m["step"].astype(int), m["loss/train"]
    out = {"logged_steps": int(steps.size), "final_step": int(steps[-1]), "final_loss": float(loss[-1])}
    out["first_kappa_above_2"] = (first_step_at_or_above(steps, m["stability/kappa"], LIMIT)
                                  if "stability/kappa" in m else None)
    if "stability/eta_sharpness" in m and np.isfinite(m["stability/eta_sharpness"]).any():
        es = m["stability/eta_sharpness"]
        i = int(np.nanargmax(es))
        out["max_eta_sharpness"] = {"step": int(steps[i]), "value": float(es[i])}
    out["measured"] = analyse(m)
    if reference:
        out["reference"] = analyse(reference)
        out["reference_max_rel_dev_to_crossing"] = compare(m, reference, out["measured"]["crossing"])
    if prediction:
        out["predicted"] = {k: prediction.get(k) for k in ("regime", "T_cross", "onset_estimate")}
    return out


def extremes(values: np.ndarray, points: int = PLOT_POINTS) -> np.ndarray:
    """Indices of at most `points` samples that draw like the whole series: of each block of
    consecutive samples, its smallest and largest value, in order (NaN where the whole block
    has no value)."""
    if values.size <= points:
        return np.arange(values.size)
    per = -(-values.size // (points // 2))  # samples per block
    blocks = np.concatenate([values, np.full(-values.size % per, np.nan)]).reshape(-1, per)
    nan = np.isnan(blocks)
    low, high = np.argmin(np.where(nan, np.inf, blocks), axis=1), np.argmax(np.where(nan, -np.inf, blocks), axis=1)
    return (np.arange(len(blocks))[:, None] * per + np.sort(np.stack([low, high], axis=1), axis=1)).ravel()


def thin(run: tuple[dict, dict, dict], summary: dict, points: int = PLOT_POINTS) -> tuple[dict, dict, dict]:
    """The run (as `load_run` returns it) at the steps a figure of it needs: every series' block
    `extremes` and the analysed events' steps, so spikes, floors, round-off dips and the marker
    values stay exact. matplotlib holds about 60 bytes per point of a line: drawn in full, a
    1e5-step run costs tens of MB for detail finer than a pixel."""
    def keep(series: dict, steps: list[int]) -> dict:
        if not series:
            return series
        picks = [extremes(values, points) for tag, values in series.items() if tag != "step"]
        rows = np.unique(np.concatenate([*picks, np.searchsorted(series["step"], steps)]))
        return {tag: values[rows] for tag, values in series.items()}

    measured, reference, prediction = run
    return keep(measured, list(events(summary).values())), keep(reference, []), prediction


def value_at(series: dict[str, np.ndarray], tag: str, step: int) -> float:
    """The value of `tag` at a logged step (steps are logged in increasing order)."""
    return float(series[tag][np.searchsorted(series["step"], step)])


def events(summary: dict) -> dict[str, int]:
    """The analysed steps of a summarised run that figures and dashboards mark."""
    measured = summary.get("measured", {})
    spike = measured.get("first_spike") or {}
    named = {"crossing": measured.get("crossing"), "directional_onset": measured.get("directional_onset"),
             **{k: spike.get(k) for k in ("rising_edge", "peak", "recovery")}}
    return {k: v for k, v in named.items() if v is not None}


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) else str(value)
    return str(value)


def table(summary: dict) -> str:
    """A short markdown table: theory, reference trajectory and measured run side by side."""
    measured = summary.get("measured", {})
    reference = summary.get("reference", {})
    predicted = summary.get("predicted") or {}
    onset = predicted.get("onset_estimate") or {}

    def spike(d, key):
        first = d.get("first_spike") or {}
        return first.get(key)

    rows = [
        ("outcome / regime", predicted.get("regime"), reference.get("outcome"), measured.get("outcome")),
        ("crossing step", predicted.get("T_cross"), reference.get("crossing"), measured.get("crossing")),
        ("directional onset", None, reference.get("directional_onset"), measured.get("directional_onset")),
        ("loss rising edge", onset.get("rising_edge"), spike(reference, "rising_edge"), spike(measured, "rising_edge")),
        ("peak step", onset.get("peak"), spike(reference, "peak"), spike(measured, "peak")),
        ("peak / floor", onset.get("height_ratio"), spike(reference, "height_ratio"), spike(measured, "height_ratio")),
        ("recovery step", None, spike(reference, "recovery"), spike(measured, "recovery")),
        ("spikes", None, reference.get("spikes"), measured.get("spikes")),
    ]
    lines = ["| | theory | reference | run |", "|---|---|---|---|"]
    lines += [f"| {name} | " + " | ".join(_cell(v) for v in vals) + " |" for name, *vals in rows]
    dev = summary.get("reference_max_rel_dev_to_crossing")
    if dev:
        lines.append("")
        lines.append("max relative deviation run vs reference up to the crossing: "
                     + ", ".join(f"{k} {v:.1e}" for k, v in dev.items()))
    return "\n".join(lines)
