"""Run configuration: load YAML safely, apply `key=value` overrides, validate, fill defaults.

A config is a nested dict of sections (data, model, optim, probes, checkpoint, log) plus a few
top-level keys. Every key that exists is listed in SCHEMA below with its type and default;
anything else is an error that names the nearest valid key. YAML's traps are closed here:
duplicated keys are refused, `1e-3` (which PyYAML reads as a string) is accepted as a number,
`yes`/`no`/`on`/`off` are only accepted where a boolean is expected, and YAML 1.1's octal
(`010` -> 8) and base-60 (`1:30` -> 90) integers are refused rather than silently converted.
"""
from __future__ import annotations

import copy
import difflib
import math
import pathlib
from dataclasses import dataclass, field
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad configuration value; the message names the file and the key."""


@dataclass(frozen=True)
class Field:
    kind: str  # "float", "int", "bool", "str", "list", "mapping", "column" (a name or an index)
    default: Any
    choices: tuple = ()
    min: float | None = None  # inclusive lower bound
    positive: bool = False  # strictly > 0
    max: float | None = None
    nullable: bool = False
    item: str | None = None  # kind of each element of a list ("float", "str")
    help: str = ""


F, I, B, S, L, M, C = "float", "int", "bool", "str", "list", "mapping", "column"

SCHEMA: dict[str, Any] = {
    "name": Field(S, "run", help="run name; the run directory is runs/<name>-<timestamp>"),
    "seed": Field(I, 0, min=0, help="torch seed (data and init have their own seeds)"),
    "data": {  # bnspike/data/__init__.py lists which source reads which key
        "source": Field(S, "synthetic", help="synthetic, csv, npy, npz, callable, sklearn or a registered name"),
        "task": Field(S, "regression", choices=("regression", "classification"),
                      help="classification maps two distinct labels to -1/+1"),
        # synthetic
        "n": Field(I, 256, positive=True),
        "d": Field(I, 16, positive=True),
        "spectrum": Field(S, "isotropic", choices=("isotropic", "linear", "power", "list")),
        "spectrum_max": Field(F, 10.0, positive=True, help="largest eigenvalue for linear/power spectra"),
        "spectrum_power": Field(F, 1.0, positive=True),
        "spectrum_values": Field(L, [], item=F, help="eigenvalues of Sigma when spectrum=list"),
        "teacher_norm": Field(F, 1.0, min=0.0),
        "noise": Field(F, 0.0, min=0.0),
        "data_seed": Field(I, 0, min=0),
        # files (relative paths start where bnspike runs)
        "path": Field(S, "", help="the csv or npz file"),
        "target": Field(C, None, nullable=True, help="csv target column: name or index (-1: last)"),
        "header": Field(S, "auto", choices=("auto", "present", "absent"), help="csv first line"),
        "delimiter": Field(S, ","),
        "columns": Field(L, [], help="csv feature columns to keep, names or indices (default: all)"),
        "drop": Field(L, [], help="csv columns to leave out, names or indices"),
        "x_path": Field(S, "", help="npy file of the features, shape (n, d)"),
        "y_path": Field(S, "", help="npy file of the target, shape (n,)"),
        "x_key": Field(S, "X", help="npz array of the features"),
        "y_key": Field(S, "y", help="npz array of the target"),
        # python
        "function": Field(S, "", help="callable source: 'package.module:function' returning (X, y)"),
        "module": Field(S, "", help="module to import that registers data.source (bnspike.data.register)"),
        "kwargs": Field(M, {}, help="keyword arguments of data.function or of the registered dataset"),
        # sklearn
        "name": Field(S, "diabetes", help="dataset shipped with scikit-learn: diabetes, breast_cancer, ..."),
        # preprocessing (applied in this order)
        "center": Field(B, True),
        "standardize": Field(B, False),
        "whiten": Field(S, "none", choices=("none", "cholesky", "zca", "pca")),
        "whiten_ridge": Field(F, 0.0, min=0.0, help="whiten Sigma + ridge * I (then X^T X / n is not I)"),
        "whiten_components": Field(I, 0, min=0, help="pca: keep the top k components (0: all)"),
        "center_target": Field(B, True, help="regression only; labels are mapped to -1/+1"),
        "scale_target": Field(B, False, help="regression only: divide the target by its standard deviation"),
        # separable, knife_edge (bnspike/data/separable.py)
        "margin": Field(F, 1.0, positive=True, help="the hard margin of the separable sources"),
        "spread": Field(F, 1.0, positive=True, help="std of the features orthogonal to the teacher"),
        "support": Field(I, 1, positive=True, help="groups of 4 samples on the margin (separable)"),
    },
    "model": {
        "kind": Field(S, "bn_linear", choices=("bn_linear", "linear"), help="linear: no BatchNorm (baseline)"),
        "bias": Field(B, False, help="bias of the plain linear model (trained with optim.lr_beta)"),
        "eps": Field(F, 1e-10, positive=True, help="BatchNorm eps (torch refuses 0)"),
        "alpha0": Field(F, 0.05, help="initial BN weight gamma (the paper's alpha)"),
        "beta0": Field(F, 0.0, help="initial BN bias"),
        "train_beta": Field(B, False),
        "w0_norm": Field(F, 0.5, positive=True),
        "w0_seed": Field(I, 1, min=0, help="numpy seed of the initial direction"),
        "dtype": Field(S, "float64", choices=("float64", "float32")),
        "device": Field(S, "cpu", choices=("cpu", "cuda", "auto")),
        "threads": Field(I, 1, min=0, help="torch threads while training; 1: the same rounding on every "
                                           "machine (the spike grows from round-off) and fastest at these sizes; "
                                           "0: torch's default"),
        "compile": Field(B, False, help="the training step's forward, loss and backward through torch.compile "
                                        "(pays for large n; seconds to compile; the probes stay eager)"),
    },
    "optim": {
        "loss": Field(S, "square", choices=("square", "logistic")),
        "lr_w": Field(F, 1.0, positive=True, help="eta: step size of the linear weight"),
        "lr_alpha": Field(F, 0.01, min=0.0, help="eta_alpha: step size of the BN weight"),
        "lr_beta": Field(F, 0.01, min=0.0, help="step size of the BN bias (if model.train_beta)"),
        "steps": Field(I, 400, positive=True),
        # bnspike/optim.py: mini-batches, weight decay, momentum, schedules
        "batch_size": Field(I, 0, min=0, help="0 (or n): full batch"),
        "shuffle_seed": Field(I, 0, min=0),
        "weight_decay": Field(F, 0.0, min=0.0, help="on w only"),
        "momentum": Field(F, 0.0, min=0.0, max=1.0),
        "nesterov": Field(B, False),
        "schedule": Field(S, "constant", choices=("constant", "warmup", "cosine", "step")),
        "warmup_steps": Field(I, 0, min=0),
        "cosine_min": Field(F, 0.0, min=0.0, max=1.0, help="final factor of the cosine schedule"),
        "step_every": Field(I, 0, min=0),
        "step_gamma": Field(F, 0.5, positive=True),
    },
    "probes": {
        "every": Field(I, 1, positive=True, help="log every k steps"),
        "sharpness_every": Field(I, 1, min=0, help="0 turns the sharpness probe off"),
        "sharpness_tol": Field(F, 1e-10, positive=True),
        "sharpness_max_iter": Field(I, 64, positive=True, help="Lanczos products before the dense fallback"),
        "sharpness_dense_max": Field(I, 64, min=0, help="autograd method: exact dense Hessian up to this d"),
        "sharpness_method": Field(S, "auto", choices=("auto", "closed_form", "autograd"),
                                  help="auto: the exact closed form for bn_linear + square loss, else autograd"),
        "extra": Field(L, [], item=S, help="user probes as 'package.module:Name'"),
    },
    "checkpoint": {
        "every": Field(I, 1000, min=0, help="write checkpoint.pt every k steps (0: only when interrupted)"),
    },
    "log": {
        "flush_secs": Field(F, 2.0, positive=True),
        "progress": Field(S, "auto", choices=("auto", "bar", "lines", "none")),
    },
}


# ---------------------------------------------------------------- YAML loading

class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicated mapping keys (PyYAML silently keeps the last)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(
                f"duplicated key {key!r} at line {key_node.start_mark.line + 1} "
                f"(first at line {seen[key] + 1}); YAML would silently keep the last one")
        seen[key] = key_node.start_mark.line
        try:
            loader.construct_object(value_node, deep=deep)  # cached: construct_mapping reuses it
        except ConfigError as e:
            raise ConfigError(f"key {key!r} at line {key_node.start_mark.line + 1}: {e}") from None
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """YAML 1.1 reads `010` as octal 8 and `1:30` as base-60 90: refuse both, never guess."""
    digits = node.value.replace("_", "").lstrip("+-")
    if ":" in digits or (len(digits) > 1 and digits[0] == "0" and digits.isdigit()):
        kind = "a base-60 number" if ":" in digits else "an octal number"
        raise ConfigError(f"{node.value!r} is read by YAML 1.1 as {kind} "
                          f"({loader.construct_yaml_int(node)}); write it without the "
                          f"{'colon' if ':' in digits else 'leading zero'}, or quote it")
    return loader.construct_yaml_int(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def load_yaml(path: str | pathlib.Path) -> dict:
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.load(path.read_text(), Loader=_StrictLoader)  # safe: SafeLoader subclass
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    return raw


# ---------------------------------------------------------------- validation

def _coerce(value: Any, spec: Field, where: str) -> Any:
    """Check one value against its Field; return it in canonical type or raise ConfigError."""
    if value is None:
        if spec.nullable:
            return None
        raise ConfigError(f"{where}: a value is required (got null)")
    kind = spec.kind
    if kind == B:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(value, bool) and kind != B:
        expected = f"one of {', '.join(spec.choices)}" if spec.choices else f"a {kind}"
        raise ConfigError(f"{where}: expected {expected}, got the boolean {value!r} "
                          "(YAML reads yes/no/on/off as booleans: quote it if you mean text)")
    if kind in (F, I):
        if isinstance(value, str):
            try:  # PyYAML reads `1e-3` and `1e4` (no dot) as strings: accept the number written
                value = int(value.strip(), 10) if kind == I and value.strip().isdigit() else float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if kind == I:
            if isinstance(value, float):
                if not value.is_integer():
                    raise ConfigError(f"{where}: expected an integer, got {value!r}")
                value = int(value)
            if not isinstance(value, int):
                raise ConfigError(f"{where}: expected an integer, got {value!r}")
        else:
            if not isinstance(value, (int, float)):
                raise ConfigError(f"{where}: expected a number, got {value!r}")
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(f"{where}: must be finite, got {value!r}")
        if spec.positive and value <= 0:
            raise ConfigError(f"{where}: must be > 0, got {value!r}")
        if spec.min is not None and value < spec.min:
            raise ConfigError(f"{where}: must be >= {spec.min}, got {value!r}")
        if spec.max is not None and value > spec.max:
            raise ConfigError(f"{where}: must be <= {spec.max}, got {value!r}")
        return value
    if kind == S:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        if spec.choices and value not in spec.choices:
            raise ConfigError(f"{where}: must be one of {', '.join(spec.choices)}; got {value!r}")
        return value
    if kind == L:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if spec.item is None:
            return list(value)
        item = Field(spec.item, None, positive=spec.positive)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if kind == M:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{where}: expected a mapping of names to values, got {value!r}")
        return dict(value)
    if kind == C:
        if not isinstance(value, (str, int)):
            raise ConfigError(f"{where}: expected a column name or index, got {value!r}")
        return value
    raise AssertionError(kind)


def _all_keys(schema: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in schema.items():
        keys += _all_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]
    return keys


def _unknown(key: str, schema: dict, prefix: str, source: str) -> ConfigError:
    """Suggest the nearest key of the same section, else the same name in another section."""
    near = [prefix + k for k in difflib.get_close_matches(key, list(schema), n=1, cutoff=0.6)]
    if not near:
        elsewhere = {k.rpartition(".")[2]: k for k in reversed(_all_keys(SCHEMA))}
        near = [elsewhere[k] for k in difflib.get_close_matches(key, list(elsewhere), n=1, cutoff=0.8)]
    hint = f"; did you mean {near[0]!r}?" if near else f"; valid keys here: {', '.join(schema)}"
    return ConfigError(f"{source}: unknown key {prefix + key!r}{hint}")


def _validate(raw: dict, schema: dict, prefix: str, source: str) -> dict:
    out = {}
    for key, value in raw.items():
        if key not in schema:
            raise _unknown(str(key), schema, prefix, source)
        spec = schema[key]
        where = f"{source}: {prefix}{key}"
        if isinstance(spec, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: expected a section (mapping), got {value!r}")
            out[key] = _validate(value, spec, f"{prefix}{key}.", source)
        else:
            out[key] = _coerce(value, spec, where)
    return out


def _defaults(schema: dict) -> dict:
    return {k: _defaults(v) if isinstance(v, dict) else copy.deepcopy(v.default)
            for k, v in schema.items()}


def _merge(base: dict, update: dict) -> dict:
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


def parse_override(text: str) -> tuple[list[str], Any]:
    """`optim.lr_w=2.5` -> (['optim', 'lr_w'], 2.5). The value is parsed as YAML (safely)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. optim.lr_w=2.5")
    key, _, value = text.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        parsed = yaml.load(value, Loader=_StrictLoader) if value.strip() else ""
    except ConfigError as e:
        raise ConfigError(f"override {text!r}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {e}") from None
    return key.split("."), parsed


def resolve(raw: dict, overrides: list[str] = (), source: str = "config") -> dict:
    """Validate `raw` (from YAML) and the overrides against SCHEMA; return the full config."""
    cfg = _defaults(SCHEMA)
    _merge(cfg, _validate(raw, SCHEMA, "", source))
    for text in overrides:
        path, value = parse_override(text)
        nested: Any = value
        for part in reversed(path):
            nested = {part: nested}
        _merge(cfg, _validate(nested, SCHEMA, "", f"override {text!r}"))
    if cfg["name"] in ("", ".", "..") or any(c in cfg["name"] for c in "/\\\0"):
        raise ConfigError(f"{source}: name: {cfg['name']!r} must be a plain file name "
                          "(it becomes the run directory's name)")
    return cfg


def load(path: str | pathlib.Path, overrides: list[str] = ()) -> dict:
    """Read a YAML config file, apply `key=value` overrides, validate, fill defaults."""
    raw = load_yaml(path)
    raw.setdefault("name", pathlib.Path(path).stem)
    return resolve(raw, overrides, source=str(path))


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)
