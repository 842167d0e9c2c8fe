"""Every data source loads, preprocesses and trains; preprocessing against numpy oracles."""
import csv
import pathlib

import numpy as np
import pytest
import scipy.linalg

from bnspike import cli, config
from bnspike.data import load_data
from bnspike.loop import train
from bnspike.model import initial_weight
from bnspike.sinks import read_metrics
from tests.conftest import ROOT
from tests.datasets import toy

STEPS = ["optim.steps=4", "log.progress=none", "data.standardize=true"]


def data_cfg(*overrides, **data):
    return config.resolve({"data": data}, list(overrides))


def write_csv(path: pathlib.Path, X, y, names=None):
    """Floats as repr(): the CSV reads back bit for bit."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if names:
            w.writerow(names)
        w.writerows([[repr(float(v)) for v in row] + [repr(float(t))] for row, t in zip(X, y)])
    return path


@pytest.fixture(scope="module")
def toy_files(tmp_path_factory):
    X, y = toy()
    d = tmp_path_factory.mktemp("toy")
    write_csv(d / "toy.csv", X, y, ["a", "b", "c", "target"])
    np.savez(d / "toy.npz", features=X, labels=y)
    np.save(d / "X.npy", X)
    np.save(d / "y.npy", y)
    return d


SOURCES = {
    "csv": lambda d: {"source": "csv", "path": str(d / "toy.csv"), "target": "target"},
    "npz": lambda d: {"source": "npz", "path": str(d / "toy.npz"), "x_key": "features", "y_key": "labels"},
    "npy": lambda d: {"source": "npy", "x_path": str(d / "X.npy"), "y_path": str(d / "y.npy")},
    "callable": lambda d: {"source": "callable", "function": "tests.datasets:toy",
                           "kwargs": {"as_tensors": True}},
    "registered": lambda d: {"source": "toy_registered", "module": "tests.datasets"},
}


@pytest.fixture(scope="module")
def toy_runs(toy_files, tmp_path_factory):
    """The same data through every file/python source, trained a few steps each."""
    runs = {}
    for name, spec in SOURCES.items():
        cfg = config.resolve({"data": spec(toy_files)}, STEPS)
        run_dir = tmp_path_factory.mktemp(name)
        train(cfg, run_dir)
        runs[name] = (cfg, run_dir)
    return runs


def test_same_data_from_every_source_gives_identical_metrics(toy_runs):
    reference = (toy_runs["csv"][1] / "metrics.csv").read_bytes()
    assert reference.count(b"\n") == 5  # header + 4 steps
    for name, (_, run_dir) in toy_runs.items():
        assert (run_dir / "metrics.csv").read_bytes() == reference, name


def assert_first_loss_is_closed_form(cfg, run_dir, X, y):
    """loss/train at step 0 against an independent numpy forward pass on the expected arrays."""
    mc = cfg["model"]
    w = initial_weight(X.shape[1], mc["w0_norm"], mc["w0_seed"])
    Xc = X - X.mean(0)
    f = mc["alpha0"] * (Xc @ w) / np.sqrt(w @ (Xc.T @ Xc / len(Xc)) @ w + mc["eps"])
    loss = read_metrics(run_dir / "metrics.csv")["loss/train"][0]
    assert loss == pytest.approx(0.5 * np.mean((y - f) ** 2), rel=1e-12)


def test_first_logged_loss_matches_closed_form(toy_runs):
    X, y = toy()
    cfg, run_dir = toy_runs["npz"]
    assert_first_loss_is_closed_form(cfg, run_dir, (X - X.mean(0)) / X.std(0), y - y.mean())
    assert "centred, standardised" in load_data(cfg).description


@pytest.mark.parametrize("spectrum, extra, expected", [
    ("isotropic", [], np.ones(4)),
    ("linear", ["data.spectrum_max=7"], np.array([1.0, 3.0, 5.0, 7.0])),
    ("power", ["data.spectrum_max=9", "data.spectrum_power=1"],  # 1 + 8 (k^-1 - 1/4) / (3/4)
     1 + 8 * (np.array([1, 1 / 2, 1 / 3, 1 / 4]) - 0.25) / 0.75),
    ("list", ["data.spectrum_values=[4, 3, 2, 0.5]"], np.array([4.0, 3.0, 2.0, 0.5])),
])
def test_synthetic_spectrum_scales_the_gaussian_draw(spectrum, extra, expected):
    data = load_data(data_cfg("data.d=4", "data.n=50", f"data.spectrum={spectrum}", *extra))
    raw = np.random.default_rng(0).standard_normal((50, 4)) * np.sqrt(expected)
    np.testing.assert_allclose(data.X, raw - raw.mean(0), rtol=0, atol=1e-14)


def test_synthetic_classification_labels_are_the_sign_of_the_teacher(tmp_path):
    cfg = data_cfg("data.task=classification", "data.noise=0.5", "data.n=300", "data.d=5", *STEPS[:2])
    data = load_data(cfg)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 5))
    X -= X.mean(0)
    w_star = rng.standard_normal(5)
    t = X @ (w_star / np.linalg.norm(w_star)) + 0.5 * rng.standard_normal(300)
    np.testing.assert_array_equal(data.y, np.sign(t))
    assert data.label_map == {-1.0: -1, 1.0: 1} and 100 < (data.y > 0).sum() < 200
    train(cfg, tmp_path)
    assert_first_loss_is_closed_form(cfg, tmp_path, X, np.sign(t))


def correlated(n=60, d=4, seed=5):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + 3.0


@pytest.mark.parametrize("method", ["cholesky", "zca", "pca"])
def test_whitened_features_have_identity_covariance(tmp_path, method):
    X = correlated()
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", X[:, 0] - X[:, 1])
    data = load_data(data_cfg(f"data.whiten={method}", source="npy", x_path=str(tmp_path / "X.npy"),
                              y_path=str(tmp_path / "y.npy")))
    n = len(X)
    np.testing.assert_allclose(data.X.T @ data.X / n, np.eye(4), rtol=0, atol=1e-10)
    Xc = X - X.mean(0)
    sigma = Xc.T @ Xc / n
    if method == "cholesky":  # Xw = Xc L^-T
        expected = Xc @ np.linalg.inv(np.linalg.cholesky(sigma)).T
    elif method == "zca":  # Xw = Xc Sigma^-1/2 (the symmetric root)
        expected = Xc @ np.linalg.inv(scipy.linalg.sqrtm(sigma).real)
    else:  # principal components by decreasing variance, each with its largest loading positive
        evals, evecs = np.linalg.eigh(sigma)
        for j in range(4):
            if evecs[np.argmax(np.abs(evecs[:, j])), j] < 0:
                evecs[:, j] *= -1
        expected = Xc @ evecs[:, ::-1] / np.sqrt(evals[::-1])
    np.testing.assert_allclose(data.X, expected, rtol=0, atol=1e-10)


def test_pca_components_and_ridge(tmp_path):
    X = correlated()
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", X[:, 0])
    files = dict(source="npy", x_path=str(tmp_path / "X.npy"), y_path=str(tmp_path / "y.npy"))
    top2 = load_data(data_cfg("data.whiten=pca", "data.whiten_components=2", **files))
    assert top2.X.shape == (60, 2)
    np.testing.assert_allclose(top2.X.T @ top2.X / 60, np.eye(2), rtol=0, atol=1e-10)
    synthetic = load_data(data_cfg("data.whiten=pca", "data.whiten_components=3", "data.d=5", "data.n=40"))
    assert synthetic.X.shape == (40, 3) and synthetic.y.shape == (40,)  # the teacher sees 3 columns
    ridged = load_data(data_cfg("data.whiten=zca", "data.whiten_ridge=0.5", **files))
    Xc = X - X.mean(0)
    sigma = Xc.T @ Xc / 60
    root = np.linalg.inv(scipy.linalg.sqrtm(sigma + 0.5 * np.eye(4)).real)
    np.testing.assert_allclose(ridged.X.T @ ridged.X / 60, root @ sigma @ root, rtol=0, atol=1e-10)


def test_target_centring_and_scaling(toy_files):
    X, y = toy()
    spec = SOURCES["npz"](toy_files)
    np.testing.assert_allclose(load_data(data_cfg(**spec)).y, y - y.mean(), atol=1e-14)
    np.testing.assert_array_equal(load_data(data_cfg("data.center_target=false", **spec)).y, y)
    scaled = load_data(data_cfg("data.scale_target=true", **spec)).y
    np.testing.assert_allclose(scaled, (y - y.mean()) / y.std(), atol=1e-14)
    data = load_data(data_cfg(**spec))
    assert data.facts.d == 3 and data.label_map is None
    np.testing.assert_array_equal(load_data(data_cfg("data.center=false", **spec)).X, X)  # as given


@pytest.mark.parametrize("labels, expected_map", [
    ([0, 1, 1, 0], {0: -1, 1: 1}),
    ([-1, 1, 1, -1], {-1: -1, 1: 1}),
    ([4, 2, 2, 4], {2: -1, 4: 1}),
    (["M", "B", "B", "M"], {"B": -1, "M": 1}),
    ([True, False, False, True], {False: -1, True: 1}),
])
def test_two_distinct_labels_map_to_minus_one_plus_one(tmp_path, labels, expected_map):
    y = np.array(labels * 5)
    np.savez(tmp_path / "d.npz", X=np.arange(40.0).reshape(20, 2) ** 1.5, y=y)
    data = load_data(data_cfg("data.task=classification", source="npz", path=str(tmp_path / "d.npz")))
    assert data.label_map == expected_map
    np.testing.assert_array_equal(data.y, [expected_map[v] for v in y.tolist()])
    assert all(f"{k!r} -> {v:+d}" in data.description for k, v in expected_map.items())


def test_csv_text_labels_header_detection_and_column_selection(tmp_path):
    text = "id,x1,x2,x3,class\n" + "".join(
        f"{i},{i * 0.5},{(i * 7) % 5}.25,{i ** 2},{'yes' if i % 3 else 'no'}\n" for i in range(12))
    path = tmp_path / "t.csv"
    path.write_text(text)
    spec = dict(source="csv", path=str(path), target="class", task="classification")
    kept = load_data(data_cfg(**spec, drop=["id", 3]))  # by name and by index
    expected = np.array([[i * 0.5, (i * 7) % 5 + 0.25] for i in range(12)])
    np.testing.assert_allclose(kept.X, expected - expected.mean(0), atol=1e-14)
    assert kept.label_map == {"no": -1, "yes": 1}
    np.testing.assert_array_equal(kept.y, [1 if i % 3 else -1 for i in range(12)])
    same = load_data(data_cfg(**{**spec, "target": -1}, columns=["x1", 2]))
    np.testing.assert_array_equal(same.X, kept.X)
    semicolons = tmp_path / "s.csv"
    semicolons.write_text(text.replace(",", ";"))
    same = load_data(data_cfg(**{**spec, "path": str(semicolons)}, delimiter=";", drop=["id", "x3"]))
    np.testing.assert_array_equal(same.X, kept.X)
    no_header = tmp_path / "n.csv"
    no_header.write_text("".join(text.splitlines(keepends=True)[1:]))
    for header in ("auto", "absent"):
        got = load_data(data_cfg(**{**spec, "path": str(no_header), "target": 4}, columns=[1, 2], header=header))
        np.testing.assert_array_equal(got.X, kept.X)


def test_breast_cancer_from_sklearn_maps_labels_to_plus_minus_one(tmp_path):
    cfg = data_cfg("data.task=classification", *STEPS, source="sklearn", name="breast_cancer")
    data = load_data(cfg)
    import sklearn.datasets
    bunch = sklearn.datasets.load_breast_cancer()
    assert data.X.shape == (569, 30) and data.label_map == {0: -1, 1: 1}  # malignant 0, benign 1
    np.testing.assert_array_equal(data.y, np.where(bunch.target == 1, 1.0, -1.0))
    assert (data.y == -1).sum() == 212 and (data.y == 1).sum() == 357
    np.testing.assert_allclose(data.X.std(0), 1.0, rtol=1e-12)
    train(cfg, tmp_path)  # square loss on the -1/+1 labels until the logistic loss exists
    X = (bunch.data - bunch.data.mean(0)) / bunch.data.std(0)
    assert_first_loss_is_closed_form(cfg, tmp_path, X, 2.0 * bunch.target - 1.0)


def test_shipped_csv_example_trains_from_the_command_line_and_spikes(tmp_path, monkeypatch, capsys):
    """configs/toy_csv.yaml as the README runs it, to just past the spike its comment describes."""
    monkeypatch.chdir(ROOT)  # the config's data path is relative to the repository root
    rc = cli.main(["train", "configs/toy_csv.yaml", "optim.steps=125", "log.progress=none",
                   "--run-dir", str(tmp_path / "run")])
    assert rc == 0
    assert "examples/data/toy.csv: n=200 d=5, features centred, standardised" in capsys.readouterr().out
    saved = config.load(tmp_path / "run" / "config.yaml")
    assert saved["data"]["path"] == "examples/data/toy.csv" and saved["data"]["standardize"] is True
    m = read_metrics(tmp_path / "run" / "metrics.csv")
    excess, es, norm = m["loss/excess"], m["stability/eta_sharpness"], m["norm/w"]
    assert 40 <= np.argmax(es > 2) <= 50 and np.all(m["stability/kappa"] < 2)
    rises = np.flatnonzero(np.diff(excess) > 0) + 1
    assert rises.size and 95 <= rises[0] <= 110  # monotone descent for ~100 steps, then the spike
    peak = 95 + int(np.argmax(excess[95:115]))
    assert excess[peak] > 2 * excess[:peak].min()
    assert norm[90] < 1.06 and norm[-1] > 1.45 and es[-1] < 2.5


def test_shipped_breast_cancer_config_shows_a_delayed_spike(tmp_path):
    """configs/breast_cancer_spike.yaml: the story its comment tells, on real data with -1/+1 labels."""
    cfg = config.load(ROOT / "configs" / "breast_cancer_spike.yaml",
                      ["optim.steps=260", "log.progress=none", "probes.sharpness_every=0"])
    train(cfg, tmp_path)
    m = read_metrics(tmp_path / "metrics.csv")
    excess, kappa, norm = m["loss/excess"], m["stability/kappa"], m["norm/w"]
    assert np.argmax(kappa > 2) == 70
    assert np.all(np.diff(excess[:200]) < 0)  # smooth descent long after the crossing
    peak = 200 + int(np.argmax(excess[200:]))
    assert 215 <= peak <= 240 and excess[peak] > 1000 * excess[:peak].min()
    assert norm[200] < 0.57 and norm[-1] > 0.63 and kappa[-1] < 1.8 and excess[-1] < 1e-4


def test_callable_kwargs_from_config_and_override():
    cfg = data_cfg("data.kwargs.d=2", source="callable", function="tests.datasets:toy", kwargs={"n": 30})
    assert cfg["data"]["kwargs"] == {"n": 30, "d": 2}
    X, y = toy(n=30, d=2)
    data = load_data(cfg)
    np.testing.assert_allclose(data.X, X - X.mean(0), atol=1e-14)
    np.testing.assert_allclose(data.y, y - y.mean(), atol=1e-14)
