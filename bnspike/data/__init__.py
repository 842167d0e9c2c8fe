"""Datasets: sources, checks, preprocessing, and the facts the theory needs.

    load_data(cfg) -> Data:   source -> checks -> preprocessing -> facts

data.source          reads (besides the preprocessing keys)           module
-----------          ---------------------------------------          ------
synthetic            n d spectrum* teacher_norm noise data_seed        synthetic.py
csv                  path target header delimiter columns drop         files.py
npy / npz            x_path y_path / path x_key y_key                  files.py
callable             function kwargs                                   python.py
sklearn              name                                              bundled.py
separable            n d margin spread support data_seed               separable.py
knife_edge           n d margin spread data_seed                       separable.py
<registered name>    module kwargs                                     python.py

A key that the chosen source (or task, or whitening method) does not read must keep its
default: a forgotten `data.n: 1000` beside `source: csv` is an error, not silently ignored.

A dataset in your own package, usable as `data.source: moons` with `data.module: mypkg.data`:

    from bnspike.data import register

    @register("moons")
    def moons(n=200, noise=0.1):      # data.kwargs are passed as keyword arguments
        ...
        return X, y                   # numpy arrays or torch tensors, (n, d) and (n,)
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from .. import config
from . import bundled, checks, files, preprocess, python, separable, synthetic
from .core import Data, DataError, Facts, Origin, Raw, compute_facts

__all__ = ["Data", "DataError", "Facts", "compute_facts", "load_data", "register"]


@dataclass(frozen=True)
class Source:
    load: Callable[[dict], Raw]
    keys: tuple[str, ...]  # the data.* keys it reads, besides task and preprocessing


SOURCES = {
    "synthetic": Source(synthetic.load, ("n", "d", "spectrum", "spectrum_max", "spectrum_power",
                                         "spectrum_values", "teacher_norm", "noise", "data_seed")),
    "csv": Source(files.load_csv, ("path", "target", "header", "delimiter", "columns", "drop")),
    "npy": Source(files.load_npy, ("x_path", "y_path")),
    "npz": Source(files.load_npz, ("path", "x_key", "y_key")),
    "callable": Source(python.load_callable, ("function", "kwargs")),
    "sklearn": Source(bundled.load_sklearn, ("name",)),
    "separable": Source(separable.separable, ("n", "d", "margin", "spread", "support", "data_seed")),
    "knife_edge": Source(separable.knife_edge, ("n", "d", "margin", "spread", "data_seed")),
}
COMMON = ("source", "task", "center", "standardize", "whiten", "center_target", "scale_target",
          "whiten_ridge", "whiten_components")
# keys read only when other keys say so: (the condition in words, its test)
READ_WHEN = {
    "whiten_ridge": ("data.whiten is not 'none'", lambda dc: dc["whiten"] != "none"),
    "whiten_components": ("data.whiten is 'pca'", lambda dc: dc["whiten"] == "pca"),
    "center_target": ("data.task is 'regression'", lambda dc: dc["task"] == "regression"),
    "scale_target": ("data.task is 'regression'", lambda dc: dc["task"] == "regression"),
    "spectrum_max": ("data.spectrum is 'linear' or 'power'", lambda dc: dc["spectrum"] in ("linear", "power")),
    "spectrum_power": ("data.spectrum is 'power'", lambda dc: dc["spectrum"] == "power"),
    "spectrum_values": ("data.spectrum is 'list'", lambda dc: dc["spectrum"] == "list"),
}

REGISTERED: dict[str, Callable] = {}


def register(name: str):
    """Decorator: make a function returning (X, y) available as `data.source: <name>`."""
    if name in SOURCES:
        raise ValueError(f"register({name!r}): {name!r} is a built-in source")

    def add(fn: Callable) -> Callable:
        old = REGISTERED.get(name)
        # the same function again (a module re-imported or reloaded) is fine; another one is not
        if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"register({name!r}): already registered by {old.__module__}.{old.__qualname__}")
        REGISTERED[name] = fn
        return fn

    return add


def _source(dc: dict) -> Source:
    name = dc["source"]
    if name in SOURCES:
        return SOURCES[name]
    if dc["module"]:
        python.import_module(dc["module"], "data.module")
    if name not in REGISTERED:
        near = difflib.get_close_matches(name, [*SOURCES, *REGISTERED], n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        module = (f"data.module {dc['module']!r} registers no such name" if dc["module"] else
                  "a dataset registered in your package needs data.module naming the module that registers it")
        raise DataError(f"data.source: unknown source {name!r}{hint}; built in: {', '.join(SOURCES)}; "
                        f"registered: {', '.join(REGISTERED) or 'none'}; {module}")
    fn = REGISTERED[name]
    return Source(lambda dc: python.call(fn, dc["kwargs"], f"dataset {name!r}"), ("module", "kwargs"))


def _refuse_unread_keys(dc: dict, source: Source) -> None:
    defaults = config.SCHEMA["data"]
    for key, value in dc.items():
        if value == defaults[key].default:
            continue
        if key not in COMMON and key not in source.keys:
            raise DataError(f"data.{key} is set to {value!r}, but data.source {dc['source']!r} does "
                            "not read it; remove it")
        when, test = READ_WHEN.get(key, ("", None))
        if test is not None and not test(dc):
            raise DataError(f"data.{key} is set to {value!r}, but it is only read when {when}; remove it")


def _describe(origin: Origin, X, dc: dict, label_map: dict | None) -> str:
    steps = [step for step, on in (("centred", dc["center"]), ("standardised", dc["standardize"]),
                                   (f"whitened ({dc['whiten']})", dc["whiten"] != "none")) if on]
    text = f"{origin.where}: n={X.shape[0]} d={X.shape[1]}, features {', '.join(steps) or 'as given'}"
    if label_map is not None:
        return text + "; labels " + ", ".join(f"{k!r} -> {v:+d}" for k, v in label_map.items())
    targets = [step for step, on in (("centred", dc["center_target"]), ("scaled", dc["scale_target"])) if on]
    return text + f"; target {', '.join(targets) or 'as given'}"


def load_data(cfg: dict) -> Data:
    dc = cfg["data"]
    source = _source(dc)
    _refuse_unread_keys(dc, source)
    raw = source.load(dc)
    X = checks.features(raw.X, raw.origin)
    X = preprocess.features(X, dc, raw.origin)
    y = raw.y(X) if callable(raw.y) else raw.y
    y = checks.target(y, len(X), dc["task"], raw.origin)
    label_map = None
    if dc["task"] == "classification":
        y, label_map = preprocess.labels(y, raw.origin)
    else:
        y = preprocess.target(y, dc)
    return Data(X=X, y=y, facts=compute_facts(X, y), description=_describe(raw.origin, X, dc, label_map),
                label_map=label_map)
