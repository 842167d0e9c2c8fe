"""Theory beside every run: the regime, the crossing step, the onset lag and a reference trajectory.

Pure numpy (no torch): it reads the data moments (`Data.facts`) and the config's numbers, so
`bnspike theory` answers in well under a second and the loop can log the prediction before the
first step. Where each formula comes from (P: the paper, arXiv 2604.16809, as restated in
docs/mechanism.md; R: this project's reconstruction, derived in mechanism.md or below and
checked against real nn.BatchNorm1d runs by tests/test_theory*.py):

  P  kappa_t = eta alpha_t rho_t / ||w_t||_Sigma^2, the threshold kappa = 2, the delayed-onset
     regime (kappa_0 < 2 while the limit eta rho_max^2 / ||w||^2 exceeds 2), self-stabilization.
  R  the exact whitened recursion of (alpha, theta, ||w||) (mechanism.md section 3), with the
     1/2 loss convention; `whitened_recursion`.
  R  the closed-form gradient-descent map for any Sigma with BatchNorm's eps and bias kept
     exactly; `reference`. f = gamma <x - mean, w> / sqrt(s + eps) + beta with s = w^T Sigma w,
     q = sqrt(s + eps), p = <b, w>:
         grad_w R     = -gamma b / q + (gamma p / q^3 + gamma^2 eps / q^4) Sigma w
         dR/dgamma    = gamma s / q^2 - p / q          dR/dbeta = beta - ybar
  R  the limit for general Sigma: near alignment the Hessian in w is
     (alpha rho / ||w||_Sigma^2)(Sigma - Sigma v v^T Sigma), v = w_ls / ||w_ls||_Sigma, so
     eta * sharpness = kappa * mu with mu = lambda_max(Sigma - Sigma v v^T Sigma) (mu = 1 when
     Sigma = I) and the crossing is kappa = 2 / mu.
  R  T_cross closed form ln((rho_max - alpha_0)/(rho_max - alpha_c)) / -ln(1 - eta_alpha),
     alpha_c = 2 ||w||^2 / (eta rho_max): with ||w_0|| it is a LOWER bound on the crossing for
     whitened data (rho <= rho_max keeps alpha below its aligned value, the norm never shrinks).
  R  no rising edge (sufficient, whitened): eta rho_max max(alpha_0, rho_max) <= 2 ||w_0||^2.
  R  visible onset: the misalignment starts at the round-off level delta_0 of the run's dtype
     and grows by |1 - kappa| per step after the crossing; the floored recursion estimates when
     the loss turns up and peaks.
"""
from __future__ import annotations

import json
import math
import pathlib
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from . import analysis
from .init import initial_weight

# Series of the reference trajectory, named as the run logs them (logged under "theory/...").
TAGS = ("loss/train", "loss/excess", "loss/scale_term", "loss/direction_term", "loss/bias_term",
        "norm/w", "norm/w_sigma", "param/alpha", "param/beta", "lr/effective", "stability/kappa",
        "stability/kappa_limit", "align/cos", "align/sin2")
CHUNK = 1024  # steps of the reference map computed and held at a time


@dataclass(frozen=True)
class Problem:
    """Everything the theory needs: data moments and the run's numbers."""
    facts: "bnspike.data.Facts"  # noqa: F821
    w0: np.ndarray
    alpha0: float
    beta0: float
    eta: float
    eta_alpha: float
    eta_beta: float  # 0 when the bias is frozen
    eps: float
    dtype: str
    steps: int


def outside(cfg: dict, facts) -> str | None:
    """Why this theory does not describe the run, or None. It models full-batch gradient descent
    on the square-loss BN model; the other settings of issue 7 run without a theory overlay."""
    mc, oc = cfg["model"], cfg["optim"]
    reasons = [why for why, on in (
        ("logistic loss", oc["loss"] != "square"), ("no BatchNorm", mc["kind"] != "bn_linear"),
        ("mini-batches", oc["batch_size"] not in (0, facts.n)), ("weight decay", oc["weight_decay"] > 0),
        ("momentum", oc["momentum"] > 0), (f"{oc['schedule']} schedule", oc["schedule"] != "constant"))
        if on]
    return ", ".join(reasons) or None


def problem(cfg: dict, facts) -> Problem:
    ls_direction(facts)  # refuses data without signal here, before a run writes anything
    mc, oc = cfg["model"], cfg["optim"]
    return Problem(
        facts=facts, w0=initial_weight(facts.d, mc["w0_norm"], mc["w0_seed"]), alpha0=mc["alpha0"],
        beta0=mc["beta0"], eta=oc["lr_w"], eta_alpha=oc["lr_alpha"],
        eta_beta=oc["lr_beta"] if mc["train_beta"] else 0.0, eps=mc["eps"], dtype=mc["dtype"],
        steps=oc["steps"])


def ls_direction(facts) -> np.ndarray:
    """v = w_ls / ||w_ls||_Sigma: the direction gradient descent aligns with."""
    if facts.rho_max == 0:
        raise ValueError("theory: the data carry no signal (b = X^T y / n = 0, rho_max = 0); "
                         "there is no direction to align with and kappa stays 0")
    return facts.w_ls / facts.rho_max  # ||w_ls||_Sigma^2 = b^T Sigma^+ b = rho_max^2


def aligned_factor(facts) -> float:
    """mu = lambda_max(Sigma - Sigma v v^T Sigma): eta * sharpness = kappa * mu at alignment (R)."""
    u = facts.sigma @ ls_direction(facts)
    return float(np.linalg.eigvalsh(facts.sigma - np.outer(u, u))[-1])


def kappa_limit(facts) -> float:
    """The crossing level of kappa, 2 / mu (2 for whitened data; never for d = 1: nothing to misalign)."""
    mu = aligned_factor(facts)
    return 2.0 / mu if mu > 1e-12 * facts.sigma_eigs[-1] else math.inf


def reference_chunks(pr: Problem, size: int = CHUNK) -> Iterator[dict[str, np.ndarray]]:
    """The closed-form gradient-descent map (any Sigma, eps and beta exact), float64 numpy,
    `size` steps at a time: a long run's reference is written out as it is computed, never held.

    Values at index i of a chunk describe w_t for t = chunk["step"][i], like the run's metrics.
    The map runs in Sigma's eigenbasis (Sigma w is then an elementwise product: O(d) a step,
    no d x d product); a float32 run's iterate is rounded to float32 in the original basis
    after each step, so the unstable mode grows from the same round-off level as the run's.
    """
    f = pr.facts
    lam, Q = np.linalg.eigh(f.sigma)
    b, v_ls = Q.T @ f.b, Q.T @ ls_direction(f)
    limit = kappa_limit(f)
    float32 = pr.dtype == "float32"
    store = np.float32 if float32 else np.float64
    eta, eps, rho_max, y_mean = pr.eta, pr.eps, f.rho_max, f.y_mean
    # np.float64, not float: a diverging map overflows to inf (as the run does) instead of raising
    w = Q.T @ pr.w0.astype(store).astype(float)
    gamma, beta = np.float64(store(pr.alpha0)), np.float64(store(pr.beta0))
    for begin in range(0, pr.steps, size):
        steps = range(begin, min(begin + size, pr.steps))
        rows = np.empty((len(steps), len(_COMPUTED)))
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging map ends in inf/NaN; the run reports it
            for i in range(len(steps)):
                sw = lam * w
                s = w @ sw
                q2 = s + eps
                q, p = np.sqrt(q2), b @ w
                w_sigma = np.sqrt(s)
                rho = p / w_sigma
                cos = rho / rho_max
                perp = w / w_sigma - cos * v_ls
                sin2 = perp @ (lam * perp)
                # exact split of R (mechanism.md section 2 with alpha_eff = gamma ||w||_Sigma / q)
                scale = 0.5 * (gamma * w_sigma / q - rho) ** 2
                direction = 0.5 * rho_max ** 2 * sin2
                bias = 0.5 * (beta - y_mean) ** 2
                norm2 = w @ w
                rows[i] = (scale + direction + bias, scale, direction, bias, np.sqrt(norm2), w_sigma, gamma, beta,
                           eta / norm2, eta * gamma * rho / s, cos, sin2)
                # w -= eta grad_w R,  grad_w R = -gamma b / q + (gamma p / q^3 + gamma^2 eps / q^4) Sigma w
                w = w + (eta * gamma / q) * b - (eta * (gamma * p / (q2 * q) + gamma ** 2 * eps / (q2 * q2))) * sw
                if float32:
                    w = Q.T @ (Q @ w).astype(np.float32).astype(float)
                gamma, beta = (np.float64(store(gamma - pr.eta_alpha * (gamma * s / q2 - p / q))),
                               np.float64(store(beta - pr.eta_beta * (beta - y_mean))))
        out = {tag: rows[:, j] for j, tag in enumerate(_COMPUTED)}
        out["loss/train"] = out["loss/excess"] + f.r_star
        out["stability/kappa_limit"] = np.full(len(steps), limit)
        out["step"] = np.arange(steps.start, steps.stop, dtype=float)
        yield {tag: out[tag] for tag in ("step", *TAGS)}


# The reference's series computed step by step, in the order of a row of the map.
_COMPUTED = ("loss/excess", "loss/scale_term", "loss/direction_term", "loss/bias_term", "norm/w", "norm/w_sigma",
             "param/alpha", "param/beta", "lr/effective", "stability/kappa", "align/cos", "align/sin2")


def reference(pr: Problem) -> dict[str, np.ndarray]:
    """The whole reference map at once (`bnspike theory`, tests): `reference_chunks` joined."""
    chunks = list(reference_chunks(pr))
    return {tag: np.concatenate([c[tag] for c in chunks]) for tag in chunks[0]}


@np.errstate(over="ignore", invalid="ignore")
def whitened_recursion(alpha0: float, cos0: float, norm0: float, b_norm: float, eta: float,
                       eta_alpha: float, steps: int, floor: float = 0.0) -> dict[str, np.ndarray]:
    """The 3-number system of mechanism.md section 3 (Sigma = I, eps -> 0, beta frozen):

        alpha' = (1 - eta_alpha) alpha + eta_alpha rho,        rho = ||b|| cos(theta)
        tan'   = tan (1 - kappa) / (1 + kappa tan^2),          kappa = eta alpha rho / ||w||^2
                 (tan = w_perp / w_along_b, signed; negative rho when w points away from b)
        ||w'||^2 = ||w||^2 (1 + kappa^2 tan^2)

    `floor` > 0 keeps |tan theta| at or above the round-off level a finite-precision run cannot
    go below; with it the recursion goes through the spike instead of staying aligned forever.
    Returns per-step alpha, tan, norm, kappa and the excess loss (scale + direction terms).
    """
    sign = 1.0 if cos0 >= 0 else -1.0  # the side of b the iterate is on: rho = sign ||b|| / sqrt(1 + tan^2)
    alpha = np.float64(alpha0)  # not float: a diverging system overflows to inf instead of raising
    tan, norm2 = math.sqrt(max(1.0 - cos0 ** 2, 0.0)) / abs(cos0), norm0 ** 2
    out = {k: np.empty(steps) for k in ("alpha", "tan", "norm", "kappa", "loss/excess")}
    for t in range(steps):
        rho = sign * b_norm / math.sqrt(1.0 + tan ** 2)
        kappa = eta * alpha * rho / norm2
        out["alpha"][t], out["tan"][t], out["norm"][t], out["kappa"][t] = alpha, tan, math.sqrt(norm2), kappa
        out["loss/excess"][t] = 0.5 * (alpha - rho) ** 2 + 0.5 * (b_norm ** 2 - rho ** 2)
        # along b the weight is multiplied by 1 + kappa tan^2 (negative: it crosses to the other side)
        along = 1 + kappa * tan ** 2
        sign = sign if along > 0 else -sign
        alpha, tan, norm2 = ((1 - eta_alpha) * alpha + eta_alpha * rho, tan * (1 - kappa) / along,
                             norm2 * (1 + kappa ** 2 * tan ** 2))
        if abs(tan) < floor:
            tan = math.copysign(floor, tan)
    return out


def roundoff_level(dtype: str, d: int) -> float:
    """delta_0: the misalignment a d-vector stored in `dtype` cannot be aligned beyond (R)."""
    return float(np.finfo(dtype).eps) * math.sqrt(d)


def closed_form_crossing(alpha0: float, norm2: float, rho_max: float, eta: float, eta_alpha: float,
                         limit: float = 2.0) -> float | None:
    """Steps for an aligned alpha to reach alpha_c = limit ||w||^2 / (eta rho_max); None if never."""
    alpha_c = limit * norm2 / (eta * rho_max)
    if alpha0 >= alpha_c:
        return 0.0
    if alpha_c >= rho_max or eta_alpha <= 0:
        return None
    return math.log((rho_max - alpha0) / (rho_max - alpha_c)) / -math.log1p(-eta_alpha)


# The series of the reference map `predict` reads (data that is not whitened).
PREDICTED_FROM = ("stability/kappa", "param/alpha", "norm/w_sigma", "loss/excess")


def predict(pr: Problem, ref: dict[str, np.ndarray] | None = None) -> dict:
    """Regime, crossing step T_cross and the onset estimate (rising edge and peak of the spike).

    Whitened data: from the paper's reduced (alpha, theta, ||w||) recursion, floored at the
    round-off level (so it also goes through the spike). Otherwise from the reference map
    (`ref`: its PREDICTED_FROM series, computed here if not given). Past the horizon, alpha is
    continued in closed form.
    """
    f = pr.facts
    out: dict = {"rho_max": f.rho_max, "r_star": f.r_star, "whitened": f.whitened}
    norm0 = float(np.linalg.norm(pr.w0))
    delta0 = roundoff_level(pr.dtype, f.d)
    if f.whitened:
        cos0 = float(f.b @ pr.w0) / (f.rho_max * norm0)
        rec = whitened_recursion(pr.alpha0, cos0, norm0, f.rho_max, pr.eta, pr.eta_alpha, pr.steps, delta0)
        kappa, alpha, norm, excess = rec["kappa"], rec["alpha"], rec["norm"], rec["loss/excess"]
        out["T_cross_from"] = "reduced recursion"
    else:  # the map's own round-off (its iterate is stored in the run's dtype) seeds the spike
        ref = reference(pr) if ref is None else ref
        kappa, alpha, norm = ref["stability/kappa"], ref["param/alpha"], ref["norm/w_sigma"]
        excess = ref["loss/excess"]
        out["T_cross_from"] = "reference map"
    limit = kappa_limit(f)
    out.update({"kappa_0": float(kappa[0]), "kappa_limit": limit, "mu": 2.0 / limit})
    crossed = np.flatnonzero(kappa >= limit)
    if crossed.size:
        out["T_cross"] = int(crossed[0])
    else:  # aligned by the horizon: alpha follows the closed form with the norm frozen
        more = closed_form_crossing(alpha[-1], norm[-1] ** 2, f.rho_max, pr.eta, pr.eta_alpha, limit)
        out["T_cross"] = None if more is None else pr.steps - 1 + math.ceil(more)
        out["T_cross_from"] = None if more is None else "closed form past the horizon"
    if out["T_cross"] == 0:
        out["regime"] = "unstable_from_start"
    else:
        out["regime"] = "no_rising_edge" if out["T_cross"] is None else "delayed_onset"
    found = [s for s in analysis.spikes(np.arange(pr.steps), excess)
             if out["T_cross"] is not None and s.peak > out["T_cross"] > 0]
    out["onset_estimate"] = None if not found else {
        "delta_0": delta0, "rising_edge": found[0].rising_edge, "peak": found[0].peak,
        "height_ratio": found[0].height_ratio, "lag": found[0].rising_edge - out["T_cross"]}
    if f.whitened:
        margin = 2 * norm0 ** 2 - pr.eta * f.rho_max * max(pr.alpha0, f.rho_max)
        out["no_rising_edge_condition"] = {"holds": margin >= 0, "margin": margin}
        out["T_cross_lower_bound"] = closed_form_crossing(pr.alpha0, norm0 ** 2, f.rho_max, pr.eta, pr.eta_alpha)
    return out


def rows(prediction: dict) -> list[tuple[str, str]]:
    """The prediction as (quantity, value) lines for `bnspike theory`."""
    def fmt(v):
        return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = [("regime", prediction["regime"]),
             ("T_cross (kappa reaches the limit)",
              f"{fmt(prediction['T_cross'])} ({prediction['T_cross_from'] or 'never'})"),
             ("kappa_0", fmt(prediction["kappa_0"])),
             ("kappa limit 2/mu (mu = eta*sharpness/kappa at alignment)", fmt(prediction["kappa_limit"])),
             ("rho_max, R*", f"{fmt(prediction['rho_max'])}, {fmt(prediction['r_star'])}")]
    if "no_rising_edge_condition" in prediction:
        cond = prediction["no_rising_edge_condition"]
        lines += [("no-rising-edge condition eta rho_max max(a0,rho_max) <= 2||w0||^2",
                   f"{'holds' if cond['holds'] else 'fails'} (margin {fmt(cond['margin'])})"),
                  ("T_cross lower bound (closed form, ||w_0||)", fmt(prediction["T_cross_lower_bound"]))]
    onset = prediction.get("onset_estimate")
    if onset:
        lines += [("round-off level delta_0", fmt(onset["delta_0"])),
                  ("visible-onset lag (loss rising edge - T_cross)", fmt(onset["lag"])),
                  (f"loss rising edge / peak ({prediction['T_cross_from']})", f"{onset['rising_edge']} / {onset['peak']}"),
                  ("peak / floor", fmt(onset["height_ratio"]))]
    return lines


def format_table(prediction: dict) -> str:
    lines = rows(prediction)
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in lines)


def save(run_dir: pathlib.Path, pr: Problem, chunks: Iterable[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """Pass the reference map's chunks through, writing each to theory.csv (full float64
    precision) as it goes by and, after the last, theory.json (the prediction): one pass of the
    map feeds these files and whatever consumes the chunks (the run's TensorBoard overlay)."""
    run_dir = pathlib.Path(run_dir)
    kept = {} if pr.facts.whitened else {tag: [] for tag in PREDICTED_FROM}  # what predict reads
    with open(run_dir / analysis.THEORY_CSV, "x", newline="") as fh:
        fh.write(",".join(["step", *TAGS]) + "\n")
        for chunk in chunks:
            # Python floats column by column (numpy's per-element indexing is the slow part);
            # repr of a float is its shortest exact form. Plain joins: nothing here needs quoting.
            columns = [map(repr, chunk[tag].tolist()) for tag in TAGS]
            steps = map(str, chunk["step"].astype(int).tolist())
            fh.write("".join(",".join(row) + "\n" for row in zip(steps, *columns)))
            for tag, parts in kept.items():
                parts.append(chunk[tag])
            yield chunk
    prediction = predict(pr, {tag: np.concatenate(parts) for tag, parts in kept.items()} or None)
    (run_dir / analysis.THEORY_JSON).write_text(json.dumps(prediction, indent=2) + "\n")
