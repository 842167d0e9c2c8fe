"""Datasets shipped inside scikit-learn: loaded from its package files, never downloaded."""
from __future__ import annotations

import difflib

import numpy as np

from .core import DataError, Origin, Raw

# load_<name> functions that need no arguments and return one target column
SHIPPED = ("diabetes", "breast_cancer", "iris", "wine", "digits")


def load_sklearn(dc: dict) -> Raw:
    name = dc["name"]
    if name not in SHIPPED:
        near = difflib.get_close_matches(name, SHIPPED, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise DataError(f"data.name: scikit-learn ships no dataset {name!r}; {hint}"
                        f"shipped: {', '.join(SHIPPED)}")
    import sklearn.datasets  # deferred: a second or so of imports that only this source needs

    bunch = getattr(sklearn.datasets, f"load_{name}")()
    columns = tuple(repr(str(f)) for f in bunch.feature_names)
    return Raw(np.asarray(bunch.data), np.asarray(bunch.target),
               Origin(f"sklearn {name}", columns=columns, target="array 'target'"))
