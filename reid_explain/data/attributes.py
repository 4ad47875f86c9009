"""Attribute label files (official ``.mat``, CSV, Parquet) to one tidy table.

Every loader returns the same long ("tidy") table, one row per (split, pid, attribute, value),
so the attribute study, the Datasets and SynthPedes share one representation whatever the source.

Policies (also in ``docs/data.md``):

* ``value`` is the state name from the :class:`~reid_explain.data.schema.AttributeSchema`
  (``"yes"``, ``"female"``, ``"adult"``, ``"red"``), never a raw code.
* A colour stored as one binary field per class is *multi-hot* in the official files: one row per
  class that is set; when no class is set the attribute has **no row** for that pid.
* An invalid code (0, or anything outside the attribute's codes) gives **one row with a missing
  value** (NaN) for that attribute, a :class:`UserWarning` with the count per field, and the counts
  in ``table.attrs["invalid_codes"]``. It never becomes a class.

For modelling, :func:`attribute_codes` turns the table into an integer matrix (state index, -1 when
unknown) and a multi-hot indicator matrix; :func:`wide_attributes` gives one row per identity.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.io

from reid_explain._util.io import atomic_path
from reid_explain.errors import DataFormatError

from .schema import SCHEMAS, Attribute, AttributeSchema

TIDY_COLUMNS: tuple[str, ...] = ("split", "pid", "attribute", "value")
"""Columns of every attribute table, in this order."""

#: Top-level ``.mat`` variable -> schema, for auto-detection.
TOP_VARIABLES: dict[str, str] = {"market_attribute": "market1501", "duke_attribute": "dukemtmc"}

MAT_SPLITS: tuple[str, ...] = ("train", "test")
_INDEX_FIELD = "image_index"
_PARQUET_ENGINES = ("pyarrow", "fastparquet")


# --------------------------------------------------------------------------- schema resolution

def resolve_schema(schema: str | AttributeSchema | None, top_variable: str | None = None,
                   source: str | os.PathLike | None = None) -> AttributeSchema:
    """Pick a schema by object, by name, or (``schema`` None) from the ``.mat`` top variable."""
    if isinstance(schema, AttributeSchema):
        return schema
    where = f"{source}: " if source is not None else ""
    if schema is None:
        if top_variable in TOP_VARIABLES:
            return SCHEMAS[TOP_VARIABLES[top_variable]]
        if top_variable is None:
            raise DataFormatError(f"{where}no attribute schema given or recorded in the table; "
                                  f"pass schema= one of {sorted(SCHEMAS)} or an AttributeSchema")
        raise DataFormatError(
            f"{where}cannot detect the attribute schema from top variable {top_variable!r}; "
            f"pass schema= one of {sorted(SCHEMAS)} or an AttributeSchema")
    key = schema.lower().replace("-", "").replace("_", "")
    aliases = {"market1501": "market1501", "market": "market1501", "dukemtmc": "dukemtmc",
               "duke": "dukemtmc", "dukemtmcreid": "dukemtmc"}
    if key in aliases:
        return SCHEMAS[aliases[key]]
    raise DataFormatError(f"{where}unknown schema {schema!r}; known: {sorted(SCHEMAS)}")


# --------------------------------------------------------------------------- .mat reading

def _struct_fields(obj: Any) -> dict[str, Any] | None:
    """A MATLAB 1x1 struct as a dict, whatever ``loadmat`` options produced it; None if not one."""
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, scipy.io.matlab.mat_struct):
        return {name: getattr(obj, name) for name in obj._fieldnames}
    if isinstance(obj, np.ndarray):
        if obj.size != 1:
            return None
        if obj.dtype.names:
            item = obj.reshape(-1)[0]
            return {name: item[name] for name in obj.dtype.names}
        if obj.dtype == object:
            return _struct_fields(obj.reshape(-1)[0])
    if isinstance(obj, np.void) and obj.dtype.names:
        return {name: obj[name] for name in obj.dtype.names}
    return None


#: identity ids beyond this are not ids (Market-1501 has 1,501, DukeMTMC-reID 7,140)
MAX_ATTRIBUTE_PID = 10**6


def _cell_strings(value: Any) -> list[str] | None:
    """A cell of strings (or a char matrix, or a squeezed string) as a list; None if not one."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        out = [_cell_strings(v) for v in value]
        return None if any(o is None or len(o) != 1 for o in out) else [o[0] for o in out]
    if not isinstance(value, np.ndarray):
        return None
    if value.dtype.kind == "U":  # loadmat turns a char matrix into a 1-D array of strings
        return [str(v) for v in value.reshape(-1)]
    if value.dtype == object:
        out = [_cell_strings(v) for v in value.reshape(-1)]
        return None if any(o is None or len(o) != 1 for o in out) else [o[0] for o in out]
    return None


def _codes(value: Any) -> np.ndarray | None:
    """A numeric (1, N) / (N,) field as a 1-D integer array; None if it is not numeric."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "uifb":
        return None
    flat = arr.reshape(-1)
    if arr.dtype.kind == "f":  # a NaN or fractional code is invalid (0), never a class
        ok = np.isfinite(flat) & (flat == np.round(np.nan_to_num(flat)))
        return np.where(ok, np.nan_to_num(flat), 0).astype(np.int64)
    return flat.astype(np.int64)


def _decode_split(fields: dict[str, Any], split: str, schema: AttributeSchema,
                  source: str) -> tuple[list[tuple[str, int, str, str | None]], dict[str, int]]:
    """Rows and invalid-code counts of one split struct."""
    where = f"{source}: split {split!r}"
    if _INDEX_FIELD not in fields:
        raise DataFormatError(f"{where}: missing field {_INDEX_FIELD!r} (the identity ids); "
                              f"fields present: {sorted(fields)}")
    ids = _cell_strings(fields[_INDEX_FIELD])
    if ids is None:
        raise DataFormatError(f"{where}: field {_INDEX_FIELD!r} is not a cell of id strings")
    try:
        pids = [int(s) for s in ids]
    except ValueError as exc:
        raise DataFormatError(f"{where}: field {_INDEX_FIELD!r} holds a non-numeric id ({exc})") \
            from None
    bad = [p for p in pids if not 0 <= p <= MAX_ATTRIBUTE_PID]
    if bad:
        raise DataFormatError(f"{where}: field {_INDEX_FIELD!r} holds id {bad[0]}, outside "
                              f"0..{MAX_ATTRIBUTE_PID}")
    seen: set[int] = set()
    twice = next((p for p in pids if p in seen or seen.add(p)), None)
    if twice is not None:
        raise DataFormatError(f"{where}: field {_INDEX_FIELD!r} lists id {twice} twice")
    n = len(pids)
    missing = [f for f in schema.fields if f not in fields]
    if missing:
        raise DataFormatError(f"{where}: missing attribute field(s) {missing} required by schema "
                              f"{schema.name!r}; fields present: {sorted(fields)}")
    codes: dict[str, np.ndarray] = {}
    for name in schema.fields:
        arr = _codes(fields[name])
        if arr is None:
            raise DataFormatError(f"{where}: field {name!r} is not numeric "
                                  f"(dtype {np.asarray(fields[name]).dtype})")
        if arr.shape[0] != n:
            raise DataFormatError(f"{where}: field {name!r} has {arr.shape[0]} values but "
                                  f"{_INDEX_FIELD!r} has {n} ids")
        codes[name] = arr

    rows: list[tuple[str, int, str, str | None]] = []
    invalid: dict[str, int] = {}
    for i, pid in enumerate(pids):
        for attribute in schema:
            rows.extend((split, pid, attribute.name, v)
                        for v in _decode_one(attribute, codes, i, invalid))
    return rows, invalid


def _decode_one(attribute: Attribute, codes: dict[str, np.ndarray], i: int,
                invalid: dict[str, int]) -> list[str | None]:
    """The values of one attribute for identity ``i``: see the module's policies."""
    if attribute.one_field_per_class:
        values: list[str | None] = []
        bad = False
        for field, state in zip(attribute.fields, attribute.states, strict=True):
            code = codes[field][i]
            if code == 2:
                values.append(state)
            elif code != 1:
                invalid[field] = invalid.get(field, 0) + 1
                bad = True
        return [*values, None] if bad else values
    field = attribute.fields[0]
    code = codes[field][i]
    if 1 <= code <= len(attribute.states):
        return [attribute.states[code - 1]]
    invalid[field] = invalid.get(field, 0) + 1
    return [None]


def _top_variable(names: list[str], schema: str | AttributeSchema | None, src: str) -> str:
    """The top variable to read: the built-in schema's own, the one known, or the only one."""
    wanted = None
    if schema is not None:
        builtin = resolve_schema(schema, None, src)
        if SCHEMAS.get(builtin.name) == builtin:
            wanted = next(k for k, v in TOP_VARIABLES.items() if v == builtin.name)
    if wanted is not None:
        if wanted not in names:
            raise DataFormatError(f"{src}: expected top-level variable {wanted!r} for schema "
                                  f"{schema!r}; found {names}. Pass variable= to override")
        return wanted
    known = [k for k in names if k in TOP_VARIABLES]
    if len(known) == 1:
        return known[0]
    if len(names) == 1 and schema is not None:
        return names[0]
    raise DataFormatError(f"{src}: no known top-level variable ({sorted(TOP_VARIABLES)}); "
                          f"found {names}. Pass schema= and variable= for another layout")


def attributes_from_mat_dict(mat: Mapping[str, Any], schema: str | AttributeSchema | None = None,
                             *, source: str | os.PathLike = "<mat>",
                             variable: str | None = None) -> pd.DataFrame:
    """Decode what ``scipy.io.loadmat`` returned (any ``squeeze_me``/``struct_as_record``).

    Split from :func:`load_attribute_mat` so already-loaded dicts (and every loadmat variant)
    go through the same checks.
    """
    src = str(source)
    names = [k for k in mat if not k.startswith("__")]
    if variable is None:
        variable = _top_variable(names, schema, src)
    if variable not in mat:
        raise DataFormatError(f"{src}: top-level variable {variable!r} not found; found {names}")
    chosen = resolve_schema(schema, variable, src)
    top = _struct_fields(mat[variable])
    if top is None:
        raise DataFormatError(f"{src}: top-level variable {variable!r} is not a 1x1 struct")
    splits = [s for s in MAT_SPLITS if s in top]
    if not splits:
        raise DataFormatError(f"{src}: variable {variable!r} has no 'train' or 'test' field; "
                              f"fields present: {sorted(top)}")
    rows: list[tuple[str, int, str, str | None]] = []
    invalid: dict[str, dict[str, int]] = {}
    for split in splits:
        fields = _struct_fields(top[split])
        if fields is None:
            raise DataFormatError(f"{src}: field {variable}.{split} is not a 1x1 struct")
        split_rows, split_invalid = _decode_split(fields, split, chosen, src)
        rows.extend(split_rows)
        if split_invalid:
            invalid[split] = split_invalid
    table = _frame(rows)
    table.attrs["schema"] = chosen.name
    table.attrs["source"] = src
    table.attrs["invalid_codes"] = invalid
    if invalid:
        detail = "; ".join(f"{s}: " + ", ".join(f"{f}={c}" for f, c in d.items())
                           for s, d in invalid.items())
        warnings.warn(f"{src}: invalid attribute codes (kept as missing values): {detail}",
                      UserWarning, stacklevel=3)
    return table


def load_attribute_mat(path: str | os.PathLike, schema: str | AttributeSchema | None = None,
                       *, variable: str | None = None) -> pd.DataFrame:
    """Load an official ``market_attribute.mat`` / ``duke_attribute.mat`` into the tidy table.

    ``schema``: an :class:`AttributeSchema`, a name (``"market1501"``, ``"dukemtmc"``), or None to
    detect it from the top variable. ``variable`` names the top variable of a non-standard file.
    """
    from .isolated import read_isolated

    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: attribute file not found")
    # scipy's C reader can crash the process on a corrupt file: read it in a child process
    kind, mat = read_isolated(READ_MAT, path, ".mat file")
    if kind == "v7.3":
        raise DataFormatError(f"{path}: MATLAB v7.3 (HDF5) file; re-save it with "
                              "save(..., '-v7') to load it with scipy")
    if kind == "error":
        raise DataFormatError(f"{path}: not a readable .mat file ({mat})")
    return attributes_from_mat_dict(mat, schema, source=path, variable=variable)


#: the child process's reader: ``scipy.io.loadmat``, errors returned as values
#: (``("ok", mat)``, ``("v7.3", None)``, ``("error", message)``)
READ_MAT = """
import pickle, sys
from scipy.io.matlab import loadmat  # not all of scipy.io: a third of the child's start
try:
    result = ("ok", loadmat(sys.argv[1], squeeze_me=False, struct_as_record=True))
except NotImplementedError:
    result = ("v7.3", None)
except Exception as exc:  # scipy raises several types for a corrupt file
    result = ("error", f"{type(exc).__name__}: {exc}")
sys.stdout.buffer.write(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
"""


def save_attribute_mat(table: pd.DataFrame, path: str | os.PathLike,
                       schema: str | AttributeSchema | None = None) -> Path:
    """Write a tidy table as an official-layout ``.mat`` (atomically).

    Missing values are written as code 0 (invalid), as in the official files (for a colour: in
    its first class field not set); a multi-hot colour sets each of its class fields.
    """
    chosen = resolve_schema(schema if schema is not None else table.attrs.get("schema"),
                            None, path)
    variable = next((k for k, v in TOP_VARIABLES.items() if v == chosen.name),
                    f"{chosen.name}_attribute")
    check_attribute_table(table, chosen, source=path)
    top: dict[str, dict[str, np.ndarray]] = {}
    for split in pd.unique(table["split"]):
        part = table[table["split"] == split]
        pids = list(pd.unique(part["pid"]))
        pos = {pid: i for i, pid in enumerate(pids)}
        fields = {f: np.ones((1, len(pids)), np.uint8) for f in chosen.fields}
        unknown_classes = []
        for pid, name, value in part[["pid", "attribute", "value"]].itertuples(index=False):
            attribute = chosen[name]
            if attribute.one_field_per_class and pd.isna(value):
                unknown_classes.append((pos[pid], attribute))
            elif attribute.one_field_per_class:
                fields[attribute.fields[attribute.states.index(value)]][0, pos[pid]] = 2
            else:
                fields[attribute.fields[0]][0, pos[pid]] = \
                    0 if pd.isna(value) else attribute.states.index(value) + 1
        for i, attribute in unknown_classes:  # code 0 in the first class field not set
            unset = [f for f in attribute.fields if fields[f][0, i] == 1]
            if unset:
                fields[unset[0]][0, i] = 0
        index = np.empty((1, len(pids)), dtype=object)
        index[0, :] = [f"{int(p):04d}" for p in pids]
        top[str(split)] = {**fields, _INDEX_FIELD: index}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        scipy.io.savemat(fh, {variable: top})
    return Path(path)


# --------------------------------------------------------------------------- CSV / Parquet

def _frame(rows: list[tuple[str, int, str, str | None]]) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=list(TIDY_COLUMNS))
    table["split"] = table["split"].astype(object)
    table["pid"] = table["pid"].astype(np.int64)
    table["attribute"] = table["attribute"].astype(object)
    table["value"] = table["value"].astype(object).where(table["value"].notna(), None)
    return table


def check_attribute_table(table: pd.DataFrame, schema: AttributeSchema | None = None, *,
                          source: str | os.PathLike = "<table>") -> None:
    """Raise :class:`DataFormatError` naming the column or row that breaks the tidy schema."""
    missing = [c for c in TIDY_COLUMNS if c not in table.columns]
    if missing:
        raise DataFormatError(f"{source}: missing column(s) {missing}; expected {TIDY_COLUMNS}")
    if schema is None:
        return
    for i, (name, value) in enumerate(table[["attribute", "value"]].itertuples(index=False)):
        if name not in schema.names:
            raise DataFormatError(f"{source}: row {i}: attribute {name!r} not in schema "
                                  f"{schema.name!r} ({list(schema.names)})")
        if not pd.isna(value) and value not in schema[name].states:
            raise DataFormatError(f"{source}: row {i}: value {value!r} of attribute {name!r} is "
                                  f"not one of {list(schema[name].states)}")


def _parquet_engine(path: Path) -> str:
    for engine in _PARQUET_ENGINES:
        if importlib.util.find_spec(engine) is not None:
            return engine
    raise ImportError(f"{path}: reading/writing Parquet needs pyarrow or fastparquet; "
                      "install one (pip install pyarrow) or use CSV")


def load_attribute_table(path: str | os.PathLike,
                         schema: str | AttributeSchema | None = None) -> pd.DataFrame:
    """Load a tidy attribute table from ``.csv`` or ``.parquet`` (empty cell = missing value)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: attribute table not found")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            raw = pd.read_parquet(path, engine=_parquet_engine(path))
        elif suffix in (".csv", ".tsv"):
            raw = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str,
                              keep_default_na=False, na_values=[""], encoding="utf-8")
        else:
            raise DataFormatError(f"{path}: unknown table format {suffix!r}; "
                                  "use .csv, .tsv or .parquet")
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, ValueError) as exc:
        if isinstance(exc, DataFormatError):
            raise
        raise DataFormatError(f"{path}: cannot parse the table ({exc})") from None
    check_attribute_table(raw, None, source=path)
    pids = pd.to_numeric(raw["pid"], errors="coerce")
    bad = np.flatnonzero(pids.isna().to_numpy() | (pids != np.round(pids)).to_numpy())
    if len(bad):
        raise DataFormatError(f"{path}: row {int(bad[0])}: field 'pid' is not an integer "
                              f"({raw['pid'].iloc[bad[0]]!r})")
    for column in ("split", "attribute"):
        empty = np.flatnonzero(raw[column].isna().to_numpy())
        if len(empty):
            raise DataFormatError(f"{path}: row {int(empty[0])}: field {column!r} is empty")
    rows = list(zip(raw["split"].astype(str), pids.astype(np.int64), raw["attribute"].astype(str),
                    [None if pd.isna(v) else str(v) for v in raw["value"]], strict=True))
    table = _frame(rows)
    chosen = None if schema is None else resolve_schema(schema, None, path)
    check_attribute_table(table, chosen, source=path)
    table.attrs["schema"] = None if chosen is None else chosen.name
    table.attrs["source"] = str(path)
    table.attrs["invalid_codes"] = {}
    return table


def save_attribute_table(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the tidy table to ``.csv`` or ``.parquet`` atomically (missing value = empty cell)."""
    path = Path(path)
    check_attribute_table(table, None, source=path)
    out = table[list(TIDY_COLUMNS)]
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        engine = _parquet_engine(path)
        with atomic_path(path) as tmp:
            out.to_parquet(tmp, engine=engine, index=False)
    elif suffix in (".csv", ".tsv"):
        with atomic_path(path) as tmp:
            out.to_csv(tmp, sep="\t" if suffix == ".tsv" else ",", index=False, encoding="utf-8")
    else:
        raise DataFormatError(f"{path}: unknown table format {suffix!r}; use .csv or .parquet")
    return path


def load_attributes(path: str | os.PathLike,
                    schema: str | AttributeSchema | None = None) -> pd.DataFrame:
    """Load any supported attribute file, chosen by suffix (``.mat``, ``.csv``, ``.parquet``)."""
    if Path(path).suffix.lower() == ".mat":
        return load_attribute_mat(path, schema)
    return load_attribute_table(path, schema)


# --------------------------------------------------------------------------- modelling views

@dataclass
class AttributeCodes:
    """Per-identity integer codes for modelling.

    ``codes[i, a]``: index of the state of attribute ``a`` for identity ``keys[i]`` in
    ``schema[a].states``, or -1 when unknown (invalid code, no class set, or several classes set).
    ``multi_hot[i, j]``: 1 if state ``states[j]`` (an ``(attribute, state)`` pair) is set, 0 if
    not, -1 for every state of an attribute with an invalid code.
    """

    keys: list[tuple[str, int]]
    attributes: tuple[str, ...]
    codes: np.ndarray
    states: list[tuple[str, str]]
    multi_hot: np.ndarray

    def __post_init__(self) -> None:
        self._rows = {key: i for i, key in enumerate(self.keys)}

    def row(self, split: str, pid: int) -> int:
        """Row index of ``(split, pid)``; KeyError if the identity is not labelled."""
        return self._rows[(split, pid)]


def attribute_codes(table: pd.DataFrame,
                    schema: str | AttributeSchema | None = None) -> AttributeCodes:
    """Integer code matrix and multi-hot matrix, one row per (split, pid) in table order."""
    chosen = resolve_schema(schema if schema is not None else table.attrs.get("schema"), None,
                            table.attrs.get("source", "<table>"))
    check_attribute_table(table, chosen, source=table.attrs.get("source", "<table>"))
    keys = list(dict.fromkeys(zip(table["split"], table["pid"].astype(int), strict=True)))
    key_pos = {k: i for i, k in enumerate(keys)}
    attr_pos = {a.name: i for i, a in enumerate(chosen)}
    states = [(a.name, s) for a in chosen for s in a.states]
    state_pos = {st: j for j, st in enumerate(states)}
    offsets = {a.name: state_pos[(a.name, a.states[0])] for a in chosen}

    multi_hot = np.zeros((len(keys), len(states)), np.int64)
    invalid = np.zeros((len(keys), len(chosen)), bool)
    for split, pid, name, value in table[list(TIDY_COLUMNS)].itertuples(index=False):
        i = key_pos[(split, int(pid))]
        if pd.isna(value):
            invalid[i, attr_pos[name]] = True
        else:
            multi_hot[i, state_pos[(name, value)]] = 1
    codes = np.full((len(keys), len(chosen)), -1, np.int64)
    for a, attribute in enumerate(chosen):
        block = slice(offsets[attribute.name], offsets[attribute.name] + len(attribute.states))
        sub = multi_hot[:, block]
        single = (sub.sum(axis=1) == 1) & ~invalid[:, a]
        codes[single, a] = sub[single].argmax(axis=1)
        multi_hot[invalid[:, a], block] = -1
    return AttributeCodes(keys, chosen.names, codes, states, multi_hot)


#: The value of a one-field-per-class attribute (a colour) with no class set in its file.
NO_CLASS = "none"


def wide_attributes(table: pd.DataFrame, schema: str | AttributeSchema | None = None,
                    no_class: str | None = NO_CLASS) -> pd.DataFrame:
    """One row per (split, pid), one column per attribute.

    A cell holds the state name; several set classes are joined with ``"|"`` in state order.
    A labelled identity with *no* class of a one-field-per-class attribute set (the official
    Market-1501 files have such colour rows) gets ``no_class`` (``"none"``, an explicit state:
    the labeller saw no listed colour); ``no_class=None`` makes it a missing value. An invalid
    code, or an identity absent from the table, is always a missing value.
    """
    codes = attribute_codes(table, schema)
    chosen = resolve_schema(schema if schema is not None else table.attrs.get("schema"))
    data: dict[str, list[str | None]] = {}
    for attribute in chosen:
        start = codes.states.index((attribute.name, attribute.states[0]))
        block = codes.multi_hot[:, start:start + len(attribute.states)]
        column: list[str | None] = []
        for r in range(len(codes.keys)):
            if block[r, 0] == -1:
                column.append(None)
                continue
            set_states = [s for s, bit in zip(attribute.states, block[r], strict=True) if bit]
            if not set_states and attribute.one_field_per_class and no_class is not None:
                set_states = [no_class]  # every key is an identity the table labels
            column.append("|".join(set_states) if set_states else None)
        data[attribute.name] = column
    index = pd.MultiIndex.from_tuples(codes.keys, names=["split", "pid"])
    return pd.DataFrame(data, index=index, dtype=object)
