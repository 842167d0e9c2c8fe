import numpy as np
import torch

from bnspike import config
from bnspike.data import load_data
from bnspike.model import build_model, initial_weight
from tests.conftest import CONFIGS


def test_bn_output_is_gamma_xw_over_sigma_norm_plus_beta():
    cfg = config.load(CONFIGS / "whitened_spike.yaml",
                      ["data.whiten=none", "data.spectrum=linear", "model.eps=1e-3", "model.beta0=0.3",
                       "model.alpha0=1.7"])
    data = load_data(cfg)
    model = build_model(cfg, data.facts.d)
    X = torch.as_tensor(data.X)
    with torch.no_grad():
        out = model(X).numpy()
    w = initial_weight(16, 0.5, 1)
    Xc = data.X - data.X.mean(0)
    sigma = Xc.T @ Xc / len(Xc)
    expected = 1.7 * (Xc @ w) / np.sqrt(w @ sigma @ w + 1e-3) + 0.3
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)
    assert isinstance(model.bn, torch.nn.BatchNorm1d) and model.training


def test_whitened_synthetic_data_is_exactly_white():
    cfg = config.load(CONFIGS / "whitened_spike.yaml")
    data = load_data(cfg)
    n = data.X.shape[0]
    np.testing.assert_allclose(data.X.T @ data.X / n, np.eye(16), rtol=0, atol=1e-12)
    np.testing.assert_allclose(data.X.mean(0), 0, atol=1e-14)
    assert abs(data.facts.rho_max - 1.0) < 1e-12  # noiseless unit teacher: ||b|| = 1
    assert data.facts.r_star < 1e-28


def test_reference_recipe_of_mechanism_md():
    """The synthetic source reproduces the numpy recipe of mechanism.md section 6 exactly."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((256, 16))
    X -= X.mean(0)
    L = np.linalg.cholesky(X.T @ X / 256)
    X = X @ np.linalg.inv(L).T
    w_star = rng.standard_normal(16)
    w_star /= np.linalg.norm(w_star)
    data = load_data(config.load(CONFIGS / "whitened_spike.yaml"))
    np.testing.assert_allclose(data.X, X, atol=1e-12)
    np.testing.assert_allclose(data.y, X @ w_star, atol=1e-12)
    w0 = np.random.default_rng(1).standard_normal(16)
    np.testing.assert_allclose(initial_weight(16, 0.5, 1), 0.5 * w0 / np.linalg.norm(w0), rtol=1e-15)


def test_square_loss_is_half_the_mean_squared_error_bit_for_bit():
    """The fused mse_loss gives what the formula gives, value and gradient, in float64."""
    from bnspike.losses import square_loss
    gen = torch.Generator().manual_seed(0)
    for n in (2, 17, 1000, 20000):
        out = torch.randn(n, dtype=torch.float64, generator=gen, requires_grad=True)
        y = torch.randn(n, dtype=torch.float64, generator=gen)
        fused, formula = square_loss(out, y), 0.5 * ((out - y) ** 2).mean()
        assert torch.equal(fused, formula), n
        g_fused, = torch.autograd.grad(fused, out)
        g_formula, = torch.autograd.grad(formula, out)
        assert torch.equal(g_fused, g_formula), n
