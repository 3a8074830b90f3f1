"""The exporter's two checks on what it writes: is a stream record usable, and which Arrow types do
its sample rows take.

A record the exporter cannot use (not JSON, a format it does not read, a field of the wrong shape)
is named with its reason by ``impression_problem`` / ``click_problem``, so the export sets it aside
and goes on. Every record the service writes passes: ids are integers or strings (``contracts.ids``),
and the two may meet in one column (a user id sent once as ``"1"``, a feature whose type changed
between versions). Parquet has no union type, so ``typed_tables`` splits an hour's rows into as few
tables as keep each column of one type, each table with the union of the rows' columns (a feature
a row lacks is null).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from contracts.ids import is_id

ARROW = {"int": pa.int64(), "str": pa.string(), "float": pa.float64(), "bool": pa.bool_()}


def _ids_or_null(values: Mapping[str, Any], where: str) -> str | None:
    for k, v in values.items():
        if v is not None and not is_id(v) and not (k == "ts" and type(v) is int):
            return f"{where}.{k} is not an id"
    return None


def impression_problem(rec: Mapping[str, Any]) -> str | None:
    """Why an impression record cannot be exported, or None."""
    shapes = {
        "request_id": str,
        "model_version": str,
        "degraded": bool,
        "fields": list,
        "history": list,
        "profile": dict,
        "context": dict,
        "candidates": list,
        "ctr": list,
    }
    for name, kind in shapes.items():
        if not isinstance(rec.get(name), kind):
            return f"{name} is missing or not a {kind.__name__}"
    if type(rec.get("ts")) not in (int, float):
        return "ts is missing or not a number"
    if not is_id(rec.get("user_id")):
        return "user_id is not an id"
    if not isinstance(rec.get("key_id", ""), str):
        return "key_id is not a string"
    if not all(isinstance(f, str) and f for f in rec["fields"]):
        return "fields must be names"
    n = len(rec["candidates"])
    for name in ("ctr", "propensity", "explored"):
        if name in rec and (not isinstance(rec[name], list) or len(rec[name]) != n):
            return f"{name} must hold one value per candidate"
    if not all(type(c) in (int, float) for c in rec["ctr"]):
        return "ctr must hold numbers"
    for i, c in enumerate(rec["candidates"]):
        if not isinstance(c, dict):
            return f"candidates[{i}] is not an object"
        if problem := _ids_or_null(c, f"candidates[{i}]"):
            return problem
    for i, b in enumerate(rec["history"]):
        if not isinstance(b, dict):
            return f"history[{i}] is not an object"
        if problem := _ids_or_null(b, f"history[{i}]"):
            return problem
    return _ids_or_null(rec["profile"], "profile") or _ids_or_null(rec["context"], "context")


def click_problem(rec: Mapping[str, Any]) -> str | None:
    """Why a click record cannot be used for labels, or None."""
    if not is_id(rec.get("user_id")) or not is_id(rec.get("item_id")):
        return "user_id and item_id must be ids"
    if type(rec.get("at")) not in (int, float):
        return "at is missing or not a number"
    if rec.get("request_id") is not None and not isinstance(rec["request_id"], str):
        return "request_id is not a string"
    return None


def _kind(v: Any) -> str | None:
    """A scalar's column kind; None for null (it fits any column)."""
    if v is None:
        return None
    if type(v) is bool:
        return "bool"
    if type(v) is int:
        return "int"
    if type(v) is float:
        return "float"
    return "str"


@dataclass
class TypedRows:
    """Rows whose every column holds one kind of value."""

    kinds: dict[str, str] = field(default_factory=dict)  # column -> kind; "list:int" for lists
    rows: list[dict[str, Any]] = field(default_factory=list)

    def fits(self, kinds: Mapping[str, str]) -> bool:
        return all(self.kinds.get(c, k) == k for c, k in kinds.items())


def row_kinds(row: dict[str, Any]) -> tuple[dict[str, str], int]:
    """Each non-null column's kind. A list (a history field) takes the kind most of its elements
    have; elements of another kind are set to null in place, which training reads as missing, and
    counted (a history may hold a behaviour whose id was sent as the other type)."""
    kinds, nulled = {}, 0
    for col, v in row.items():
        if isinstance(v, list):
            counts = Counter(k for k in map(_kind, v) if k is not None)
            if not counts:
                continue
            most = counts.most_common(1)[0][0]
            if len(counts) > 1:
                nulled += sum(n for k, n in counts.items() if k != most)
                row[col] = [x if _kind(x) == most else None for x in v]
            kinds[col] = f"list:{most}"
        elif (scalar := _kind(v)) is not None:
            kinds[col] = scalar
    return kinds, nulled


def typed_tables(rows: Sequence[dict[str, Any]]) -> tuple[list[pa.Table], int]:
    """The rows as few tables as keep each column of one type, every table with every column any
    row has (in first-seen order; null where a row lacks it); and the list elements set to null."""
    columns = list(dict.fromkeys(c for row in rows for c in row))
    lists = {c for row in rows for c, v in row.items() if isinstance(v, list)}
    groups: list[TypedRows] = []
    nulled = 0
    for row in rows:
        kinds, n = row_kinds(row)
        nulled += n
        group = next((g for g in groups if g.fits(kinds)), None)
        if group is None:
            group = TypedRows()
            groups.append(group)
        group.kinds.update(kinds)
        group.rows.append(row)
    tables = []
    for g in groups:
        schema = pa.schema([(c, _arrow(g.kinds.get(c), c in lists)) for c in columns])
        tables.append(pa.Table.from_pylist(g.rows, schema=schema))
    return tables, nulled


def _arrow(kind: str | None, is_list: bool) -> pa.DataType:
    if kind is None:
        return pa.list_(pa.null()) if is_list else pa.null()
    if kind.startswith("list:"):
        return pa.list_(ARROW[kind[len("list:") :]])
    return ARROW[kind]
