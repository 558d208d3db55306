"""Evaluate weave's Mongo-like ``{"$expr": …}`` queries against plain dict records.

Feedback and cost queries name fields with ``$getField`` (dotted paths reach into the
payload) and compare them with ``$literal`` values. The operators are weave's query
language (``trace_server/interface/query.py``): ``$and $or $not $eq $gt $gte $lt $lte
$in $contains $getField $literal $convert``. Anything else is an :class:`InvalidExpr`, which
the routes answer with 422 — a query this server cannot evaluate must never be ignored.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

Record = dict[str, Any]


class InvalidExpr(ValueError):
    """The query uses an operator or a shape this evaluator does not know."""


def compile_query(query: dict[str, Any] | None, field: str = "query") -> Callable[[Record], bool]:
    """A predicate for ``query`` (``None`` matches everything); validates the whole tree."""
    if query is None:
        return lambda record: True
    if set(query) != {"$expr"}:
        raise InvalidExpr(f"{field}: expected an object with the single key '$expr'")
    expr = query["$expr"]
    _validate(expr, f"{field}.$expr")
    return lambda record: bool(_eval(expr, record))


def fields_named(expr: Any, where: str) -> Iterator[tuple[str, str]]:
    """``(where, field)`` for each ``$getField`` of a validated expression."""
    if isinstance(expr, list):
        for i, sub in enumerate(expr):
            yield from fields_named(sub, f"{where}[{i}]")
    elif isinstance(expr, dict):
        for op, arg in expr.items():
            if op == "$getField":
                yield f"{where}.$getField", arg
            elif op != "$literal":
                yield from fields_named(arg, f"{where}.{op}")


def get_path(record: Record, path: str) -> Any:
    """``payload.note`` → ``record["payload"]["note"]``; missing parts give ``None``."""
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


_OPERAND_COUNTS = {"$eq": 2, "$gt": 2, "$gte": 2, "$lt": 2, "$lte": 2, "$in": 2}
_CONVERT_TO = frozenset({"double", "int", "string", "bool", "exists"})


def _validate(expr: Any, where: str) -> None:
    if not isinstance(expr, dict) or len(expr) != 1:
        raise InvalidExpr(f"{where}: expected an object with exactly one operator")
    ((op, arg),) = expr.items()
    if op in ("$and", "$or"):
        _validate_list(arg, where, op)
    elif op == "$not":
        _validate_list(arg, where, op, count=1)
    elif op in _OPERAND_COUNTS:
        _validate_list(arg, where, op, count=_OPERAND_COUNTS[op])
    elif op == "$contains":
        _validate_contains(arg, where)
    elif op == "$convert":
        if not isinstance(arg, dict) or "input" not in arg or arg.get("to") not in _CONVERT_TO:
            raise InvalidExpr(
                f"{where}.$convert: expected {{'input': …, 'to': one of {sorted(_CONVERT_TO)}}}"
            )
        _validate(arg["input"], f"{where}.$convert.input")
    elif op == "$getField":
        if not isinstance(arg, str):
            raise InvalidExpr(f"{where}.$getField: expected a field name string")
    elif op != "$literal":
        raise InvalidExpr(f"{where}: operator {op!r} is not supported by engine serve")


def _validate_list(arg: Any, where: str, op: str, count: int | None = None) -> None:
    if not isinstance(arg, list) or (count is not None and len(arg) != count):
        shape = f"a list of {count} operands" if count else "a list of operands"
        raise InvalidExpr(f"{where}.{op}: expected {shape}")
    if op == "$in":
        _validate(arg[0], f"{where}.$in[0]")
        if not isinstance(arg[1], list):
            raise InvalidExpr(f"{where}.$in[1]: expected a list of operands")
        arg = arg[1]
    for i, sub in enumerate(arg):
        _validate(sub, f"{where}.{op}[{i}]")


def _validate_contains(arg: Any, where: str) -> None:
    if not isinstance(arg, dict) or "input" not in arg or "substr" not in arg:
        raise InvalidExpr(f"{where}.$contains: expected {{'input': …, 'substr': …}}")
    _validate(arg["input"], f"{where}.$contains.input")
    _validate(arg["substr"], f"{where}.$contains.substr")


def _eval(expr: dict[str, Any], record: Record) -> Any:
    ((op, arg),) = expr.items()
    return _EVALUATORS[op](arg, record)


def _compare(arg: list[Any], record: Record, test: Callable[[Any, Any], bool]) -> bool:
    left, right = _eval(arg[0], record), _eval(arg[1], record)
    if left is None or right is None:
        return False
    try:
        return test(left, right)
    except TypeError:  # e.g. a string against a number: not ordered, so no match
        return False


def _contains(arg: dict[str, Any], record: Record) -> bool:
    value, substr = _eval(arg["input"], record), _eval(arg["substr"], record)
    if not isinstance(value, str) or not isinstance(substr, str):
        return False
    if arg.get("case_insensitive"):
        return substr.lower() in value.lower()
    return substr in value


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "double": float, "int": int, "string": str, "bool": bool,
}  # fmt: skip


def _convert(arg: dict[str, Any], record: Record) -> Any:
    value = _eval(arg["input"], record)
    if arg["to"] == "exists":
        return value is not None
    try:
        return None if value is None else _CONVERTERS[arg["to"]](value)
    except (TypeError, ValueError):  # not convertible: compares unequal to everything
        return None


_EVALUATORS: dict[str, Callable[[Any, Record], Any]] = {
    "$and": lambda arg, r: all(_eval(sub, r) for sub in arg),
    "$or": lambda arg, r: any(_eval(sub, r) for sub in arg),
    "$not": lambda arg, r: not _eval(arg[0], r),
    "$eq": lambda arg, r: _eval(arg[0], r) == _eval(arg[1], r),
    "$gt": lambda arg, r: _compare(arg, r, lambda a, b: a > b),
    "$gte": lambda arg, r: _compare(arg, r, lambda a, b: a >= b),
    "$lt": lambda arg, r: _compare(arg, r, lambda a, b: a < b),
    "$lte": lambda arg, r: _compare(arg, r, lambda a, b: a <= b),
    "$in": lambda arg, r: _eval(arg[0], r) in [_eval(sub, r) for sub in arg[1]],
    "$contains": _contains,
    "$convert": _convert,
    "$getField": lambda arg, r: get_path(r, arg),
    "$literal": lambda arg, r: arg,
}


def pinned_values(query: dict[str, Any] | None, field: str) -> list[str] | None:
    """The strings a record's top-level ``field`` must equal for it to match ``query`` (an
    ``$eq`` or ``$in`` against literals, alone or in a top-level ``$and``), or None when the
    query does not pin it. A store reads only the records holding one of them (through an
    index), then applies the whole query as before. Call after :func:`compile_query`."""
    if not query or "$expr" not in query:
        return None
    try:
        return _pins(query["$expr"], {"$getField": field})
    except (TypeError, ValueError, AttributeError):  # not a shape that pins it
        return None


def pinned_refs(kind: str, query: dict[str, Any] | None) -> list[str] | None:
    """The ``weave_ref`` values a feedback query pins (a call's or an object's feedback, a
    page of calls with ``include_feedback``): a store reads only their documents."""
    return pinned_values(query, "weave_ref") if kind == "feedback" else None


def _literal_str(value: Any) -> bool:
    return isinstance(value, dict) and value.keys() == {"$literal"} and isinstance(value["$literal"], str)


def _pins(expr: dict[str, Any], getter: dict[str, str]) -> list[str] | None:
    ((op, arg),) = expr.items()
    if op == "$and":
        return next((found for sub in arg if (found := _pins(sub, getter)) is not None), None)
    if op == "$eq":
        for left, right in ((arg[0], arg[1]), (arg[1], arg[0])):
            if left == getter and _literal_str(right):
                return [right["$literal"]]
    if op == "$in" and arg[0] == getter and all(_literal_str(v) for v in arg[1]):
        return [v["$literal"] for v in arg[1]]
    return None


def order_key(value: Any) -> tuple:
    """A total order over JSON values: numbers, then strings, then everything else."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value)
    if isinstance(value, str):
        return (1, value)
    return (2, json.dumps(value, sort_keys=True))


def select_docs(
    docs: Iterable[Record],
    predicate: Callable[[Record], bool],
    sort_by: Sequence[tuple[str, bool]],
    page: tuple[int, int],
    fields: Sequence[str] | None,
) -> tuple[list[Record], int]:
    """Filter, sort (``(path, descending)`` pairs, first most significant), page
    (``(limit, offset)``) and project (dotted ``fields`` keep their dotted name).
    Returns the page and how many records matched in all."""
    chosen = [doc for doc in docs if predicate(doc)]
    for path, descending in reversed(sort_by):  # stable sorts, least significant first
        chosen.sort(key=lambda doc: order_key(get_path(doc, path)), reverse=descending)
    limit, offset = page
    selected = chosen[offset : offset + limit]
    if fields is not None:
        selected = [{name: get_path(doc, name) for name in fields} for doc in selected]
    return selected, len(chosen)
