"""The command line as a user types it."""
import json
import pathlib
import subprocess
import sys

import pytest
import yaml

from tests.conftest import CONFIGS, ROOT

BNSPIKE = [sys.executable, "-m", "bnspike.cli"]


def bnspike(*args, cwd=ROOT):
    return subprocess.run([*BNSPIKE, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_train_with_overrides_writes_one_run_directory(tmp_path):
    r = bnspike("train", CONFIGS / "whitened_spike.yaml", "optim.steps=30", "optim.lr_w=2.5",
                "--runs-root", tmp_path, "name=cli test")  # overrides may also follow options
    assert r.returncode == 0, r.stderr
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.startswith("cli test-")
    assert f"run directory {run_dir}" in r.stdout
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["optim"]["lr_w"] == 2.5 and cfg["optim"]["steps"] == 30 and cfg["model"]["eps"] == 1e-10
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["logged_steps"] == 30
    assert (run_dir / "metrics.csv").read_text().count("\n") == 31
    assert list(run_dir.glob("events.out.tfevents.*"))
    # not a terminal: plain progress lines, the last step included
    assert "step      29/30" in r.stderr


def test_existing_run_directory_is_never_overwritten(tmp_path):
    run_dir = tmp_path / "mine"
    run_dir.mkdir()
    (run_dir / "metrics.csv").write_text("precious\n")
    r = bnspike("train", CONFIGS / "whitened_spike.yaml", "optim.steps=3", "--run-dir", run_dir)
    assert r.returncode == 2
    assert "already exists" in r.stderr and str(run_dir) in r.stderr
    assert (run_dir / "metrics.csv").read_text() == "precious\n"
    assert sorted(p.name for p in run_dir.iterdir()) == ["metrics.csv"]


def test_unknown_option_is_refused(tmp_path):
    r = bnspike("train", CONFIGS / "whitened_spike.yaml", "--bogus", "--runs-root", tmp_path)
    assert r.returncode == 2 and "unrecognized arguments: --bogus" in r.stderr
    assert not any(tmp_path.iterdir())


def test_bad_override_names_the_key_and_writes_nothing(tmp_path):
    r = bnspike("train", CONFIGS / "whitened_spike.yaml", "optim.lr_ww=2", "--runs-root", tmp_path)
    assert r.returncode == 2
    assert "optim.lr_ww" in r.stderr and "optim.lr_w" in r.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda_is_a_clear_error(tmp_path):
    r = bnspike("train", CONFIGS / "whitened_spike.yaml", "model.device=cuda", "--runs-root", tmp_path)
    assert r.returncode == 2
    assert "model.device" in r.stderr and "no CUDA device" in r.stderr
    assert not any(tmp_path.iterdir())  # the fresh run directory was removed again


def test_make_train_passes_config_and_args(tmp_path):
    run_dir = tmp_path / "via make"
    r = subprocess.run(["make", "-s", "train", f"CONFIG={CONFIGS / 'whitened_no_spike.yaml'}",
                        f'ARGS=optim.steps=7 --run-dir "{run_dir}"'],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["lr_w"] == 0.2
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 7


def test_a_probe_that_cannot_be_imported_is_a_config_error(tmp_path, capsys):
    from bnspike import cli
    run_dir = tmp_path / "r"
    code = cli.main(["train", str(CONFIGS / "whitened_spike.yaml"), "probes.extra=['mypackage.probes:WeightMax']",
                     "--run-dir", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "probes.extra: cannot load 'mypackage.probes:WeightMax': No module named 'mypackage'" in err
    assert "PYTHONPATH" in err and not run_dir.exists()  # nothing was written: the fresh directory is gone
    assert f"nothing was written; removed {run_dir}" in err


@pytest.mark.parametrize("make", [False, True])
def test_resume_of_a_directory_that_is_not_a_run_says_so(tmp_path, capsys, make):
    from bnspike import cli
    run_dir = tmp_path / "not-a-run"
    if make:
        run_dir.mkdir()
    assert cli.main(["resume", str(run_dir)]) == 2
    expected = "no config.yaml here" if make else "no such directory"
    assert f"{run_dir}: {expected}; is it a bnspike run directory?" in capsys.readouterr().err
