"""A user-style probe (named in a config as `tests.recorder:Recorder`) that keeps w_t, alpha_t
and beta_t of every step, so tests can recompute each logged metric independently."""
from bnspike.probes import Probe


class Recorder(Probe):
    states: list = []

    def __call__(self, state):
        Recorder.states.append((state.step, state.w.double().cpu().numpy().copy(),
                                float(state.alpha), float(state.beta), state.lr_w))
        return {"test/recorded": 1.0}
