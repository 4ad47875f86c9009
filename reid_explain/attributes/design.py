"""Per-query inputs of the attribute study: validated outcomes and encoded attributes.

The unit of analysis is the *query*: every query carries the attributes of its identity, so rows
of one identity repeat and every later analysis clusters or groups by ``pid``.

Encodings (also in ``docs/attribute_study.md``):

* **GLM design** (``AttributeDesign.X``): a ``presence`` / ``two_state`` attribute is one 0/1
  column ``"<attr>=<state>"`` for its second state (reference: the first state, ``"no"`` for
  presence). A ``multiclass`` attribute is one-hot with its **most frequent class among the
  queries as the reference level** (ties: the earlier class in schema order), one column per
  other observed class. Colours stored one field per class can be *multi-hot* (several classes
  set): such a query has a 1 in every set non-reference column; membership of the reference class
  is the implicit baseline. Classes never observed get no column.
* **Forest features** (``AttributeDesign.features``): one column per attribute, so that
  permuting a column permutes the whole attribute. Binary attributes are 0/1; a multiclass
  attribute is an ordinal code of its observed value (single classes in schema order, then
  multi-hot combinations), which trees split on freely.
* **Test groups**: the same observed values as the forest codes.

An attribute with one observed value among the queries is dropped with a warning (no variation,
nothing to estimate); it is listed in ``AttributeDesign.dropped``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from reid_explain.data.attributes import (
    NO_CLASS,
    TIDY_COLUMNS,
    resolve_schema,
    wide_attributes,
)
from reid_explain.data.schema import Attribute, AttributeKind, AttributeSchema
from reid_explain.errors import DataFormatError, InputError

__all__ = [
    "AttributeDesign",
    "DELTA_PREFIX",
    "encode_attributes",
    "prepare_outcomes",
    "query_attributes",
]

#: Outcome columns whose name starts with this are per-expert-group ΔAP responses
#: (``delta_ap_<group>`` = AP with every expert − AP with expert group ``<group>`` switched off).
DELTA_PREFIX = "delta_ap_"

_HIT_ALIASES = ("hit", "hit@1", "rank1")

Missing = Literal["error", "drop"]


def _fmt(items: Sequence, limit: int = 5) -> str:
    head = ", ".join(str(i) for i in list(items)[:limit])
    return f"[{head}{', ...' if len(items) > limit else ''}] ({len(items)} in all)"


def prepare_outcomes(outcomes: pd.DataFrame, *, ap: str | None = "ap", hit: str | None = None,
                     delta_columns: Sequence[str] | None = None,
                     source: str = "outcomes") -> tuple[pd.DataFrame, dict[str, str]]:
    """Check the per-query outcome table; return it (with a ``query`` column) and the responses.

    Responses map a name to its kind: ``"fraction"`` (AP in [0, 1]), ``"binary"`` (rank-1 hit),
    ``"delta"`` (ΔAP in [-1, 1]). ``ap=None`` skips AP; ``hit`` defaults to the first of ``hit``,
    ``hit@1``, ``rank1`` present; ``delta_columns`` defaults to every column starting with
    :data:`DELTA_PREFIX`.
    A NaN, a value out of range or a non-0/1 hit is an :class:`InputError` naming the query.
    """
    if not isinstance(outcomes, pd.DataFrame):
        raise InputError(f"{source}: expected a pandas DataFrame of per-query outcomes, "
                         f"got {type(outcomes).__name__}")
    if "pid" not in outcomes.columns:
        raise InputError(f"{source}: missing column 'pid' (the query's identity); columns: "
                         f"{list(outcomes.columns)}")
    if len(outcomes) == 0:
        raise InputError(f"{source}: no queries")
    table = outcomes.reset_index(drop=True).copy()
    if "query" not in table.columns:
        table.insert(0, "query", np.arange(len(table)))
    pids = pd.to_numeric(table["pid"], errors="coerce")
    bad = np.flatnonzero(pids.isna().to_numpy() | (pids != np.round(pids)).to_numpy())
    if len(bad):
        raise InputError(f"{source}: column 'pid' is not an integer id for queries "
                         f"{_fmt(table['query'].iloc[bad].tolist())}")
    table["pid"] = pids.astype(np.int64)

    if hit is None:
        hit = next((c for c in _HIT_ALIASES if c in table.columns), None)
    if delta_columns is None:
        delta_columns = [c for c in table.columns if str(c).startswith(DELTA_PREFIX)]
    wanted: dict[str, str] = {}
    if ap is not None:
        if ap not in table.columns:
            raise InputError(f"{source}: AP column {ap!r} not found (pass ap=None to study "
                             f"only the other responses); columns: {list(table.columns)}")
        wanted[ap] = "fraction"
    if hit is None and ap is not None and not delta_columns:
        warnings.warn(f"{source}: no rank-1 hit column ({', '.join(_HIT_ALIASES)}); only AP "
                      "is analysed", UserWarning, stacklevel=3)
    if hit is not None:
        if hit not in table.columns:
            raise InputError(f"{source}: hit column {hit!r} not found; columns: "
                             f"{list(table.columns)}")
        wanted[hit] = "binary"
    for column in delta_columns:
        if column not in table.columns:
            raise InputError(f"{source}: ΔAP column {column!r} not found")
        wanted[column] = "delta"
    if not wanted:
        raise InputError(f"{source}: no response column: expected {ap!r} (AP), one of "
                         f"{list(_HIT_ALIASES)} (rank-1 hit) or {DELTA_PREFIX}<group> (ΔAP); "
                         f"columns: {list(table.columns)}")
    ranges = {"fraction": (0.0, 1.0), "binary": (0.0, 1.0), "delta": (-1.0, 1.0)}
    for column, kind in wanted.items():
        values = pd.to_numeric(table[column].astype(object).where(table[column].notna()),
                               errors="coerce").astype(float)
        nan = np.flatnonzero(~np.isfinite(values.to_numpy()))
        if len(nan):
            raise InputError(f"{source}: column {column!r} is NaN/inf or not a number for "
                             f"queries {_fmt(table['query'].iloc[nan].tolist())}; drop those "
                             "queries (e.g. queries without a true match) before the study")
        low, high = ranges[kind]
        out = np.flatnonzero((values < low).to_numpy() | (values > high).to_numpy())
        if kind == "binary":
            out = np.flatnonzero(~values.isin([0.0, 1.0]).to_numpy())
        if len(out):
            what = "0 or 1" if kind == "binary" else f"in [{low:g}, {high:g}]"
            raise InputError(f"{source}: column {column!r} must be {what}; queries "
                             f"{_fmt(table['query'].iloc[out].tolist())} are not")
        table[column] = values.astype(np.int64) if kind == "binary" else values
    return table, wanted


def _wide_from(attributes: pd.DataFrame, schema: AttributeSchema,
               split: str | None, no_class: str | None = NO_CLASS) -> pd.DataFrame:
    """The attribute table as one row per pid (index ``pid``), one column per attribute."""
    if set(TIDY_COLUMNS) <= set(attributes.columns):
        wide = wide_attributes(attributes, schema, no_class=no_class)
    else:
        wide = attributes.copy()
        if "pid" in wide.columns:
            wide = wide.set_index(["split", "pid"] if "split" in wide.columns else "pid")
        missing = [a for a in schema.names if a not in wide.columns]
        if missing:
            raise DataFormatError(f"attributes: wide table lacks column(s) {missing} of schema "
                                  f"{schema.name!r}; columns: {list(wide.columns)}")
        if "pid" not in wide.index.names:
            raise DataFormatError("attributes: a wide table needs a 'pid' column or index level")
        for attribute in schema:
            for value in wide[attribute.name]:
                if pd.isna(value):
                    continue
                states = str(value).split("|")
                if any(s not in _states(attribute) for s in states):
                    raise DataFormatError(
                        f"attributes: column {attribute.name!r}: value {value!r} is not one of "
                        f"{list(attribute.states)} (several classes joined with '|')")
        wide = wide[list(schema.names)]
    if "split" in wide.index.names:
        if split is not None:
            splits = wide.index.get_level_values("split")
            if split not in set(splits):
                raise InputError(f"attributes: no split {split!r}; splits: {sorted(set(splits))}")
            wide = wide[splits == split]
        wide = wide.droplevel("split")
    wide.index = wide.index.astype(np.int64)
    dup = wide.index[wide.index.duplicated()].unique()
    if len(dup):
        raise InputError(f"attributes: pids {_fmt(dup.tolist())} are labelled more than once "
                         "(in several splits); pass split= (e.g. 'test' for query identities)")
    return wide


def query_attributes(attributes: pd.DataFrame, pids: Sequence[int],
                     schema: str | AttributeSchema | None = None, *, split: str | None = None,
                     missing: Missing = "error", no_class: str | None = NO_CLASS
                     ) -> tuple[pd.DataFrame, np.ndarray]:
    """Attribute values (state names, ``"|"``-joined when multi-hot) for each query's pid.

    ``attributes``: a tidy table (:mod:`reid_explain.data.attributes`) or a wide one (a ``pid``
    column or index, one column per schema attribute). A colour with no class set in a tidy
    table is the state ``no_class`` ("none", with its own indicator in the design; ``None``
    makes it missing instead, the policy before issue 15). ``missing="error"`` raises
    :class:`InputError` naming the pids without labels (absent, invalid code, no colour set);
    ``"drop"`` drops those queries with a warning. Returns the per-query values (index: query
    row) and the boolean mask of the queries kept.
    """
    if missing not in ("error", "drop"):
        raise InputError(f"missing must be 'error' or 'drop', got {missing!r}")
    if not isinstance(attributes, pd.DataFrame):
        raise InputError(f"attributes: expected a pandas DataFrame, got "
                         f"{type(attributes).__name__}")
    chosen = resolve_schema(schema if schema is not None else attributes.attrs.get("schema"),
                            None, attributes.attrs.get("source", "attributes"))
    wide = _wide_from(attributes, chosen, split, no_class)
    pids = np.asarray(pids, dtype=np.int64)
    values = wide.reindex(pids)
    values.index = pd.RangeIndex(len(pids))
    absent = sorted(set(pids[~np.isin(pids, wide.index.to_numpy())].tolist()))
    unknown = values.isna()
    keep = ~unknown.any(axis=1).to_numpy()
    if not keep.all():
        gaps = {a: sorted(set(pids[unknown[a].to_numpy()].tolist()))
                for a in chosen.names if unknown[a].any()}
        detail = "; ".join(f"{a}: pids {_fmt(p)}" for a, p in gaps.items())
        msg = (f"{(~keep).sum()} of {len(pids)} queries have no label for some attribute"
               + (f" (pids absent from the attribute table: {_fmt(absent)})" if absent else "")
               + f" — {detail}")
        if missing == "error":
            raise InputError(f"attributes: {msg}; pass missing='drop' to leave those queries "
                             "out, or check split=/schema=")
        warnings.warn(f"attributes: dropping {msg}", UserWarning, stacklevel=2)
        if not keep.any():
            raise InputError("attributes: no query has a complete set of attribute labels")
    return values[keep].reset_index(drop=True), keep


@dataclass
class AttributeDesign:
    """The encodings of one set of queries (see the module docstring for the policies)."""

    schema: AttributeSchema
    values: pd.DataFrame              # per query: state name(s) of each kept attribute
    X: pd.DataFrame                   # GLM design, no constant
    blocks: dict[str, list[str]]      # attribute -> its columns of X
    reference: dict[str, str]         # attribute -> reference state (the all-zero row)
    features: pd.DataFrame            # forest: one column per attribute
    levels: dict[str, list[str]]      # attribute -> observed values in feature-code order
    dropped: dict[str, str] = field(default_factory=dict)

    @property
    def attributes(self) -> list[str]:
        return list(self.blocks)


def _states(attribute: Attribute) -> tuple[str, ...]:
    """The attribute's states, plus the explicit no-class state of a colour-like attribute."""
    return attribute.states + ((NO_CLASS,) if attribute.one_field_per_class else ())


def _level_key(value: str, states: tuple[str, ...]) -> tuple:
    parts = value.split("|")
    return (len(parts), tuple(states.index(p) for p in parts))


def encode_attributes(values: pd.DataFrame, schema: AttributeSchema) -> AttributeDesign:
    """Encode per-query attribute values (from :func:`query_attributes`) for every analysis."""
    n = len(values)
    columns: dict[str, np.ndarray] = {}
    blocks: dict[str, list[str]] = {}
    reference: dict[str, str] = {}
    features: dict[str, np.ndarray] = {}
    levels: dict[str, list[str]] = {}
    dropped: dict[str, str] = {}
    for attribute in schema:
        column = values[attribute.name].astype(str)
        states = _states(attribute)
        observed = sorted(column.unique(), key=lambda v, s=states: _level_key(v, s))
        if len(observed) < 2:
            dropped[attribute.name] = f"constant ({observed[0]!r} for every query)"
            warnings.warn(f"attribute {attribute.name!r} is {dropped[attribute.name]}; dropped "
                          "from the study", UserWarning, stacklevel=2)
            continue
        code = {v: i for i, v in enumerate(observed)}
        features[attribute.name] = column.map(code).to_numpy(np.int64)
        levels[attribute.name] = observed
        if attribute.kind is AttributeKind.MULTICLASS:
            sets = [set(v.split("|")) for v in column]
            counts = {s: sum(s in members for members in sets) for s in states}
            present = [s for s in states if counts[s] > 0]
            ref = max(present, key=lambda s: (counts[s], -states.index(s)))
            names = []
            for state in present:
                if state == ref:
                    continue
                indicator = np.fromiter((state in members for members in sets), np.float64, n)
                if indicator.all():  # set for every query: collinear with the intercept
                    warnings.warn(f"attribute {attribute.name!r}: class {state!r} is set for "
                                  "every query; its column is left out", UserWarning,
                                  stacklevel=2)
                    continue
                names.append(f"{attribute.name}={state}")
                columns[names[-1]] = indicator
        else:
            ref = attribute.states[0]
            names = [f"{attribute.name}={attribute.states[1]}"]
            columns[names[0]] = (column == attribute.states[1]).to_numpy(np.float64)
        blocks[attribute.name] = names
        reference[attribute.name] = ref
    if not blocks:
        raise InputError("attributes: every attribute is constant over the queries; "
                         "nothing to study")
    X = pd.DataFrame(columns, index=values.index)
    feats = pd.DataFrame(features, index=values.index)
    kept = values[list(blocks)].astype(str)
    return AttributeDesign(schema, kept, X, blocks, reference, feats, levels, dropped)
