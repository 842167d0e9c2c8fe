"""`make bench`: what bnspike's per-step instrumentation costs against a bare PyTorch loop.

For each (n, d):
  (a) a hand-written full-batch GD loop for the same model: no probes, no logging;
  (u) bnspike `train()` logging only its first and last step (probes.every = steps): the
      loop's own step, without the instrumentation;
  (b) bnspike `train()` with every built-in probe except sharpness, TensorBoard + CSV every step;
  (c) the same plus sharpness every step (exact closed form: the default for this model);
  (d) (c) with probes.sharpness_method=autograd, what any other model or loss gets;
  (f) (b) with model.compile=true: bnspike's training step through torch.compile;
  (e) once per size: (a) with the model through torch.compile, against (a) eager.

How (a) is set against (u), (b), (c), (d): PAIRED BLOCKS in one process. While bnspike trains,
every `block` of its optimizer steps hands over to the bare loop (its own model, optimizer and
copy of the data), which takes `block` steps of its own; then bnspike goes on. Each block is
timed in the main thread's CPU time, and the bnspike threads' own CPU time (the event writer's
timer) is added to bnspike's share. So (a) and (b) are timed milliseconds apart, under the same
load, cache and CPU frequency: on a shared machine, where the bare step alone varies by 2x from
minute to minute, the ratio stays put. The ratio is total bnspike block time over total bare
block time (no median: a flush or a checkpoint in a block is a real cost), median over rounds
(fresh processes); every round is kept in results.json.
What a run pays outside the training loop (the theory map and overlay before step 0, the
analysis and report after the last step) is timed in the same process and reported apart.

It also measures the cost of each part of (b) on a real step state, the event-file bytes per
scalar point (against SummaryWriter.add_scalar's encoding), and peak resident memory of (a) and
(b) (fresh processes, each alone), and of (b) at two run lengths. Torch runs on ONE thread.
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
VARIANTS = {"u": "bnspike, only the first and last step logged", "b": "bnspike, all probes but sharpness",
            "c": "bnspike, all probes", "d": "bnspike, all probes, sharpness by autograd (any model and loss)",
            "f": "bnspike, all probes but sharpness, model.compile=true"}
BLOCK_CPU_S = 0.01  # CPU time of one bare block: short enough to follow the load, long enough to time


def overrides(n: int, d: int, steps: int, variant: str) -> list[str]:
    """The default config on non-whitened data (Sigma spectrum 1..10), so the Hessian's top
    eigenvector moves and the sharpness solver has real work to do."""
    method = "autograd" if variant == "d" else "auto"
    return [f"data.n={n}", f"data.d={d}", "data.whiten=none", "data.spectrum=linear", f"optim.steps={steps}",
            f"probes.sharpness_every={int(variant in 'cd')}", f"probes.sharpness_method={method}",
            f"probes.every={steps if variant == 'u' else 1}", "log.progress=none",
            f"model.compile={str(variant == 'f').lower()}"]


def load_cfg(n, d, steps, variant):
    from bnspike import config
    return config.load(ROOT / "configs" / "whitened_spike.yaml", overrides(n, d, steps, variant))


# ---------------------------------------------------------------- (a): the bare loop

class BareLoop:
    """What a researcher writes without bnspike: same modules, same optimizer, nothing logged.
    `compiled`: the model through torch.compile (variant e: does a compiled step pay here?)."""

    def __init__(self, X, y, lr_w: float, lr_alpha: float, eps: float, compiled: bool = False):
        import torch
        from torch import nn

        self.X, self.y = X.clone(), y.clone()  # its own copy, as a separate script would have
        linear = nn.Linear(X.shape[1], 1, bias=False).to(X.dtype)
        bn = nn.BatchNorm1d(1, eps=eps).to(X.dtype)
        bn.bias.requires_grad_(False)
        model = nn.Sequential(linear, bn)
        self.forward = torch.compile(model) if compiled else model
        self.opt = torch.optim.SGD([{"params": [linear.weight], "lr": lr_w}, {"params": [bn.weight], "lr": lr_alpha}])

    def run(self, steps: int):
        X, y, forward, opt = self.X, self.y, self.forward, self.opt
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = 0.5 * ((forward(X).squeeze(-1) - y) ** 2).mean()
            loss.backward()
            opt.step()
        return loss


def bare_for(cfg, compiled: bool = False) -> BareLoop:
    import torch
    from bnspike.data import load_data

    data = load_data(cfg)
    return BareLoop(torch.as_tensor(data.X), torch.as_tensor(data.y), cfg["optim"]["lr_w"],
                    cfg["optim"]["lr_alpha"], cfg["model"]["eps"], compiled)


class Pacer:
    """Alternates blocks of bnspike's steps with blocks of the bare loop's, timing each.

    `wrap` goes around bnspike's optimizer step: after every `block` of them the bare loop runs
    `block` steps. A bnspike block (from one hand-over to the next) is exactly `block` whole
    steps of the loop: forward, backward, update, probes, sinks, a checkpoint when due. The
    first `warm` blocks of each side are not counted (torch's lazy initialisation).
    """

    def __init__(self, bare: BareLoop, block: int, warm: int = 2):
        self.bare, self.block, self.warm = bare, block, max(warm, 1)
        self.steps = self.blocks = self.counted = 0
        self.mark = None  # (thread CPU, wall) when bnspike's current block began
        self.start = self.end = None  # (process CPU, thread CPU) when the counted blocks began, ended
        self.cpu = {"a": 0.0, "bnspike": 0.0}
        self.wall = {"a": 0.0, "bnspike": 0.0}

    def wrap(self, step):
        def paced_step():
            step()
            self.steps += 1
            if self.steps % self.block == 0:
                self.hand_over()
        return paced_step

    def hand_over(self) -> None:
        """bnspike's block number `self.blocks` ends here; the bare loop's runs; bnspike's next begins."""
        counting = self.blocks >= self.warm
        cpu, wall = time.thread_time(), time.perf_counter()
        if counting:
            self.cpu["bnspike"] += cpu - self.mark[0]
            self.wall["bnspike"] += wall - self.mark[1]
        self.bare.run(self.block)
        cpu2, wall2 = time.thread_time(), time.perf_counter()
        if counting:
            self.cpu["a"] += cpu2 - cpu
            self.wall["a"] += wall2 - wall
            self.counted += 1
            self.end = (time.process_time(), cpu2)
        elif self.blocks == self.warm - 1:
            self.start = (time.process_time(), cpu2)
        self.mark = (cpu2, wall2)
        self.blocks += 1

    def result(self) -> dict:
        """Microseconds per step of each side; bnspike's includes its other threads' CPU time."""
        if not self.counted:
            raise RuntimeError("benchmark: too few steps for one counted block pair; raise --seconds")
        other_threads = (self.end[0] - self.start[0]) - (self.end[1] - self.start[1])
        steps = self.counted * self.block
        return {"a_us": self.cpu["a"] / steps * 1e6, "bnspike_us": (self.cpu["bnspike"] + other_threads) / steps * 1e6,
                "other_threads_us": other_threads / steps * 1e6, "a_wall_us": self.wall["a"] / steps * 1e6,
                "bnspike_wall_us": self.wall["bnspike"] / steps * 1e6, "counted_steps": steps, "block": self.block}


def paired(variant: str, n: int, d: int, steps: int, block: int) -> dict:
    """One round of (a) against bnspike `variant`, paired block by block in this process."""
    import torch
    torch.set_num_threads(1)
    from bnspike import analysis, dashboard, loop, theory
    from bnspike.sinks import read_metrics

    cfg = load_cfg(n, d, steps, variant)
    pacer = Pacer(bare_for(cfg), block)
    build_optimizer = loop.build_optimizer

    def paced_optimizer(cfg, model):
        optimizer = build_optimizer(cfg, model)
        optimizer.step = pacer.wrap(optimizer.step)
        return optimizer

    # Outside the training loop: the theory before step 0 (the map is computed, saved and
    # overlaid as dashboard.start consumes it) and the end of the run (analysis, report).
    outside = {"theory": 0.0, "end": 0.0}

    def timed(fn, part):
        def wrapper(*a, **k):
            c0 = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                outside[part] += time.process_time() - c0
        return wrapper

    patched = [(theory, "problem", "theory"), (theory, "save", "theory"), (dashboard, "start", "theory"),
               (analysis, "load_run", "end"), (analysis, "summarize", "end"), (dashboard, "finish", "end")]
    for module, name, part in patched:
        setattr(module, name, timed(getattr(module, name), part))
    with tempfile.TemporaryDirectory() as tmp:
        warm, run_dir = pathlib.Path(tmp) / "warm-up", pathlib.Path(tmp) / "run"
        warm.mkdir()
        run_dir.mkdir()
        loop.train(load_cfg(n, d, 3, variant), warm)  # imports, first calls: not what a step costs
        outside.update(theory=0.0, end=0.0)
        loop.build_optimizer = paced_optimizer
        c0 = time.process_time()
        summary = loop.train(cfg, run_dir)
        out = {**pacer.result(), "run_cpu_s": time.process_time() - c0, "steps": steps, "status": summary["status"],
               "theory_cpu_s": outside["theory"], "end_cpu_s": outside["end"]}
        out["event_bytes"], out["scalar_points"] = scalar_event_bytes(run_dir)
        out["csv_bytes"] = (run_dir / "metrics.csv").stat().st_size
        metrics = read_metrics(run_dir / "metrics.csv")
        out["tags"] = [t for t in metrics if t != "step"]
        out["logged_steps"] = summary["logged_steps"]
        if "stability/sharpness_products" in metrics:
            out["products_per_step"] = float(metrics["stability/sharpness_products"].mean())
    return out


# ---------------------------------------------------------------- alone: memory, compile

def alone(variant: str, n: int, d: int, steps: int) -> dict:
    """One run in this (fresh) process with nothing else: its peak resident memory ("a": the
    bare loop; "b": bnspike), or (e) the bare loop eager then compiled."""
    import torch
    torch.set_num_threads(1)
    cfg = load_cfg(n, d, steps, "b")
    out = {}
    if variant in "ae":  # imports nothing of bnspike's loop, probes or sinks
        c0 = time.process_time()
        bare = bare_for(cfg, compiled=variant == "e")
        bare.run(3)  # warm-up (and e's compilation)
        out["warm_up_cpu_seconds"] = time.process_time() - c0
        if variant == "e":  # the same process, eager then compiled: one comparison under one load
            eager = bare_for(cfg)
            eager.run(3)
            c0 = time.process_time()
            eager.run(steps)
            out["eager_cpu_seconds"] = time.process_time() - c0
        c0 = time.process_time()
        bare.run(steps)
        out["cpu_seconds"] = time.process_time() - c0
        out["train_rss_mb"] = out["run_rss_mb"] = peak_rss_mb()
    else:
        from bnspike import analysis, loop

        load_run = analysis.load_run

        def peak_then_load(run_dir):  # the peak of training itself, before the run is read back
            out.setdefault("train_rss_mb", peak_rss_mb())
            return load_run(run_dir)

        analysis.load_run = peak_then_load
        with tempfile.TemporaryDirectory() as tmp:
            loop.train(cfg, pathlib.Path(tmp))
            out["run_rss_mb"] = peak_rss_mb()
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


def spawn(*args) -> dict:
    """Run this file as a child (`--child ...`) in a fresh process; its last stdout line is JSON."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, __file__, "--child", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"benchmark child {' '.join(map(str, args))} failed:\n{proc.stderr}")
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
        return StepState.of(step=20, loss=loss.detach(), w=w, w_next=model.w.detach().flatten(), grad_w=g,
                            alpha=alpha, beta=beta, lr_w=cfg["optim"]["lr_w"],
                            hessian_at=functools.partial(hvp_at, model, X, y, square_loss))

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
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=ROOT).stdout.strip()
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "torch_threads": 1, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "git": commit + ("+" if dirty else ""),
            "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "load_avg_start": os.getloadavg()}


def measure_size(n: int, d: int, seconds: float, repeats: int) -> dict:
    parts = part_costs(n, d, 2000)
    a_us = alone("a", n, d, 200)["cpu_seconds"] / 200 * 1e6  # a first guess, to size the runs
    logged = sum(v for k, v in parts.items() if not k.startswith("sharpness")) + 50  # 50: the loop
    guess = {"u": a_us, "b": a_us + logged, "c": a_us + logged + parts["sharpness probe, closed form"],
             "d": a_us + logged + parts["sharpness probe, autograd (warm start)"], "f": a_us + logged}
    block = max(5, round(BLOCK_CPU_S / (a_us * 1e-6)))
    rounds = {v: [] for v in VARIANTS}
    for r in range(repeats):
        for v in VARIANTS:
            steps = max(10 * block, round(seconds / (guess[v] * 1e-6) / block) * block)
            rounds[v].append(spawn("paired", v, n, d, steps, block))
        print(f"{n}x{d} round {r + 1}: " + "  ".join(
            f"{v} {x[-1]['bnspike_us']:.0f} us / a {x[-1]['a_us']:.0f} us" for v, x in rounds.items()), flush=True)
    med = statistics.median
    ratio = {v: med(x["bnspike_us"] / x["a_us"] for x in rs) for v, rs in rounds.items()}
    b = rounds["b"][0]
    # outside the loop, per step of the run: the theory map (one map step per run step) and the
    # end of the run (analysis, report) over this run's length
    theory_us = med(x["theory_cpu_s"] / x["steps"] * 1e6 for x in rounds["b"])
    e_steps = max(50, round(2.0 / (a_us * 1e-6)))
    e = spawn("alone", "e", n, d, e_steps)
    return {
        "n": n, "d": d, "block": block,
        # each variant beside the bare loop it was paired with (the load drifts between runs)
        "us_per_step": {v: {"bnspike": med(x["bnspike_us"] for x in rs), "a": med(x["a_us"] for x in rs)}
                        for v, rs in rounds.items()},
        "over_a": ratio,
        "over_a_spread": {v: [min(x["bnspike_us"] / x["a_us"] for x in rs), max(x["bnspike_us"] / x["a_us"] for x in rs)]
                          for v, rs in rounds.items()},
        "b_with_theory_over_a": med((x["bnspike_us"] + x["theory_cpu_s"] / x["steps"] * 1e6) / x["a_us"] for x in rounds["b"]),
        "theory_us_per_step": theory_us,
        "end_of_run_cpu_s": med(x["end_cpu_s"] for x in rounds["b"]),
        "autograd_products_per_step": rounds["d"][0]["products_per_step"],
        "rounds": rounds,
        "tags": b["tags"], "event_bytes_per_point": b["event_bytes"] / b["scalar_points"],
        "event_bytes_per_1e5_steps": b["event_bytes"] / b["logged_steps"] * 1e5,
        "csv_bytes_per_1e5_steps": b["csv_bytes"] / b["logged_steps"] * 1e5,
        "parts_us": parts,
        "torch_compile": {"compiled_us": e["cpu_seconds"] / e_steps * 1e6, "eager_us": e["eager_cpu_seconds"] / e_steps * 1e6,
                          "compile_s": e["warm_up_cpu_seconds"]},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="rounds (fresh processes) of each variant; the median is kept")
    p.add_argument("--seconds", type=float, default=3.0, help="bnspike CPU time of each paired run")
    p.add_argument("--memory-steps", type=int, nargs=2, default=[10_000, 100_000],
                   help="two run lengths of (b) at (1000, 16) for the memory slope")
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "bench")
    p.add_argument("--sizes", nargs="+", default=[f"{n}x{d}" for n, d in SIZES], help="n x d, e.g. 1000x16")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--render", type=pathlib.Path, help="only rewrite results.md from this results.json")
    args = p.parse_args()
    if args.render:
        (args.out / "results.md").write_text(markdown(json.loads(args.render.read_text())))
        return
    if args.child:
        kind, *rest = args.child
        if kind == "imports":
            result = import_rss()
        elif kind == "paired":
            v, *numbers = rest
            result = paired(v, *map(int, numbers))
        else:
            v, *numbers = rest
            result = alone(v, *map(int, numbers))
        print(json.dumps(result))
        return

    info = machine()
    results = [measure_size(n, d, args.seconds, args.repeats)
               for n, d in (map(int, s.split("x")) for s in args.sizes)]
    standard = standard_event_bytes(results[0]["tags"])
    lengths = sorted(args.memory_steps)
    memory = {"a": {str(k): spawn("alone", "a", 1000, 16, k)["run_rss_mb"] for k in lengths}}
    long_runs = {str(k): spawn("alone", "b", 1000, 16, k) for k in lengths}
    memory["b_training"] = {k: r["train_rss_mb"] for k, r in long_runs.items()}
    memory["b_whole_run"] = {k: r["run_rss_mb"] for k, r in long_runs.items()}
    memory["imports"] = spawn("imports")
    info["load_avg_end"] = os.getloadavg()
    report = {"machine": info, "results": results, "standard_event_bytes_per_point": standard,
              "memory_steps": lengths, "peak_rss_mb_1000x16": memory}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(report))
    print((args.out / "results.md").read_text())


def markdown(rep: dict) -> str:
    m = rep["machine"]
    lines = [f"Machine: {m['cpu']}, {m['logical_cores']} logical cores (shared; load average "
             f"{m['load_avg_start'][0]:.1f} at start, {m['load_avg_end'][0]:.1f} at end), torch {m['torch']} "
             f"on 1 thread, Python {m['python']}, commit {m['git']}, {m['date_utc']} UTC. "
             "(a) and each bnspike variant run in the same process, in alternating blocks of steps "
             "(CPU time; bnspike's other threads counted in its share); median of the rounds, "
             "[min, max] over them. Steps/s: the bnspike variant's, then the bare loop's beside it.", "",
             "| n x d | (b) steps/s, beside (a) | (c) steps/s, beside (a) | u/a | b/a | c/a | "
             "f/a (compiled step) | b/a with the theory map | d/a (autograd sharpness), Hessian-vector products / step |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rep["results"]:
        us, ra, sp = r["us_per_step"], r["over_a"], r["over_a_spread"]

        def cell(v):
            return f"{ra[v]:.2f} [{sp[v][0]:.2f}, {sp[v][1]:.2f}]"

        def speeds(v):
            return f"{1e6 / us[v]['bnspike']:.0f}, {1e6 / us[v]['a']:.0f}"

        lines.append(f"| {r['n']} x {r['d']} | {speeds('b')} | {speeds('c')} | "
                     f"{cell('u')} | {cell('b')} | {cell('c')} | {cell('f')} | {r['b_with_theory_over_a']:.2f} | "
                     f"{ra['d']:.1f}, {r['autograd_products_per_step']:.1f} |")
    lines += ["", "Outside the training loop, and the event files:", "",
              "| n x d | theory before step 0, us per step of the run | end of run (analysis, report), CPU s | "
              "event bytes / point | event MB / 1e5 steps |", "|---|---|---|---|---|"]
    for r in rep["results"]:
        lines.append(f"| {r['n']} x {r['d']} | {r['theory_us_per_step']:.1f} | {r['end_of_run_cpu_s']:.2f} | "
                     f"{r['event_bytes_per_point']:.1f} | {r['event_bytes_per_1e5_steps'] / 1e6:.1f} |")
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
    lines += ["", "Peak resident memory at 1000 x 16, each run alone in a fresh process (MB):", "",
              "| run | " + f"{short} steps | {long} steps | difference |", "|---|---|---|---|"]
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
