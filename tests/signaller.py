"""A user-style probe that sends a real signal to its own process at one step, so tests can
interrupt (SIGTERM, SIGINT) or kill (SIGKILL) a run at an exact, chosen step.
Configured by the environment: BNSPIKE_TEST_SIGNAL="STEP:SIGNAME[:TIMES]", e.g. "137:SIGTERM";
unset, it never signals (a resumed run keeps the probe its config names)."""
import os
import signal

from bnspike.probes import Probe


class Signaller(Probe):
    def setup(self, run):
        step, name, *times = os.environ.get("BNSPIKE_TEST_SIGNAL", "-1:SIGTERM").split(":")
        self.step, self.signal, self.times = int(step), signal.Signals[name], int(times[0]) if times else 1

    def __call__(self, state):
        if state.step == self.step:
            for _ in range(self.times):
                # raise_signal, not os.kill: the kernel may deliver os.kill's signal to another
                # thread (the event writer's timer) and two of them can then coalesce into one
                # before Python's handler runs; raise_signal runs the handler before returning.
                signal.raise_signal(self.signal)
        return {}
