"""Every logged metric against an independent float64 computation (mechanism.md section 2-3)."""
import functools

import numpy as np
import pytest
import torch

from bnspike import config, hessian
from bnspike.data import load_data
from bnspike.probes import Sharpness, RunContext, StepState
from bnspike.model import build_model
from bnspike.loop import hvp_at
from bnspike.losses import square_loss
from tests.conftest import CONFIGS, sin2_roundoff


def independent_loss(w, alpha, beta, X, y, eps):
    Xc = X - X.mean(0)
    s2 = w @ (Xc.T @ Xc / len(X)) @ w
    f = alpha * (Xc @ w) / np.sqrt(s2 + eps) + beta
    return 0.5 * np.mean((y - f) ** 2)


def dense_hessian_top(w, alpha, beta, X, y, eps):
    """Top ALGEBRAIC eigenvalue of the Hessian in w of the closed-form train-mode loss."""
    X, y = torch.as_tensor(X), torch.as_tensor(y)
    Xc = X - X.mean(0)

    def loss(w):
        z = Xc @ w
        return 0.5 * torch.mean((alpha * z / torch.sqrt(z.pow(2).mean() + eps) + beta - y) ** 2)

    H = torch.autograd.functional.hessian(loss, torch.as_tensor(w))
    return torch.linalg.eigvalsh(H).numpy()


@pytest.fixture(scope="module")
def data():
    return load_data(config.load(CONFIGS / "whitened_spike.yaml"))


def test_loss_terms_sum_to_train_loss(spike_run, data):
    m = spike_run.metrics
    total = m["loss/scale_term"] + m["loss/direction_term"] + m["loss/bias_term"] + data.facts.r_star
    np.testing.assert_allclose(total, m["loss/train"], rtol=1e-10)
    np.testing.assert_allclose(m["loss/excess"], m["loss/train"] - data.facts.r_star, rtol=1e-12)


def test_logged_values_match_recomputation_from_w(spike_run, data):
    m = spike_run.metrics
    eps = spike_run.cfg["model"]["eps"]
    b = data.X.T @ data.y / len(data.y)
    for step, w, alpha, beta, lr in spike_run.states[::7]:
        loss = independent_loss(w, alpha, beta, data.X, data.y, eps)
        assert m["loss/train"][step] == pytest.approx(loss, rel=1e-12)
        rho = b @ w / np.linalg.norm(w)  # Sigma = I
        assert m["align/cos"][step] == pytest.approx(rho / np.linalg.norm(b), rel=1e-10)
        assert m["stability/kappa"][step] == pytest.approx(lr * alpha * rho / (w @ w), rel=1e-10)
        assert m["lr/effective"][step] == pytest.approx(lr / (w @ w), rel=1e-14)
        assert m["norm/w"][step] == pytest.approx(np.linalg.norm(w), rel=1e-14)
        assert m["param/alpha"][step] == alpha
        # sin^2 against a direct, cancellation-free formula for Sigma = I: |u x b|^2 / |b|^2
        u, bh = w / np.linalg.norm(w), b / np.linalg.norm(b)
        sin2 = np.sum((u - (u @ bh) * bh) ** 2)
        assert abs(m["align/sin2"][step] - sin2) <= 1e-6 * sin2 + sin2_roundoff(sin2, len(w))


def test_norm_law_holds_every_step(spike_run):
    m, eta = spike_run.metrics, spike_run.cfg["optim"]["lr_w"]
    lhs = m["norm/w"][1:] ** 2 - m["norm/w"][:-1] ** 2
    rhs = eta ** 2 * m["grad/norm_w"][:-1] ** 2
    big = rhs > 1e-6 * m["norm/w"][:-1] ** 2  # elsewhere the difference is below round-off
    assert big.sum() > 30
    np.testing.assert_allclose(lhs[big], rhs[big], rtol=1e-9)
    assert np.all(np.diff(m["norm/w"]) >= -1e-15)  # the norm never shrinks


def test_update_angle_is_angle_between_consecutive_iterates(spike_run):
    states = spike_run.states
    for (step, w, *_), (_, w_next, *_) in list(zip(states, states[1:]))[170:195]:
        # |w x w'|^2 from the wedge product, no cancellation for small angles
        cross2 = 0.5 * np.sum((np.outer(w, w_next) - np.outer(w_next, w)) ** 2)
        angle = np.arctan2(np.sqrt(cross2), w @ w_next)
        assert spike_run.metrics["update/angle"][step] == pytest.approx(angle, rel=1e-9)


def test_sharpness_equals_dense_autograd_hessian(spike_run, data):
    m = spike_run.metrics
    eps = spike_run.cfg["model"]["eps"]
    for step, w, alpha, beta, lr in spike_run.states[::23] + spike_run.states[178:190]:
        top = dense_hessian_top(w, alpha, beta, data.X, data.y, eps)[-1]
        assert m["stability/sharpness"][step] == pytest.approx(top, rel=1e-6)
        assert m["stability/eta_sharpness"][step] == pytest.approx(lr * top, rel=1e-6)


def test_kappa_equals_eta_sharpness_near_alignment(spike_run):
    m = spike_run.metrics
    aligned = (m["align/sin2"] < 1e-20) & (m["step"] > 20)
    assert aligned.sum() > 100
    np.testing.assert_allclose(m["stability/kappa"][aligned], m["stability/eta_sharpness"][aligned], rtol=1e-8)


def _state_at(w, alpha, beta, cfg, d):
    """A StepState at a chosen point, with the live model's Hessian-vector products."""
    data = load_data(cfg)
    model = build_model(cfg, d)
    X, y = torch.as_tensor(data.X), torch.as_tensor(data.y)
    wt = torch.as_tensor(w)
    a, b = torch.tensor(alpha, dtype=torch.float64), torch.tensor(beta, dtype=torch.float64)
    state = StepState.of(step=0, loss=torch.tensor(0.0, dtype=torch.float64), w=wt, w_next=wt, grad_w=wt,
                         alpha=a, beta=b, lr_w=1.0, hessian_at=functools.partial(hvp_at, model, X, y, square_loss))
    return state, RunContext(cfg, data, model, torch.float64, torch.device("cpu")), data


@pytest.mark.parametrize("method", ["autograd", "closed_form"])
@pytest.mark.parametrize("dense_max", [64, 0])  # autograd: exact dense path, and Lanczos
def test_sharpness_is_largest_algebraic_not_largest_magnitude(dense_max, method):
    """Near anti-alignment the Hessian's most negative eigenvalue dominates in magnitude."""
    d = 40
    cfg = config.load(CONFIGS / "whitened_spike.yaml",
                      ["data.d=40", "data.spectrum=linear", "data.whiten=none", "data.noise=0.3",
                       f"probes.sharpness_dense_max={dense_max}", f"probes.sharpness_method={method}"])
    data = load_data(cfg)
    w = -data.facts.w_ls + 0.05 * np.random.default_rng(3).standard_normal(d)
    state, run, data = _state_at(w, 3.0, 0.1, cfg, d)
    probe = Sharpness()
    probe.setup(run)
    got = float(probe(state)["stability/sharpness"])
    evals = dense_hessian_top(w, 3.0, 0.1, data.X, data.y, cfg["model"]["eps"])
    assert abs(evals[0]) > 3 * abs(evals[-1])  # the trap: magnitude would pick evals[0]
    assert got == pytest.approx(evals[-1], rel=1e-8)


def test_lanczos_converges_to_top_eigenvalue_with_warm_start():
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((200, 200)))
    evals = np.concatenate([[-50.0], np.linspace(-1, 5, 198), [7.0]])
    H = torch.as_tensor(Q @ np.diag(evals) @ Q.T)
    top = hessian.lanczos_top(lambda v: H @ v, torch.as_tensor(rng.standard_normal(200)), 200, 1e-12)
    assert float(top.value) == pytest.approx(7.0, rel=1e-10)
    warm = hessian.lanczos_top(lambda v: H @ v, top.vector + 1e-3 * torch.randn(200, dtype=torch.float64), 200, 1e-12)
    assert float(warm.value) == pytest.approx(7.0, rel=1e-10) and warm.products < top.products


def test_sharpness_leaves_batchnorm_running_buffers_untouched(spike_run):
    cfg = spike_run.cfg
    data = load_data(cfg)
    model = build_model(cfg, 16)
    before = {k: v.clone() for k, v in model.named_buffers()}
    X, y = torch.as_tensor(data.X), torch.as_tensor(data.y)
    hvp, _ = hvp_at(model, X, y, square_loss, model.w.detach().flatten(), model.alpha.detach(), model.beta.detach())
    hvp(torch.ones(16, dtype=torch.float64))
    for k, v in model.named_buffers():
        assert torch.equal(v, before[k]), k


def test_gradient_is_orthogonal_to_w(spike_run):
    """Scale invariance: <w, grad_w R> = 0 up to round-off when eps is negligible."""
    m = spike_run.metrics
    # the radial part <w, g>/|w| is a sum of O(1) terms cancelling: round-off ~1e-16 absolute
    radial = np.abs(m["grad/cos_w"]) * m["grad/norm_w"]
    assert np.all(radial < 1e-14)
    resolved = m["grad/norm_w"] > 1e-4
    assert resolved.sum() > 40 and np.all(np.abs(m["grad/cos_w"][resolved]) < 1e-10)
    for step, w, alpha, beta, lr in spike_run.states[::50]:
        g_next = spike_run.states[step + 1][1] - w  # = -eta * grad for plain gradient descent
        if np.linalg.norm(g_next) > 1e-8:
            cos = -(w @ g_next) / np.linalg.norm(w) / np.linalg.norm(g_next)
            assert m["grad/cos_w"][step] == pytest.approx(cos, abs=1e-10)


def test_mechanism_on_non_whitened_data_matches_direct_formulas():
    """Sigma spectrum 1..10, noisy target, eps not negligible: every output against the textbook
    formula, and the four loss terms against an independent loss."""
    from bnspike.probes import Mechanism

    cfg = config.load(CONFIGS / "whitened_spike.yaml",
                      ["data.d=12", "data.whiten=none", "data.spectrum=linear", "data.noise=0.3",
                       "model.eps=1e-3", "data.center_target=false"])
    data = load_data(cfg)
    f, eps = data.facts, 1e-3
    rng = np.random.default_rng(5)
    w, w_next, g = rng.standard_normal(12), rng.standard_normal(12), rng.standard_normal(12)
    alpha, beta, lr = 0.7, 0.2, 0.3
    loss = independent_loss(w, alpha, beta, data.X, data.y, eps)
    def t(x):
        return torch.as_tensor(x, dtype=torch.float64)

    state = StepState.of(step=0, loss=t(loss), w=t(w), w_next=t(w_next), grad_w=t(g), alpha=t(alpha),
                         beta=t(beta), lr_w=lr)
    probe = Mechanism()
    probe.setup(RunContext(cfg, data, build_model(cfg, 12), torch.float64, torch.device("cpu")))
    got = probe(state)

    S = f.sigma
    ws = np.sqrt(w @ S @ w)
    v_ls = f.w_ls / np.sqrt(f.w_ls @ S @ f.w_ls)
    rho = f.b @ w / ws
    cos = rho / f.rho_max
    perp = w / ws - cos * v_ls
    alpha_eff = alpha * ws / np.sqrt(ws ** 2 + eps)
    u, u_next = w / np.linalg.norm(w), w_next / np.linalg.norm(w_next)
    want = {
        "loss/train": loss, "loss/excess": loss - f.r_star,
        "loss/scale_term": 0.5 * (alpha_eff - rho) ** 2,
        "loss/direction_term": 0.5 * f.rho_max ** 2 * (perp @ S @ perp),
        "loss/bias_term": 0.5 * (beta - f.y_mean) ** 2,
        "norm/w": np.linalg.norm(w), "norm/w_sigma": ws, "param/alpha": alpha, "param/beta": beta,
        "lr/effective": lr / (w @ w), "stability/kappa": lr * alpha * rho / ws ** 2,
        "align/cos": cos, "align/sin2": perp @ S @ perp, "grad/norm_w": np.linalg.norm(g),
        "grad/cos_w": w @ g / np.linalg.norm(w) / np.linalg.norm(g),
        "update/angle": np.arccos(u @ u_next),
    }
    assert list(got) == list(want)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-10), name
    terms = got["loss/scale_term"] + got["loss/direction_term"] + got["loss/bias_term"] + f.r_star
    assert terms == pytest.approx(loss, rel=1e-10)


def test_closed_form_and_autograd_sharpness_agree_along_the_spike_run(spike_run, data):
    """The two methods at real states of the run, the spike included."""
    cfg = spike_run.cfg
    model = build_model(cfg, 16)
    X, y = torch.as_tensor(data.X), torch.as_tensor(data.y)
    closed = hessian.BNLinearSquare(data.facts.sigma, data.facts.b, cfg["model"]["eps"], dense_max=0)
    for step, w, alpha, beta, lr in spike_run.states[::37] + spike_run.states[180:186]:
        a, b = torch.tensor([alpha], dtype=torch.float64), torch.tensor([beta], dtype=torch.float64)
        _, batched = hvp_at(model, X, y, square_loss, torch.as_tensor(w), a, b)
        exact = float(hessian.dense_top(batched, 16, torch.as_tensor(w)).value)
        assert closed.top(w, alpha) == pytest.approx(exact, rel=1e-9)
        assert spike_run.metrics["stability/sharpness"][step] == pytest.approx(exact, rel=1e-9)


def closed_form_hessian(sigma, b, eps, w, alpha):
    """H = k Sigma + g (b s^T + s b^T) - h s s^T in the original basis, and k (D = k * eig(Sigma))."""
    s, c = sigma @ w, b @ w
    q = w @ s + eps
    k = alpha * c * q ** -1.5 + alpha ** 2 * eps * q ** -2
    g = alpha * q ** -1.5
    h = 3 * alpha * c * q ** -2.5 + 4 * alpha ** 2 * eps * q ** -3
    return k * sigma + g * (np.outer(b, s) + np.outer(s, b)) - h * np.outer(s, s), k


def assert_secular_is_eigvalsh(solver, sigma, b, eps, w, alpha, where) -> bool:
    """The secular solver against numpy's eigvalsh of the dense H, to 1e-12 of the size of H's
    terms (what round-off in assembling H amounts to); returns whether the top eigenvalue is
    below max(D), i.e. the root lies between the two largest poles."""
    H, k = closed_form_hessian(sigma, b, eps, w, alpha)
    evals, D = np.linalg.eigvalsh(H), k * np.linalg.eigvalsh(sigma)
    scale = np.abs(evals).max() + np.abs(D).max()
    assert abs(solver.top(w, alpha) - evals[-1]) <= 1e-12 * scale, where
    return evals[-1] < D.max() - 1e-9 * scale


def test_secular_root_equals_eigvalsh_of_the_closed_form_hessian():
    """Whitened (every eigenvalue of Sigma repeated), repeated top and middle eigenvalues, a
    singular Sigma, w and b with no component along Sigma's extreme eigenvectors (no pole
    there), near (anti-)alignment, both signs of alpha, eps from 1e-30 to 1; d up to 300."""
    rng = np.random.default_rng(1)
    below = above = 0
    for trial in range(80):
        d = int(rng.choice([2, 9, 100, 300]))
        Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        lam = rng.uniform(0.5, 10, d)
        kind = trial % 4
        if kind == 0:  # whitened
            lam[:] = 1.0
        elif kind == 1:  # repeated top, repeated middle, zeros (rank-deficient, as with n < d)
            lam[-3:], lam[: d // 3] = lam.max(), 2.0
            lam[: d // 6] = 0.0
        sigma = (Q * lam) @ Q.T
        b, w = rng.standard_normal(d), rng.standard_normal(d) * 10 ** rng.uniform(-2, 2)
        if trial % 3 == 0:  # near (anti-)alignment with the least-squares direction
            w = (-1) ** trial * np.linalg.pinv(sigma) @ b + 1e-3 * rng.standard_normal(d)
        if kind == 3 and d > 2:  # b and w orthogonal to both extreme eigenvectors: D_T is no pole
            ends = Q[:, [0, -1]]
            b, w = b - ends @ (ends.T @ b), w - ends @ (ends.T @ w)
        alpha, eps = rng.uniform(-3, 3), [1e-30, 1e-10, 1e-5, 1.0][trial % 4 if trial % 5 else 0]
        solver = hessian.BNLinearSquare(sigma, b, eps, dense_max=0)
        assert solver.top(w, 0.0) == 0.0  # alpha = 0: the loss is flat in w
        if assert_secular_is_eigvalsh(solver, sigma, b, eps, w, alpha, trial):
            below += 1
        else:
            above += 1
    assert below >= 10 and above >= 10  # both sides of the top pole were exercised


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory):
    """A non-whitened run at d = 100 > 64 (Sigma spectrum 1..10) with recorded states."""
    from tests.conftest import run_config
    from tests.recorder import Recorder

    Recorder.states.clear()
    run = run_config(tmp_path_factory, "whitened_spike.yaml", "data.n=400", "data.d=100", "data.whiten=none",
                     "data.spectrum=linear", "optim.lr_w=0.1", "optim.steps=150",
                     "probes.extra=['tests.recorder:Recorder']")
    run.states = list(Recorder.states)
    return run


def test_logged_sharpness_at_d_100_equals_eigvalsh_and_autograd(wide_run):
    """The probe's secular root at every step of a real run, against eigvalsh of the dense
    closed form, and at a few steps against the dense autograd Hessian of the live model."""
    cfg, eps = wide_run.cfg, wide_run.cfg["model"]["eps"]
    data = load_data(cfg)
    f, m = data.facts, wide_run.metrics
    below = 0
    for step, w, alpha, beta, lr in wide_run.states:
        below += assert_secular_is_eigvalsh(hessian.BNLinearSquare(f.sigma, f.b, eps, dense_max=0),
                                            f.sigma, f.b, eps, w, alpha, step)
        evals = np.linalg.eigvalsh(closed_form_hessian(f.sigma, f.b, eps, w, alpha)[0])
        assert abs(m["stability/sharpness"][step] - evals[-1]) <= 1e-12 * np.abs(evals).max(), step
    assert 10 <= below < len(wide_run.states)  # the top eigenvalue on both sides of max(D)
    model = build_model(cfg, 100)
    X, y = torch.as_tensor(data.X), torch.as_tensor(data.y)
    for step, w, alpha, beta, lr in wide_run.states[::50]:
        a, b = torch.tensor([alpha], dtype=torch.float64), torch.tensor([beta], dtype=torch.float64)
        _, batched = hvp_at(model, X, y, square_loss, torch.as_tensor(w), a, b)
        exact = float(hessian.dense_top(batched, 100, torch.as_tensor(w)).value)
        assert m["stability/sharpness"][step] == pytest.approx(exact, rel=1e-9), step
