"""A stored call as weave's server answers it, whatever the store.

- ``summary.weave`` is derived on the way out (weave's ``make_derived_summary_fields``):
  ``status`` (error / running / descendant_error / success), ``latency_ms`` (whole
  milliseconds), and ``display_name`` when the call has one, else ``trace_name`` (the
  op's name for an op ref, the op name otherwise). Stored values of those keys are
  replaced.
- An empty ``display_name`` reads as null; an OTel span kept in ``otel_dump`` reads as
  ``attributes.otel_span``.
- ``columns`` keeps only the named top-level fields (plus the ones a call always has).
- ``include_costs`` adds ``summary.weave.costs`` per model with a project price,
  ``include_feedback`` adds ``summary.weave.feedback``, ``expand_columns`` replaces
  object refs at those paths by their values (the ref kept under ``<path>._ref``).
"""

from __future__ import annotations

import datetime as _dt
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from engine.server._calls_sql import split_path
from engine.server._sqlite_db import ref_name
from engine.server._store import CallRow

_REQUIRED = ("id", "trace_id", "project_id", "op_name", "started_at")
_DERIVED = ("status", "trace_name", "latency_ms", "display_name")
FEEDBACK_FIELDS = (
    "id", "feedback_type", "weave_ref", "payload", "creator", "created_at", "wb_user_id",
    "runnable_ref", "call_ref", "trigger_ref", "annotation_ref", "scorer_tags",
    "scorer_tag_reasons", "scorer_tag_confidences", "scorer_ratings", "scorer_rating_reasons",
    "scorer_rating_confidences",
)  # fmt: skip


_decode = msgspec.json.Decoder().decode


def _decoded(value: Any) -> Any:
    return _decode(value) if isinstance(value, msgspec.Raw) else value


def selected_columns(columns: list[str], include_costs: bool) -> set[str]:
    """The top-level fields a ``columns`` list keeps (weave's rule)."""
    keep = {c.split(".")[0].removesuffix("_dump") for c in columns}
    if include_costs:
        keep.add("summary")
    if "summary" in keep:
        keep.update(("ended_at", "exception", "display_name"))
    return keep | set(_REQUIRED)


def json_columns_read(keep: set[str] | None, storage_size: bool) -> tuple[str, ...] | None:
    """The stored JSON columns a view keeping ``keep`` shows (None: every one): the others
    need not be read. An OTel span shows as ``attributes.otel_span``; a storage size
    counts every column."""
    if keep is None or storage_size:
        return None
    shown = [c for c in ("attributes", "inputs", "output", "summary") if c in keep]
    return (*shown, "otel_dump") if "attributes" in keep else tuple(shown)


def stored_bytes(call: CallRow) -> int:
    """Bytes of the call's stored JSON text (attributes, inputs, output, summary)."""
    return sum(len(v) for k in ("attributes", "inputs", "output", "summary")
               if isinstance(v := call.get(k), msgspec.Raw))  # fmt: skip


def latency_ms(started: _dt.datetime, ended: _dt.datetime) -> int:
    delta = ended - started
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def derived_summary(call: CallRow) -> dict[str, Any]:
    summary = _decoded(call.get("summary")) or {}
    weave = summary.pop("weave", None)
    weave = {k: v for k, v in weave.items() if k not in _DERIVED} if isinstance(weave, dict) else {}
    started, ended = call.get("started_at"), call.get("ended_at")
    if call.get("exception"):
        weave["status"] = "error"
    elif ended is None:
        weave["status"] = "running"
    else:
        status_counts = summary.get("status_counts")
        errors = status_counts.get("error", 0) if isinstance(status_counts, dict) else 0
        weave["status"] = "descendant_error" if errors > 0 else "success"
    if ended is not None and started is not None:
        weave["latency_ms"] = latency_ms(started, ended)
    if display_name := call.get("display_name"):
        weave["display_name"] = display_name
    else:
        op_name = call["op_name"]
        weave["trace_name"] = ref_name(op_name) if op_name.startswith("weave:///") else op_name
    summary["weave"] = weave
    return summary


def call_view(call: CallRow, columns: set[str] | None = None) -> CallRow:
    otel = call.pop("otel_dump", None)
    if call.get("display_name") == "":
        call["display_name"] = None
    if otel is not None:
        attributes = _decoded(call.get("attributes")) or {}
        call["attributes"] = {**attributes, "otel_span": _decoded(otel)}
    if columns is not None:
        call = {k: v for k, v in call.items() if k in columns}
        call.setdefault("attributes", {})
        call.setdefault("inputs", {})
    call["summary"] = derived_summary(call)
    return call


# -- enrichments that read other stored things --------------------------------------------


def _int(value: Any) -> int:
    try:
        return int(value) if value is not None else 0
    except (TypeError, ValueError):
        return 0


def usage_by_model(summary: dict[str, Any]) -> dict[str, dict[str, int]]:
    usage = summary.get("usage")
    if not isinstance(usage, dict):
        return {}
    return {
        str(model): {
            "prompt_tokens": _int(u.get("prompt_tokens")) + _int(u.get("input_tokens")),
            "completion_tokens": _int(u.get("completion_tokens")) + _int(u.get("output_tokens")),
            "requests": _int(u.get("requests")), "total_tokens": _int(u.get("total_tokens")),
            "cache_read_input_tokens": _int(u.get("cache_read_input_tokens")),
            "cache_creation_input_tokens": _int(u.get("cache_creation_input_tokens")),
        }
        for model, u in usage.items() if isinstance(u, dict)
    }  # fmt: skip


def _price_for(prices: list[dict[str, Any]], started: _dt.datetime) -> dict[str, Any] | None:
    """The price in effect when the call started (else the earliest one to come)."""
    def key(price: dict[str, Any]) -> tuple[int, float]:
        effective = _dt.datetime.fromisoformat(price["effective_date"].replace("Z", "+00:00"))
        return (effective > started, -effective.timestamp())

    return min(prices, key=key) if prices else None


def call_costs(usage: dict[str, dict[str, int]], prices: dict[str, list[dict[str, Any]]],
               started: _dt.datetime, project_id: str) -> dict[str, dict[str, Any]]:  # fmt: skip
    costs = {}
    for model, used in usage.items():
        price = _price_for(prices.get(model, []), started)
        if price is None:
            continue
        rates = {k: float(price.get(k) or 0.0) for k in (
            "prompt_token_cost", "completion_token_cost", "cache_read_input_token_cost",
            "cache_creation_input_token_cost")}  # fmt: skip
        cached = used["cache_read_input_tokens"] + used["cache_creation_input_tokens"]
        costs[model] = {
            **used,
            "prompt_tokens_total_cost": (used["prompt_tokens"] - cached) * rates["prompt_token_cost"],
            "completion_tokens_total_cost": used["completion_tokens"] * rates["completion_token_cost"],
            "cache_read_input_tokens_total_cost":
                used["cache_read_input_tokens"] * rates["cache_read_input_token_cost"],
            "cache_creation_input_tokens_total_cost":
                used["cache_creation_input_tokens"] * rates["cache_creation_input_token_cost"],
            **rates,
            "prompt_token_cost_unit": price.get("prompt_token_cost_unit") or "USD",
            "completion_token_cost_unit": price.get("completion_token_cost_unit") or "USD",
            "effective_date": price["effective_date"], "provider_id": price.get("provider_id"),
            "pricing_level": "project", "pricing_level_id": project_id,
            "created_at": price.get("created_at"), "created_by": price.get("created_by"),
        }  # fmt: skip
    return costs


def add_costs(calls: list[CallRow], prices: dict[str, list[dict[str, Any]]]) -> None:
    for call in calls:
        usage = usage_by_model(call["summary"])
        costs = call_costs(usage, prices, call["started_at"], call["project_id"])
        if costs:
            call["summary"]["weave"]["costs"] = costs


def add_feedback(calls: list[CallRow], feedback: list[dict[str, Any]]) -> None:
    by_call: dict[str, list[dict[str, Any]]] = {}
    for item in feedback:
        by_call.setdefault(item["weave_ref"].rsplit("/", 1)[-1], []).append(item)
    for call in calls:
        call["summary"]["weave"]["feedback"] = by_call.get(call["id"], [])


def _get_path(value: Any, parts: list[str]) -> Any:
    for part in parts:
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _set_path(value: Any, parts: list[str], new: Any) -> None:
    for part in parts[:-1]:
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, dict):
        value[parts[-1]] = new


async def expand_refs(call: CallRow, columns: list[str],
                      read: Callable[[str], Awaitable[Any]]) -> None:  # fmt: skip
    """Replace object refs at ``columns`` (shallowest first) by what ``read`` gives, with
    the ref at ``_ref``; a ref that reads as null (a deleted object) stays ``{"_ref": ref}``,
    as weave's reference server leaves it."""
    for column in sorted(columns, key=lambda c: c.count(".")):
        parts = split_path(column)
        head = parts[0]
        if head not in call:
            continue
        call[head] = _decoded(call[head])
        root = {head: call[head]}
        ref = _get_path(root, parts)
        if not (isinstance(ref, str) and ref.startswith("weave:///")) or "/object/" not in ref:
            continue
        val = await read(ref)
        _set_path(root, parts, {} if val is None else val)
        _set_path(root, [*parts, "_ref"], ref)
        call[head] = root[head]


# -- previews: the start of a value, for a page that shows only its first characters -------


def preview(value: Any, chars: int, depth: int = 0) -> Any:
    """``value`` cut so that its JSON text starts with the same ``chars`` characters or more:
    strings to ``chars`` characters (weave refs whole: a page reads them), lists and objects
    to their first ``chars`` entries, nesting to ``chars`` levels. Each entry kept takes at
    least one character of the text, so what is cut lies past its first ``chars``."""
    if isinstance(value, str):
        return value if len(value) <= chars or value.startswith("weave:///") else value[:chars]
    if isinstance(value, (list, dict)) and depth >= chars:
        return None
    if isinstance(value, list):
        return [preview(v, chars, depth + 1) for v in value[:chars]]
    if isinstance(value, dict):
        return {k[:chars]: preview(v, chars, depth + 1)
                for k, v in itertools.islice(value.items(), chars)}  # fmt: skip
    return value


def with_previews(call: CallRow, previews: dict[str, int]) -> CallRow:
    """``call`` with the value at each dotted path of ``previews`` (``output.output``) cut to
    a preview of that many characters; a path the call does not hold is left alone."""
    for path, chars in previews.items():
        head, *parts = split_path(path)
        if head not in call:
            continue
        parent = call[head] = _decoded(call[head])
        for part in parts[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and parts and parts[-1] in parent:
            parent[parts[-1]] = preview(parent[parts[-1]], chars)
    return call
