"""Command line: `bnspike train|theory CONFIG [key=value ...]`, `bnspike report|resume RUN_DIR`.

Exit codes: 0 finished, 1 unexpected error (traceback), 2 bad config, data or run directory
(nothing trained), 3 diverged (NaN/inf; step and cause in summary.json), 128 + signal number
when interrupted (130 SIGINT, 143 SIGTERM: a checkpoint was written, `bnspike resume` continues).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import pathlib
import shlex
import signal
import sys

from . import checkpoint, config
from .data import DataError


def new_run_dir(root: pathlib.Path, name: str) -> pathlib.Path:
    """runs/<name>-<timestamp>, suffixed -2, -3 ... rather than ever reusing a directory."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    root.mkdir(parents=True, exist_ok=True)
    for k in range(1, 1000):
        path = root / (f"{name}-{stamp}" if k == 1 else f"{name}-{stamp}-{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a fresh run directory under {root}")


def claim_run_dir(path: pathlib.Path) -> pathlib.Path:
    if path.exists():
        raise FileExistsError(f"--run-dir {path} already exists; bnspike never overwrites a run "
                              "(choose another directory or delete this one yourself)")
    path.mkdir(parents=True)
    return path


def cmd_train(args) -> int:
    from .loop import train  # torch import deferred so config errors print instantly

    cfg = config.load(args.config, args.overrides)
    run_dir = args.run_dir = claim_run_dir(args.run_dir) if args.run_dir else new_run_dir(args.runs_root, cfg["name"])
    print(f"bnspike: run directory {run_dir}", flush=True)
    try:
        summary = train(cfg, run_dir)
    except BaseException:
        # only if training failed before writing anything but the lock file: never lose data.
        # The directory is this process's own, fresh and unresumable: nobody else holds its lock.
        with contextlib.suppress(OSError):
            if [p.name for p in run_dir.iterdir()] == [checkpoint.LOCK]:
                (run_dir / checkpoint.LOCK).unlink()
            run_dir.rmdir()
            print(f"bnspike: nothing was written; removed {run_dir}", file=sys.stderr)
        raise
    return outcome(summary, run_dir)


def cmd_theory(args) -> int:
    """The prediction table from the data moments alone: numpy only, no torch, no training."""
    from . import theory
    from .data import load_data

    cfg = config.load(args.config, args.overrides)
    facts = load_data(cfg).facts
    unmodelled = theory.outside(cfg, facts)
    if unmodelled:
        raise config.ConfigError(f"{args.config}: the theory models full-batch gradient descent on the "
                                 f"square-loss BN model; this run has {unmodelled}")
    problem = theory.problem(cfg, facts)
    print(theory.format_table(theory.predict(problem)))
    return 0


def cmd_report(args) -> int:
    from . import report

    if not (args.run_dir / "metrics.csv").is_file():
        raise FileNotFoundError(f"{args.run_dir}: no metrics.csv here; is it a bnspike run directory?")
    path, _ = report.write(args.run_dir)
    print(f"bnspike: wrote {path}")
    return 0


def cmd_resume(args) -> int:
    from .loop import train

    checkpoint.check_resumable(args.run_dir)
    cfg = config.load(args.run_dir / "config.yaml")
    print(f"bnspike: resuming {args.run_dir}", flush=True)
    return outcome(train(cfg, args.run_dir, resume=True), args.run_dir)


def outcome(summary: dict, run_dir: pathlib.Path) -> int:
    """Print what happened; return the exit code that says it."""
    from . import analysis, report

    print(analysis.table(summary))
    stopped = summary.get("stopped", {})
    if summary["status"] == "interrupted":
        print(f"bnspike: interrupted by {stopped['signal']} before step {stopped['step']}; checkpoint "
              f"written; continue with: bnspike resume {shlex.quote(str(run_dir))}", file=sys.stderr)
        return 128 + signal.Signals[stopped["signal"]].value
    if (run_dir / report.FILE).is_file():
        print(f"bnspike: summary in {run_dir / 'summary.json'}, figure in {run_dir / report.FILE}")
    if summary["status"] == "diverged":
        print(f"bnspike: diverged at step {stopped['step']}: {stopped['cause']}; metrics before it are in "
              f"{run_dir}", file=sys.stderr)
        return 3
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bnspike", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a config and log every step")
    p.add_argument("config", type=pathlib.Path, help="YAML config, e.g. configs/whitened_spike.yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr_w=2.5")
    p.add_argument("--run-dir", type=pathlib.Path, help="exact run directory (must not exist)")
    p.add_argument("--runs-root", type=pathlib.Path, default=pathlib.Path("runs"))
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("theory", help="print the theory's prediction for a config (no training)")
    p.add_argument("config", type=pathlib.Path)
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.set_defaults(func=cmd_theory)
    p = sub.add_parser("report", help="draw RUN_DIR/report.png (loss, stability, direction, geometry)")
    p.add_argument("run_dir", type=pathlib.Path)
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("resume", help="continue an interrupted or killed run from its checkpoint")
    p.add_argument("run_dir", type=pathlib.Path, help="the run directory, e.g. runs/whitened_spike-...")
    p.set_defaults(func=cmd_resume)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also come after options such as --run-dir
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except (config.ConfigError, DataError, FileExistsError, FileNotFoundError,
            checkpoint.CheckpointError) as e:
        print(f"bnspike: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C: no checkpoint for the step in progress
        print(f"bnspike: aborted{_what_is_left(getattr(args, 'run_dir', None))}", file=sys.stderr)
        return 130


def _what_is_left(run_dir: pathlib.Path | None) -> str:
    """After an abort: whether `bnspike resume` has a checkpoint to continue from."""
    if run_dir is None or not run_dir.is_dir():
        return ""  # nothing was started, or train removed its empty directory
    if (run_dir / checkpoint.NAME).is_file():
        return f"; `bnspike resume {shlex.quote(str(run_dir))}` continues from its last checkpoint"
    return f"; no checkpoint was written, nothing to resume: delete {shlex.quote(str(run_dir))} and train again"


if __name__ == "__main__":
    sys.exit(main())
