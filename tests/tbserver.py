"""Start a real TensorBoard exactly as `make tensorboard` does (port 0: any free port) and
read scalars back over its HTTP API."""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import signal
import subprocess
import time
import urllib.parse
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]


class TensorBoard:
    def __init__(self, base_url: str):
        self.base = base_url

    def get(self, path: str, **query):
        url = f"{self.base}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())

    def scalars(self, run: str, tag: str, expect: int, timeout: float = 120) -> list:
        """[[wall_time, step, value], ...] once at least `expect` points are served."""
        deadline = time.monotonic() + timeout
        points = []
        while time.monotonic() < deadline:
            try:
                points = self.get("/data/plugin/scalars/scalars", run=run, tag=tag)
            except Exception:  # not loaded yet: 400 until the run appears
                points = []
            if len(points) >= expect:
                return points
            time.sleep(0.5)
        raise TimeoutError(f"TensorBoard served {len(points)} of {expect} points of {run}/{tag}")


@contextlib.contextmanager
def tensorboard(logdir: pathlib.Path, timeout: float = 120):
    proc = subprocess.Popen(["make", "-s", "-C", str(ROOT), "tensorboard", f"LOGDIR={logdir}", "PORT=0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group: stop make and tensorboard
    try:
        deadline = time.monotonic() + timeout
        for line in proc.stdout:  # it prints "TensorBoard 2.x at http://127.0.0.1:PORT/"
            match = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
            if match:
                yield TensorBoard(match.group(1))
                break
            if time.monotonic() > deadline:
                raise TimeoutError("TensorBoard did not print its address")
        else:
            raise RuntimeError(f"TensorBoard exited with code {proc.wait()}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
