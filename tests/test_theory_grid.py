"""Predicted regime and crossing step against short real nn.BatchNorm1d runs over a grid.

The real runs use the project's model, optimizer and loss (the loop's building blocks) but no
probes or sinks, and stop at the crossing: kappa_t = eta alpha_t <b, w_t> / ||w_t||^3 is read
off the live parameters (Sigma = I), exactly what stability/kappa logs.
"""
import itertools

import numpy as np
import torch

from bnspike import analysis, config, theory
from bnspike.data import load_data
from bnspike.losses import square_loss
from bnspike.model import build_model
from bnspike.optim import build_optimizer
from tests.conftest import CONFIGS

HORIZON = 400
# eta, eta_alpha, alpha_0, ||w_0||, seed (data and init): 27 whitened configs, all three regimes;
# seed 2 starts on the far side of b (rho_0 < 0), which the recursion must follow across.
GRID = [(*a, i % 3) for i, a in enumerate(itertools.product((1.0, 2.0, 3.0), (0.01, 0.03), (0.05, 0.2), (0.5, 0.8)))]
GRID += [(0.3, 0.01, 0.05, 0.5, 0), (3.0, 0.01, 2.0, 0.3, 1), (4.0, 0.02, 1.0, 0.4, 2)]

def real_run(cfg) -> dict[str, np.ndarray]:
    """Train the real model until kappa >= 2 or the horizon; the logged-style kappa series."""
    data = load_data(cfg)
    model = build_model(cfg, data.facts.d)
    optimizer = build_optimizer(cfg, model)  # constant schedule
    X, y, b = (torch.as_tensor(a) for a in (data.X, data.y, data.facts.b))
    eta, kappas = cfg["optim"]["lr_w"], []
    for step in range(HORIZON):
        w = model.w.detach().flatten()
        kappas.append(float(eta * model.alpha.detach()[0] * (b @ w) / w.norm() ** 3))
        if kappas[-1] >= analysis.LIMIT:
            break
        optimizer.zero_grad()
        square_loss(model(X), y).backward()
        optimizer.step()
    return {"step": np.arange(len(kappas)), "stability/kappa": np.array(kappas)}


def test_grid_regime_and_crossing_match_real_runs():
    assert len(GRID) >= 20
    regimes, errors = set(), []
    for eta, eta_alpha, alpha0, norm0, seed in GRID:
        cfg = config.load(CONFIGS / "whitened_spike.yaml", [
            f"optim.lr_w={eta}", f"optim.lr_alpha={eta_alpha}", f"model.alpha0={alpha0}",
            f"model.w0_norm={norm0}", f"model.w0_seed={seed + 1}", f"data.data_seed={seed}",
            f"optim.steps={HORIZON}"])
        prediction = theory.predict(theory.problem(cfg, load_data(cfg).facts))
        measured = analysis.analyse(real_run(cfg))
        label = f"eta={eta} eta_alpha={eta_alpha} alpha0={alpha0} |w0|={norm0} seed={seed}"
        assert prediction["T_cross"] is None or prediction["T_cross"] < HORIZON, label
        assert prediction["regime"] == measured["outcome"], label
        regimes.add(measured["outcome"])
        crossing = measured["crossing"]
        if crossing:
            errors.append(abs(prediction["T_cross"] - crossing) / crossing)
            assert errors[-1] <= 0.05, label
            bound = prediction["T_cross_lower_bound"]
            assert bound is not None and bound <= crossing, label
        if prediction["no_rising_edge_condition"]["holds"]:
            assert crossing is None, label  # the sufficient condition is never wrong
    assert regimes == {"no_rising_edge", "delayed_onset", "unstable_from_start"}
    assert len(errors) >= 12 and max(errors) <= 0.05
