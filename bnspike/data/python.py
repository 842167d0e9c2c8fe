"""Datasets made by Python code: `data.function: package.module:function` with `data.kwargs`,
or a dataset registered by name (see bnspike.data.register). Either returns (X, y) as numpy
arrays or torch tensors: X of shape (n, d), y of shape (n,).
"""
from __future__ import annotations

import importlib
import inspect
import sys
from typing import Callable

import numpy as np

from .core import DataError, Origin, Raw


def import_module(name: str, key: str):
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise DataError(f"{key}: cannot import {name!r} ({e}); it must be importable where bnspike "
                        "runs (installed, or on PYTHONPATH)") from None


def _array(obj, what: str, where: str) -> np.ndarray:
    torch = sys.modules.get("torch")  # a tensor exists only once torch is loaded: never import it here
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return obj
    raise DataError(f"{where}: returned {what} as {type(obj).__name__}; return a numpy array or a "
                    "torch tensor (np.asarray(...) converts most things)")


def call(fn: Callable, kwargs: dict, where: str) -> Raw:
    """Call a dataset function with data.kwargs and check it returned a pair (X, y)."""
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as e:
        raise DataError(f"data.kwargs: {where} does not take these arguments: {e}") from None
    result = fn(**kwargs)
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise DataError(f"{where}: must return a pair (X, y), got {type(result).__name__}")
    return Raw(_array(result[0], "X", where), _array(result[1], "y", where), Origin(where))


def load_callable(dc: dict) -> Raw:
    spec = dc["function"]
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise DataError(f"data.function: {spec!r} must look like 'package.module:function'")
    fn = getattr(import_module(module_name, "data.function"), attr, None)
    if not callable(fn):
        raise DataError(f"data.function: module {module_name!r} has no function {attr!r}")
    return call(fn, dc["kwargs"], f"data.function {spec!r}")
