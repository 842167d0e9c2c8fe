"""`make bench`: what bnspike's per-step instrumentation costs against a bare PyTorch loop.

For each (n, d) it times, in fresh processes, interleaved round by round (the median is kept):
  (a) a hand-written full-batch GD loop for the same model: no probes, no logging;
  (b) bnspike `train()` with every built-in probe except sharpness, TensorBoard + CSV every step;
  (c) the same plus sharpness every step (exact closed form: the default for this model);
  (d) (c) with probes.sharpness_method=autograd, what any other model or loss gets;
  (e) once per size: (a) with the model through torch.compile, against (a) eager.
A step's cost is the slope of process CPU time between a short and a long run (on a quiet
machine with one torch thread CPU time is the wall time; on a shared machine it is far less
noisy), so what every run pays once (theory, report figure) is reported apart.
It also measures the cost of each part of (b) on a real step state, the event-file bytes per
scalar point (against SummaryWriter.add_scalar's encoding), and peak resident memory of (a) and
(b), and of (b) at two run lengths. Torch runs on ONE thread everywhere (stated in the table).
Writes bench/results.md and bench/results.json. Not part of `make test`: timings are never
asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZES = [(1000, 16), (1000, 256), (20000, 64)]
VARIANTS = {"a": "bare PyTorch loop", "b": "bnspike, all probes but sharpness", "c": "bnspike, all probes",
            "d": "bnspike, all probes, sharpness by autograd (any model and loss)"}


def overrides(n: int, d: int, steps: int, variant: str) -> list[str]:
    """The default config on non-whitened data (Sigma spectrum 1..10), so the Hessian's top
    eigenvector moves and the sharpness solver has real work to do."""
    method = "autograd" if variant == "d" else "auto"
    return [f"data.n={n}", f"data.d={d}", "data.whiten=none", "data.spectrum=linear", f"optim.steps={steps}",
            f"probes.sharpness_every={int(variant in 'cd')}", f"probes.sharpness_method={method}",
            "log.progress=none"]


def load_cfg(n, d, steps, variant):
    from bnspike import config
    return config.load(ROOT / "configs" / "whitened_spike.yaml", overrides(n, d, steps, variant))


# ---------------------------------------------------------------- (a): the bare loop

def bare_loop(X, y, lr_w: float, lr_alpha: float, eps: float, steps: int, compiled: bool = False) -> float:
    """What a researcher writes without bnspike: same modules, same optimizer, nothing logged.
    `compiled`: the model through torch.compile (variant e: does a compiled step pay here?)."""
    import torch
    from torch import nn

    d = X.shape[1]
    linear = nn.Linear(d, 1, bias=False).to(X.dtype)
    bn = nn.BatchNorm1d(1, eps=eps).to(X.dtype)
    bn.bias.requires_grad_(False)
    model = nn.Sequential(linear, bn)
    forward = torch.compile(model) if compiled else model
    opt = torch.optim.SGD([{"params": [linear.weight], "lr": lr_w}, {"params": [bn.weight], "lr": lr_alpha}])
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = 0.5 * ((forward(X).squeeze(-1) - y) ** 2).mean()
        loss.backward()
        opt.step()
    return loss.item()


def child(variant: str, n: int, d: int, steps: int) -> dict:
    """One timed run in this (fresh) process; prints JSON."""
    import torch
    torch.set_num_threads(1)
    from bnspike.data import load_data

    warm_up = variant != "m"  # "m": (b) with nothing run before it, for memory
    variant = "b" if variant == "m" else variant
    cfg = load_cfg(n, d, steps, variant)
    out = {}
    if variant in "ae":  # imports nothing of bnspike's loop, probes or sinks
        data = load_data(cfg)
        X, y = torch.as_tensor(data.X), torch.as_tensor(data.y)
        args = (X, y, cfg["optim"]["lr_w"], cfg["optim"]["lr_alpha"], cfg["model"]["eps"])
        c0 = time.process_time()
        # warm-up: torch's one-time lazy initialisation (and e's compilation) is not a per-step cost
        bare_loop(*args, 3, compiled=variant == "e")
        out["warm_up_cpu_seconds"] = time.process_time() - c0
        if variant == "e":  # the same process, eager then compiled: one comparison under one load
            c0 = time.process_time()
            bare_loop(*args, steps)
            out["eager_cpu_seconds"] = time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        bare_loop(*args, steps, compiled=variant == "e")
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    else:
        from bnspike import analysis, dashboard, loop, theory
        from bnspike.sinks import read_metrics

        # The theory beside the run, the end-of-run analysis and the report figure are timed
        # apart ("side"), so what the per-step instrumentation costs can be told from them.
        out["side_cpu_seconds"] = 0.0

        def timed(fn):
            def wrapper(*a, **k):
                c0 = time.process_time()
                try:
                    return fn(*a, **k)
                finally:
                    out["side_cpu_seconds"] += time.process_time() - c0
            return wrapper

        # what the loop calls: the reference map is computed, saved and predicted from as
        # dashboard.start consumes it
        for module, name in ((theory, "problem"), (theory, "save"), (dashboard, "start"), (dashboard, "finish"),
                             (analysis, "load_run"), (analysis, "summarize")):
            setattr(module, name, timed(getattr(module, name)))
        load_run = analysis.load_run

        def peak_then_load(run_dir):  # the peak of training itself, before the run is read back
            out.setdefault("train_rss_mb", peak_rss_mb())  # the first call: later ones read the run
            return load_run(run_dir)

        analysis.load_run = peak_then_load
        train = loop.train

        with tempfile.TemporaryDirectory() as tmp:
            warm, run_dir = pathlib.Path(tmp) / "warm-up", pathlib.Path(tmp) / "run"
            warm.mkdir()
            run_dir.mkdir()
            if warm_up:
                train(load_cfg(n, d, 3, variant), warm)
            out["side_cpu_seconds"] = 0.0
            t0, c0 = time.perf_counter(), time.process_time()
            summary = train(cfg, run_dir)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            out["run_rss_mb"] = peak_rss_mb()  # the whole run, before this benchmark reads it back
            out["event_bytes"], out["scalar_points"] = scalar_event_bytes(run_dir)
            out["csv_bytes"] = (run_dir / "metrics.csv").stat().st_size
            metrics = read_metrics(run_dir / "metrics.csv")
            out["tags"] = [t for t in metrics if t != "step"]
            out["logged_steps"] = summary["logged_steps"]
            if "stability/sharpness_products" in metrics:
                out["products_per_step"] = statistics.mean(metrics["stability/sharpness_products"])
    out.update(seconds=seconds, cpu_seconds=cpu, steps=steps, max_rss_mb=peak_rss_mb())
    return out


def scalar_event_bytes(run_dir: pathlib.Path) -> tuple[int, int]:
    """(bytes of the TFRecords holding the run's scalars, number of scalar values in them), all event
    files; the theory overlay and the markers are left out, so that the tags match the standard's."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event

    size = points = 0
    for path in run_dir.glob("events.out.tfevents.*"):
        for raw in RawEventFileLoader(str(path)).Load():
            values = [v for v in Event.FromString(raw).summary.value if v.HasField("simple_value")]
            if values and not any(v.tag.startswith(("theory/", "markers/")) for v in values):
                size, points = size + len(raw) + 16, points + len(values)  # 16: the record framing
    return size, points


def import_rss() -> dict:
    """Resident memory after importing torch alone, then bnspike's training loop and all it uses."""
    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    import torch  # noqa: F401
    torch_mb = rss()
    import bnspike.loop  # noqa: F401
    return {"torch": torch_mb, "torch_and_bnspike": rss()}


def peak_rss_mb() -> float:
    """This process's peak resident memory. Not getrusage's ru_maxrss: that survives exec, so a
    child would report its parent's peak when the parent's was larger."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: an upper bound


def spawn(variant: str, n: int, d: int, steps: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, __file__, "--child", variant, str(n), str(d), str(steps)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"benchmark child {variant} {n}x{d} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- parts of (b), in process

def part_costs(n: int, d: int, repeats: int) -> dict[str, float]:
    """Median microseconds of each part of a logged step, on a real state after 20 steps."""
    import functools

    import torch
    torch.set_num_threads(1)
    from bnspike.data import load_data
    from bnspike.loop import _gather, hvp_at
    from bnspike.losses import square_loss
    from bnspike.optim import build_optimizer
    from bnspike.model import build_model
    from bnspike.probes import Mechanism, RunContext, Sharpness, StepState
    from bnspike.sinks import CSVSink, TensorBoardSink

    cfg = load_cfg(n, d, 20, "c")
    data = load_data(cfg)
    model = build_model(cfg, d)
    X, y = torch.as_tensor(data.X), torch.as_tensor(data.y)
    opt = build_optimizer(cfg, model)
    run = RunContext(cfg, data, model, torch.float64, torch.device("cpu"))
    for _ in range(21):
        opt.zero_grad()
        loss = square_loss(model(X), y)
        loss.backward()
        w, g = model.w.detach().flatten().clone(), model.w.grad.flatten().clone()
        alpha, beta = model.alpha.detach()[0].clone(), model.beta.detach()[0].clone()
        opt.step()

    def state():
        return StepState(step=20, loss=loss.detach(), w=w, w_next=model.w.detach().flatten(), grad_w=g,
                         alpha=alpha, beta=beta, lr_w=cfg["optim"]["lr_w"],
                         hvp=functools.cache(lambda: hvp_at(model, X, y, square_loss, w, alpha.view(1), beta.view(1))))

    mech, sharp, sharp_autograd = Mechanism(), Sharpness(), Sharpness()
    mech.setup(run)
    sharp.setup(run)
    sharp_autograd.setup(RunContext(load_cfg(n, d, 20, "d"), data, model, torch.float64, torch.device("cpu")))
    sharp_autograd(state())  # the warm start a running probe has

    def timed(fn, k):
        fn()
        ts = []
        for _ in range(k):
            t0 = time.process_time()
            fn()
            ts.append(time.process_time() - t0)
        return statistics.median(ts) * 1e6

    s = state()
    values = {**mech(s), **sharp(s)}
    row = _gather(values)
    out = {"mechanism probe": timed(lambda: mech(s), repeats),
           "sharpness probe, closed form": timed(lambda: sharp(state()), repeats // 10),
           "sharpness probe, autograd (warm start)": timed(lambda: sharp_autograd(state()), max(3, repeats // 100)),
           "gather (one host sync)": timed(lambda: _gather(values), repeats)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cls in (("TensorBoard sink", TensorBoardSink), ("CSV sink", CSVSink)):
            path = pathlib.Path(tmp) / name.split()[0]
            path.mkdir()
            sink = cls(path, 3600.0)
            k = 5000
            t0 = time.process_time()
            for i in range(k):
                sink.write(i, row)
            sink.close()  # the batched write happens here: counted
            out[name + " (per row, incl. flush)"] = (time.process_time() - t0) / k * 1e6
    return out


def standard_event_bytes(tags: list[str], steps: int = 200) -> dict[str, float]:
    """Bytes per scalar point of SummaryWriter for the same tags: add_scalar per tag, and one
    Summary per step (what bnspike writes, by hand)."""
    from torch.utils.tensorboard import SummaryWriter
    from tensorboard.compat.proto.summary_pb2 import Summary

    out = {}
    for how in ("add_scalar", "one_summary"):
        with tempfile.TemporaryDirectory() as tmp:
            writer = SummaryWriter(tmp)
            for step in range(steps):
                if how == "add_scalar":
                    for t in tags:
                        writer.add_scalar(t, 0.5, step)
                else:
                    writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=t, simple_value=0.5) for t in tags]), step)
            writer.close()
            size = sum(p.stat().st_size for p in pathlib.Path(tmp).glob("events*"))
            out[how] = size / (steps * len(tags))
    return out


# ---------------------------------------------------------------- report

def machine() -> dict:
    import torch
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "torch_threads": 1, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "git": commit,
            "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "load_avg_start": os.getloadavg()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="rounds of (a, b, c, d); the median is kept")
    p.add_argument("--seconds", type=float, default=3.0, help="target CPU time of the long run of each variant")
    p.add_argument("--memory-steps", type=int, nargs=2, default=[10_000, 100_000],
                   help="two run lengths of (b) at (1000, 16) for the memory slope")
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "bench")
    p.add_argument("--sizes", nargs="+", default=[f"{n}x{d}" for n, d in SIZES], help="n x d, e.g. 1000x16")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    p.add_argument("--render", type=pathlib.Path, help="only rewrite results.md from this results.json")
    args = p.parse_args()
    if args.render:
        report = json.loads(args.render.read_text())
        (args.out / "results.md").write_text(markdown(report, report["memory_steps"]))
        return
    if args.child:
        v, n, d, steps = args.child
        print(json.dumps(import_rss() if v == "imports" else child(v, int(n), int(d), int(steps))))
        return

    info = machine()
    results = []
    for n, d in (map(int, s.split("x")) for s in args.sizes):
        # Per-step cost = slope between a short and a long run (CPU time), so the per-run fixed
        # cost (theory, report figure, ...) is reported apart. Lengths aim at --seconds each.
        parts = part_costs(n, d, 2000)
        a_us = spawn("a", n, d, 200)["cpu_seconds"] / 200 * 1e6
        b_us = a_us + sum(v for k, v in parts.items() if not k.startswith("sharpness")) + 50  # 50: the loop
        guess = {"a": a_us, "b": b_us, "c": b_us + parts["sharpness probe, closed form"],
                 "d": b_us + parts["sharpness probe, autograd (warm start)"]}
        steps = {v: max(40, int(args.seconds / (guess[v] * 1e-6))) for v in VARIANTS}
        runs = {v: [] for v in VARIANTS}
        for r in range(args.repeats):
            for v in VARIANTS:
                short, long = spawn(v, n, d, steps[v] // 4), spawn(v, n, d, steps[v])
                k = steps[v] - steps[v] // 4
                per_step = (long["cpu_seconds"] - short["cpu_seconds"]) / k
                side = (long.get("side_cpu_seconds", 0) - short.get("side_cpu_seconds", 0)) / k
                runs[v].append({**long, "us_per_step": per_step * 1e6, "side_us_per_step": side * 1e6,
                                "fixed_s": short["cpu_seconds"] - per_step * (steps[v] // 4)})
            print(f"{n}x{d} round {r + 1}: " + "  ".join(
                f"{v} {runs[v][-1]['us_per_step']:.0f} us" for v in VARIANTS), flush=True)
        us = {v: statistics.median(x["us_per_step"] for x in runs[v]) for v in VARIANTS}
        e = spawn("e", n, d, steps["a"])
        compiled = {"compiled_us": e["cpu_seconds"] / steps["a"] * 1e6, "eager_us": e["eager_cpu_seconds"] / steps["a"] * 1e6,
                    "compile_s": e["warm_up_cpu_seconds"]}
        b, dd = runs["b"][0], runs["d"][0]
        results.append({
            "n": n, "d": d, "steps": steps, "us_per_step": us,
            "fixed_cpu_s_per_run": {v: statistics.median(x["fixed_s"] for x in runs[v]) for v in VARIANTS},
            # per step, inside theory/dashboard/analysis: (b) minus this is the instrumentation
            "side_us_per_step": {v: statistics.median(x["side_us_per_step"] for x in runs[v]) for v in VARIANTS},
            "autograd_products_per_step": dd["products_per_step"],
            "steps_per_s": {v: 1e6 / us[v] for v in VARIANTS},
            # ratios within a round (measured minutes apart, under the same load), then the median
            **{f"{v}_over_a": statistics.median(x["us_per_step"] / y["us_per_step"] for x, y in zip(runs[v], runs["a"]))
               for v in "bcd"},
            "b_minus_side_over_a": statistics.median((x["us_per_step"] - x["side_us_per_step"]) / y["us_per_step"]
                                                     for x, y in zip(runs["b"], runs["a"])),
            "us_per_step_all": {v: [x["us_per_step"] for x in runs[v]] for v in VARIANTS},
            "tags": b["tags"], "event_bytes_per_point": b["event_bytes"] / b["scalar_points"],
            "event_bytes_per_1e5_steps": b["event_bytes"] / b["logged_steps"] * 1e5,
            "csv_bytes_per_1e5_steps": b["csv_bytes"] / b["logged_steps"] * 1e5,
            "max_rss_mb": {v: statistics.median(x.get("run_rss_mb", x["max_rss_mb"]) for x in runs[v]) for v in VARIANTS},
            "parts_us": parts, "torch_compile": compiled,
        })
    standard = standard_event_bytes(results[0]["tags"])
    lengths = sorted(args.memory_steps)
    memory = {"a": {str(k): spawn("a", 1000, 16, k)["max_rss_mb"] for k in lengths}}
    long_runs = {str(k): spawn("m", 1000, 16, k) for k in lengths}
    memory["b_training"] = {k: r["train_rss_mb"] for k, r in long_runs.items()}
    memory["b_whole_run"] = {k: r["run_rss_mb"] for k, r in long_runs.items()}
    memory["imports"] = spawn("imports", 0, 0, 0)
    info["load_avg_end"] = os.getloadavg()
    report = {"machine": info, "results": results, "standard_event_bytes_per_point": standard,
              "memory_steps": lengths, "peak_rss_mb_1000x16": memory}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(report, lengths))
    print((args.out / "results.md").read_text())


def markdown(rep: dict, lengths: list[int]) -> str:
    m = rep["machine"]
    lines = [f"Machine: {m['cpu']}, {m['logical_cores']} logical cores (shared; load average "
             f"{m['load_avg_start'][0]:.1f} at start, {m['load_avg_end'][0]:.1f} at end), torch {m['torch']} "
             f"on 1 thread, Python {m['python']}, commit {m['git']}, {m['date_utc']} UTC. "
             "Per-step cost: median over the rounds of the slope of process CPU time between a run of N/4 and N steps; "
             "ratios: median over the rounds of the ratio within a round.", "",
             "| n x d | (a) bare steps/s | (b) steps/s | (c) steps/s | b/a | b/a without theory | c/a | "
             "(d) autograd sharpness: d/a, Hessian-vector products / step | once per run, CPU s: a / b | "
             "event bytes / point | event MB / 1e5 steps | peak RSS a / b (MB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rep["results"]:
        s = r["steps_per_s"]
        lines.append(f"| {r['n']} x {r['d']} | {s['a']:.0f} | {s['b']:.0f} | {s['c']:.0f} | "
                     f"{r['b_over_a']:.2f} | {r['b_minus_side_over_a']:.2f} | {r['c_over_a']:.2f} | {r['d_over_a']:.1f}, "
                     f"{r['autograd_products_per_step']:.1f} | "
                     f"{r['fixed_cpu_s_per_run']['a']:.2f} / {r['fixed_cpu_s_per_run']['b']:.2f} | "
                     f"{r['event_bytes_per_point']:.1f} | "
                     f"{r['event_bytes_per_1e5_steps'] / 1e6:.1f} | {r['max_rss_mb']['a']:.0f} / {r['max_rss_mb']['b']:.0f} |")
    std = rep["standard_event_bytes_per_point"]
    lines += ["", f"Standard TensorBoard encoding of the same tags: {std['add_scalar']:.1f} bytes per point "
              f"with one add_scalar per tag, {std['one_summary']:.1f} with one Summary per step.", "",
              "Cost of each part of a logged step (microseconds, median, on a real state):", "",
              "| part | " + " | ".join(f"{r['n']} x {r['d']}" for r in rep["results"]) + " |",
              "|---|" + "---|" * len(rep["results"])]
    for part in rep["results"][0]["parts_us"]:
        lines.append(f"| {part} | " + " | ".join(f"{r['parts_us'][part]:.1f}" for r in rep["results"]) + " |")
    lines += ["", "(e) Does a compiled step pay? The bare loop (a) with its model through torch.compile, "
              "against the same loop eager, in one process (microseconds per step, CPU):", "",
              "| n x d | eager | torch.compile | compile time, CPU s |", "|---|---|---|---|"]
    for r in rep["results"]:
        c = r["torch_compile"]
        lines.append(f"| {r['n']} x {r['d']} | {c['eager_us']:.0f} | {c['compiled_us']:.0f} | {c['compile_s']:.1f} |")
    mem, (short, long) = rep["peak_rss_mb_1000x16"], rep["memory_steps"]
    lines += ["", "Peak resident memory at 1000 x 16 (MB):", "", "| run | " + f"{short} steps | {long} steps | difference |", "|---|---|---|---|"]
    names = {"a": "(a) bare loop", "b_training": "(b) bnspike, end of training",
             "b_whole_run": "(b) bnspike, whole run (with the end-of-run summary and report)"}
    for key, label in names.items():
        lo, hi = mem[key][str(short)], mem[key][str(long)]
        lines.append(f"| {label} | {lo:.1f} | {hi:.1f} | {hi - lo:+.1f} |")
    imp = mem["imports"]
    lines += ["", f"Resident memory after `import torch`: {imp['torch']:.0f} MB; after also importing "
              f"bnspike's loop (and all it imports): {imp['torch_and_bnspike']:.0f} MB.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
