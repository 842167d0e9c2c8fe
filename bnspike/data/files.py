"""Data files: CSV (header present, absent or detected), .npy (an X file and a y file), .npz.

Relative paths are relative to the directory bnspike runs from. Numbers are read strictly:
an empty cell, `NA` or `1,5` is an error naming its line and column, never a NaN or a guess.
"""
from __future__ import annotations

import csv
import difflib
import io
import pathlib
import re

import numpy as np

from .core import DataError, Origin, Raw

# What a numeric CSV cell may look like (Python's float() would also take '1_000' or '١').
# nan and inf are read, so that the finiteness check can count them and name the first.
NUMBER = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|nan|inf|infinity)", re.IGNORECASE)


def _is_number(cell: str) -> bool:
    return NUMBER.fullmatch(cell) is not None


def existing_file(path: str, key: str) -> pathlib.Path:
    if not path:
        raise DataError(f"{key}: no file given")
    p = pathlib.Path(path)
    if not p.is_file():
        raise DataError(f"{key}: file not found: {p} (relative paths start at {pathlib.Path.cwd()})")
    if p.stat().st_size == 0:
        raise DataError(f"{key}: file is empty (0 bytes): {p}")
    return p


# ---------------------------------------------------------------- CSV

def _rows(path: pathlib.Path, delimiter: str) -> list[tuple[int, list[str]]]:
    """(line number, stripped cells) of every row; blank lines only allowed at the end."""
    if len(delimiter) != 1:
        raise DataError(f"data.delimiter: must be one character, got {delimiter!r}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a BOM is not part of the first name
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, strict=True)
    rows = []
    try:
        for cells in reader:
            rows.append((reader.line_num, [c.strip() for c in cells]))
    except csv.Error as e:
        raise DataError(f"{path} line {reader.line_num}: not valid CSV: {e}") from None
    while rows and not rows[-1][1]:
        rows.pop()
    if not rows:
        raise DataError(f"{path}: file is empty (only blank lines)")
    width = len(rows[0][1])
    for line, cells in rows:
        if not cells:
            raise DataError(f"{path} line {line}: blank line inside the data")
        if len(cells) != width:
            raise DataError(f"{path} line {line}: {len(cells)} cells, but line {rows[0][0]} has {width}")
    if width == 1:
        raise DataError(f"{path}: only 1 column (line {rows[0][0]} is {rows[0][1][0]!r}); need the "
                        f"target and at least one feature: is data.delimiter ({delimiter!r}) right?")
    return rows


def _has_header(path: pathlib.Path, rows: list, mode: str) -> bool:
    """Decide from the columns that are numeric below line 1 whether line 1 names them."""
    (line, first), body = rows[0], [cells for _, cells in rows[1:]]
    numeric = [j for j in range(len(first)) if body and all(_is_number(r[j]) or not r[j] for r in body)]
    text = [j for j in numeric if not _is_number(first[j])]
    if mode == "absent":
        if text:
            raise DataError(f"{path} line {line}: looks like a header ({first[text[0]]!r} in column "
                            f"{text[0]}, whose other cells are numbers) but data.header is 'absent'; "
                            "set data.header: present")
        return False
    if mode == "present":
        if numeric and not text:
            raise DataError(f"{path} line {line}: looks like data, not a header (every numeric column "
                            f"has a number there: {', '.join(first)}); set data.header: absent")
        return True
    if not numeric:
        raise DataError(f"{path}: cannot tell whether line {line} is a header (no column is numeric "
                        "below it); set data.header: present or absent")
    if text and len(text) < len(numeric):
        mixed = ", ".join(f"column {j} {first[j]!r}" for j in numeric[:8])
        raise DataError(f"{path} line {line}: cannot tell whether it is a header: it has text in some "
                        f"numeric columns and numbers in others ({mixed}); set data.header")
    return bool(text)


def _column_index(spec, names: list[str] | None, width: int, key: str, path) -> int:
    """A column given by name (needs a header) or by index (negative counts from the end)."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        if not -width <= spec < width:
            raise DataError(f"{key}: column index {spec} is out of range: {path} has {width} columns")
        return spec % width
    if not isinstance(spec, str):
        raise DataError(f"{key}: a column is a name or an index, got {spec!r}")
    if names is None:
        raise DataError(f"{key}: column {spec!r} is a name, but {path} has no header; give its index")
    if spec not in names:
        near = difflib.get_close_matches(spec, names, n=1)
        hint = f"did you mean {near[0]!r}?" if near else f"columns: {', '.join(names)}"
        raise DataError(f"{key}: no column {spec!r} in {path}; {hint}")
    return names.index(spec)


def _select(dc: dict, names, width: int, path) -> tuple[int, list[int]]:
    if dc["target"] is None:
        raise DataError("data.target: name the target column of the CSV (its name, or an index)")
    target = _column_index(dc["target"], names, width, "data.target", path)
    if dc["columns"] and dc["drop"]:
        raise DataError("data.columns and data.drop: give the columns to keep or to drop, not both")
    key = "columns" if dc["columns"] else "drop"
    chosen = [_column_index(c, names, width, f"data.{key}[{i}]", path) for i, c in enumerate(dc[key])]
    if len(set(chosen)) != len(chosen):
        raise DataError(f"data.{key}: a column is listed twice: {dc[key]}")
    if target in chosen and key == "columns":
        raise DataError(f"data.columns: lists the target column {dc['target']!r}")
    keep = chosen if dc["columns"] else [j for j in range(width) if j not in chosen and j != target]
    if not keep:
        raise DataError(f"data.{key}: no feature column is left in {path}")
    return target, keep


def _numbers(rows: list, j: int, label: str, path) -> np.ndarray:
    bad = [(line, cells[j]) for line, cells in rows if not _is_number(cells[j])]
    if bad:
        line, cell = bad[0]
        what = "is empty (a missing value)" if not cell else f"{cell!r} is not a number"
        raise DataError(f"{path} line {line}, column {label}: {what}; {len(bad)} such cell(s) in "
                        "this column (bnspike neither drops nor imputes them)")
    return np.array([float(cells[j]) for _, cells in rows])


def load_csv(dc: dict) -> Raw:
    path = existing_file(dc["path"], "data.path")
    rows = _rows(path, dc["delimiter"])
    if len(rows) < 2:
        raise DataError(f"{path}: only 1 line; need at least 2 samples (BatchNorm needs 2 rows)")
    header = _has_header(path, rows, dc["header"])
    names = rows[0][1] if header else None
    if header:
        rows = rows[1:]
        if len(rows) < 2:
            raise DataError(f"{path}: only 1 data line under the header; need at least 2 samples")
        if len(set(names)) != len(names) or "" in names:
            raise DataError(f"{path}: the header has empty or repeated column names: {names}")
    width = len(rows[0][1])
    target, keep = _select(dc, names, width, path)
    label = [repr(name) for name in names] if header else [str(j) for j in range(width)]
    X = np.column_stack([_numbers(rows, j, label[j], path) for j in keep])
    if dc["task"] == "classification" and not all(_is_number(cells[target]) for _, cells in rows):
        empty = [line for line, cells in rows if not cells[target]]
        if empty:
            raise DataError(f"{path} line {empty[0]}, column {label[target]}: empty label")
        y = np.array([cells[target] for _, cells in rows])  # text labels, mapped to -1/+1 later
    else:
        y = _numbers(rows, target, label[target], path)
    origin = Origin(str(path), columns=tuple(label[j] for j in keep), target=f"column {label[target]}",
                    lines=tuple(line for line, _ in rows))
    return Raw(X, y, origin)


# ---------------------------------------------------------------- numpy files

def _np_load(path: pathlib.Path):
    try:
        return np.load(path, allow_pickle=False)  # never unpickle: a data file must not run code
    except ValueError as e:
        raise DataError(f"{path}: cannot read it without unpickling objects, or it is not a numpy "
                        f"file ({e})") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: not a numpy file ({e})") from None


def load_npy(dc: dict) -> Raw:
    x_path = existing_file(dc["x_path"], "data.x_path")
    y_path = existing_file(dc["y_path"], "data.y_path")
    X, y = _np_load(x_path), _np_load(y_path)
    for arr, path, key in ((X, x_path, "data.x_path"), (y, y_path, "data.y_path")):
        if not isinstance(arr, np.ndarray):
            raise DataError(f"{key}: {path} is an .npz archive; use data.source: npz")
    origin = Origin(f"{x_path}, {y_path}", target=f"in {y_path.name}")
    return Raw(X, y, origin)


def load_npz(dc: dict) -> Raw:
    path = existing_file(dc["path"], "data.path")
    archive = _np_load(path)
    if isinstance(archive, np.ndarray):
        raise DataError(f"data.path: {path} is a single .npy array; use data.source: npy")
    with archive:
        arrays = []
        for key in ("x_key", "y_key"):
            if dc[key] not in archive.files:
                raise DataError(f"data.{key}: {path} has no array {dc[key]!r}; it holds: "
                                f"{', '.join(archive.files) or 'nothing'}")
            try:
                arrays.append(archive[dc[key]])
            except ValueError as e:  # object arrays need unpickling: refused
                raise DataError(f"data.{key}: array {dc[key]!r} in {path} cannot be read safely ({e})") from None
    return Raw(arrays[0], arrays[1], Origin(f"{path}", target=f"array {dc['y_key']!r}"))
