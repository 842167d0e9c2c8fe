"""Interruption, SIGKILL and resume: a run stopped at a random step and resumed writes metrics
identical, byte for byte, to a run that was never stopped (float64, CPU).

The run is signalled by tests.signaller (a probe that sends a real signal to its own process at a
chosen step). Sharpness uses warm-started Lanczos (autograd, dense_max=0) so the probe's carried state,
its eigenvector and random generator, must survive the checkpoint too.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bnspike import checkpoint, cli, config, theory
from bnspike.loop import train
from bnspike.probes import Probe
from bnspike.sinks import read_metrics
from tests.conftest import CONFIGS, ROOT, assert_same_metrics

SPIKE = CONFIGS / "whitened_spike.yaml"
BASE = ["optim.steps=150", "probes.sharpness_every=25", "probes.sharpness_method=autograd", "probes.sharpness_dense_max=0",
        "log.progress=none"]
SIGNALLED = BASE + ["probes.extra=['tests.signaller:Signaller']"]
# The signalled step: random, past a checkpoint (every 25) and before the last sharpness step
# (125), so truncation, purge and the probe's state all matter. Failing asserts print it;
# BNSPIKE_TEST_STEP=<step> replays one.
SEEDS = {"seed": 0, "data.data_seed": 0, "model.w0_seed": 1, "optim.shuffle_seed": 0}
STEP = int(os.environ.get("BNSPIKE_TEST_STEP", 25 * random.randrange(1, 5) + random.randrange(3, 25)))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Thread count can change reduction order; every process here uses one (and it is faster)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference")
    summary = train(config.load(SPIKE, BASE), run_dir)
    assert summary["status"] == "finished" and summary["seeds"] == SEEDS
    return run_dir


def scalars(run_dir) -> dict:
    """Every TensorBoard scalar series as {tag: [(step, value), ...]}, as TensorBoard serves it."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_identical_to_reference(run_dir, reference):
    assert (run_dir / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes(), f"step {STEP}"
    # purge_step dropped the replayed steps: one point per step, no zig-zag, same values
    assert scalars(run_dir) == scalars(reference), f"step {STEP}"
    summary = json.loads((run_dir / "summary.json").read_text())
    expected = json.loads((reference / "summary.json").read_text())
    assert summary.pop("resumed_from_step") > 0 and summary == expected


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_signal_at_random_step_checkpoints_then_resume_is_bit_identical(reference, tmp_path, monkeypatch, sig):
    monkeypatch.setenv("BNSPIKE_TEST_SIGNAL", f"{STEP}:{sig}")
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    summary = train(config.load(SPIKE, SIGNALLED + ["checkpoint.every=40"]), run_dir)
    # the step in progress completes (it is logged), then the run stops before the next one
    assert summary["status"] == "interrupted"
    assert summary["stopped"] == {"step": STEP + 1, "signal": sig}
    assert read_metrics(run_dir / "metrics.csv")["step"].tolist() == list(range(STEP + 1))
    assert torch.load(run_dir / checkpoint.NAME, weights_only=True)["step"] == STEP + 1
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers  # put back

    monkeypatch.delenv("BNSPIKE_TEST_SIGNAL")
    assert cli.main(["resume", str(run_dir)]) == 0
    assert_identical_to_reference(run_dir, reference)


def train_with_ctrl_c_during_theory_map(monkeypatch, run_dir, times: int) -> int:
    """`bnspike train` with SIGINT sent `times` times as the theory map starts (before step 0)."""
    save = theory.save

    def interrupted_save(*args, **kwargs):
        for _ in range(times):
            signal.raise_signal(signal.SIGINT)
        return save(*args, **kwargs)

    monkeypatch.setattr(theory, "save", interrupted_save)
    return cli.main(["train", str(SPIKE), *BASE, "--run-dir", str(run_dir)])


def test_signal_before_step_0_leaves_a_resumable_run(reference, tmp_path, monkeypatch, capsys):
    """Ctrl-C while the theory map is computed (seconds, for a long run): the run stops at its
    first step with a checkpoint of the initial state, says so, and resumes to the same run."""
    run_dir = tmp_path / "run"
    assert train_with_ctrl_c_during_theory_map(monkeypatch, run_dir, times=1) == 130
    assert f"continue with: bnspike resume {run_dir}" in capsys.readouterr().err
    assert json.loads((run_dir / "summary.json").read_text())["stopped"] == {"step": 0, "signal": "SIGINT"}
    assert torch.load(run_dir / checkpoint.NAME, weights_only=True)["step"] == 0
    monkeypatch.undo()
    assert cli.main(["resume", str(run_dir)]) == 0
    assert (run_dir / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()
    assert scalars(run_dir) == scalars(reference)


def test_abort_before_any_checkpoint_says_there_is_nothing_to_resume(tmp_path, monkeypatch, capsys):
    """Ctrl-C twice during the theory map: no checkpoint exists, and the message says so."""
    run_dir = tmp_path / "run"
    assert train_with_ctrl_c_during_theory_map(monkeypatch, run_dir, times=2) == 130
    assert f"no checkpoint was written, nothing to resume: delete {run_dir}" in capsys.readouterr().err


def test_resume_keeps_minibatch_order_momentum_and_schedule(tmp_path, monkeypatch):
    """Mini-batches (the epoch's remaining batches and the shuffle generator), heavy-ball
    momentum and a cosine schedule all carry state across the checkpoint."""
    sgd = ["optim.steps=150", "optim.batch_size=48", "optim.momentum=0.9", "optim.schedule=cosine",
           "probes.sharpness_every=0", "log.progress=none", "checkpoint.every=0"]
    (tmp_path / "ref").mkdir()
    train(config.load(SPIKE, sgd), tmp_path / "ref")
    monkeypatch.setenv("BNSPIKE_TEST_SIGNAL", f"{STEP}:SIGTERM")
    (tmp_path / "run").mkdir()
    cfg = config.load(SPIKE, sgd + ["probes.extra=['tests.signaller:Signaller']"])
    assert train(cfg, tmp_path / "run")["stopped"] == {"step": STEP + 1, "signal": "SIGTERM"}
    monkeypatch.delenv("BNSPIKE_TEST_SIGNAL")
    assert train(cfg, tmp_path / "run", resume=True)["status"] == "finished"
    ref, run = (tmp_path / "ref" / "metrics.csv").read_bytes(), (tmp_path / "run" / "metrics.csv").read_bytes()
    assert b"loss/batch" in ref and run == ref, f"step {STEP}"


def test_second_ctrl_c_aborts_at_once(tmp_path, monkeypatch, capsys):
    """Ctrl-C twice: no waiting for the step, exit 130, the last checkpoint left for resume."""
    monkeypatch.setenv("BNSPIKE_TEST_SIGNAL", f"{STEP}:SIGINT:2")
    handler = signal.getsignal(signal.SIGINT)
    code = cli.main(["train", str(SPIKE), *SIGNALLED, "checkpoint.every=25", "--run-dir", str(tmp_path / "r")])
    assert code == 130 and "aborted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is handler
    assert not (tmp_path / "r" / "summary.json").exists()  # the aborted step was never completed
    assert read_metrics(tmp_path / "r" / "metrics.csv")["step"].tolist() == list(range(STEP))
    assert torch.load(tmp_path / "r" / checkpoint.NAME, weights_only=True)["step"] == STEP // 25 * 25


def test_sigkill_leaves_readable_logs_and_resume_is_bit_identical(reference, tmp_path, capsys):
    run_dir = tmp_path / "killed run"  # a space: the CLI and the run directory must cope
    env = {**os.environ, "BNSPIKE_TEST_SIGNAL": f"{STEP}:SIGKILL", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # every row is flushed, so the rows after the checkpoint are on disk and resume must cut them
    proc = subprocess.run([sys.executable, "-m", "bnspike.cli", "train", str(SPIKE), *SIGNALLED,
                           "checkpoint.every=25", "log.flush_secs=1e-9", "--run-dir", str(run_dir)],
                          env=env, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (run_dir / "summary.json").exists()
    last_checkpoint = STEP // 25 * 25
    assert torch.load(run_dir / checkpoint.NAME, weights_only=True)["step"] == last_checkpoint

    # metrics.csv: every row before the killed step (probes run before the sinks), values exact
    ref = read_metrics(reference / "metrics.csv")
    text = (run_dir / "metrics.csv").read_text()
    m = read_metrics(run_dir / "metrics.csv")
    assert m["step"].tolist() == list(range(STEP)) and text.count("\n") == STEP + 1, f"step {STEP}"
    assert_same_metrics(m, {k: v[:STEP] for k, v in ref.items()})
    # a write torn mid-line (the OS, not this writer, decides where a dying write stops)
    torn = tmp_path / "torn.csv"
    torn.write_text(text + text.splitlines()[-1][: len(text.splitlines()[-1]) // 2])
    assert_same_metrics(read_metrics(torn), m)

    # the event file: readable, consecutive steps, float32 of the CSV values
    events = scalars(run_dir)
    steps = [s for s, _ in events["loss/train"]]
    assert steps == list(range(len(steps))) and last_checkpoint <= len(steps) <= STEP, f"step {STEP}"
    assert [v for _, v in events["loss/train"]] == np.float32(ref["loss/train"][: len(steps)]).tolist()

    # TensorBoard reads a run's event files in name order (creation second, host, pid). A resume
    # in the kill's second can be named before the killed file, and its purge would be read
    # first: rename the killed file as if it were created in the coming second by a host that
    # sorts last; the resumed file must still sort after it
    (old,) = run_dir.glob("events.out.tfevents.*")
    old.rename(old.with_name(f"events.out.tfevents.{int(time.time()) + 1}.~.1.0"))
    assert cli.main(["resume", str(run_dir)]) == 0  # in this process: the CLI path, no second startup
    assert "resuming" in capsys.readouterr().out
    assert_identical_to_reference(run_dir, reference)


def test_same_config_and_seed_give_identical_metrics(reference, tmp_path):
    """Seeds: a second uninterrupted run reproduces the first byte for byte (CPU)."""
    summary = train(config.load(SPIKE, BASE), tmp_path)
    assert summary["seeds"] == SEEDS
    assert (tmp_path / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()
    assert config.load(tmp_path / "config.yaml") == config.load(reference / "config.yaml")


def test_resume_refuses_finished_and_diverged_runs_and_missing_checkpoints(reference, tmp_path, capsys):
    assert cli.main(["resume", str(reference)]) == 2
    assert "already finished" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_bytes((reference / "config.yaml").read_bytes())
    (tmp_path / "summary.json").write_text('{"status": "diverged"}')
    assert cli.main(["resume", str(tmp_path)]) == 2
    assert "diverged; resuming would repeat it" in capsys.readouterr().err
    (tmp_path / "summary.json").unlink()
    assert cli.main(["resume", str(tmp_path)]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_checkpoint_of_another_dtype_is_refused_naming_both(tmp_path):
    """load_state_dict would cast float32 into the float64 model silently: refused instead."""
    train(config.load(SPIKE, BASE + ["optim.steps=3", "model.dtype=float32"]), tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match=r"'linear.weight' is torch.float32 \(1, 16\) in the "
                                                         r"checkpoint but torch.float64 \(1, 16\) in the model"):
        train(config.load(SPIKE, BASE + ["optim.steps=3"]), tmp_path, resume=True)


def test_checkpoint_with_missing_metrics_rows_is_refused(reference, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    train(config.load(SPIKE, BASE + ["optim.steps=30", "checkpoint.every=20"]), run_dir)
    (run_dir / "metrics.csv").write_text("step,loss/train\n0,1.0\n")  # rows lost after the checkpoint
    with pytest.raises(checkpoint.CheckpointError, match="shorter than the .* bytes flushed at the checkpoint "
                                                         r"\(step 20\); logged rows are missing"):
        train(config.load(run_dir / "config.yaml"), run_dir, resume=True)


def files(run_dir) -> dict:
    """Every file of a run directory, name -> bytes."""
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir())}


class ResumesMidRun(Probe):
    """At step 15, with the step-10 checkpoint on disk, runs `bnspike resume` on the run it is
    probing (a second writer while the first trains) and keeps its exit code and the files
    before and after it."""
    run_dir = None
    seen: dict = {}

    def __call__(self, state):
        if state.step == 15:
            before = files(self.run_dir)
            ResumesMidRun.seen = {"code": cli.main(["resume", str(self.run_dir)]),
                                  "before": before, "after": files(self.run_dir)}
        return {}


def test_resume_while_the_run_trains_is_refused_and_touches_nothing(tmp_path, capsys):
    ResumesMidRun.run_dir, ResumesMidRun.seen = tmp_path, {}
    summary = train(config.load(SPIKE, BASE + ["optim.steps=30", "checkpoint.every=10",
                                               "probes.extra=['tests.test_resume:ResumesMidRun']"]), tmp_path)
    seen = ResumesMidRun.seen
    assert seen["code"] == 2
    assert f"bnspike: error: {tmp_path}: another bnspike process is using this run directory" in capsys.readouterr().err
    assert {"metrics.csv", checkpoint.NAME, checkpoint.LOCK} <= set(seen["before"]) and seen["after"] == seen["before"]
    # the first writer went on undisturbed
    assert summary["status"] == "finished" and read_metrics(tmp_path / "metrics.csv")["step"].tolist() == list(range(30))


def test_run_directory_locked_by_another_process_is_refused_until_that_process_dies(tmp_path, capsys):
    train(config.load(SPIKE, BASE + ["optim.steps=30", "checkpoint.every=20"]), tmp_path)
    (tmp_path / "summary.json").unlink()  # as if killed after its step-20 checkpoint
    holder = subprocess.Popen([sys.executable, "-c", "import pathlib, sys\nfrom bnspike import checkpoint\n"
                               f"with checkpoint.locked(pathlib.Path({str(tmp_path)!r})):\n"
                               "    print('locked', flush=True)\n    sys.stdin.read()"],
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        before = files(tmp_path)
        assert cli.main(["resume", str(tmp_path)]) == 2
        assert f"{tmp_path}: another bnspike process is using this run directory" in capsys.readouterr().err
        assert files(tmp_path) == before
    finally:
        holder.kill()  # SIGKILL: no cleanup, the OS releases the lock
        holder.wait()
    assert cli.main(["resume", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["resumed_from_step"] == 20
    assert read_metrics(tmp_path / "metrics.csv")["step"].tolist() == list(range(30))
