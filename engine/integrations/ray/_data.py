"""Ray Data: trace the function given to ``Dataset.map_batches``, per batch or per row.

    ds.map_batches(traced_batches(tracer, add_score, per="row"), batch_format="numpy")

``per="batch"``: ``fn`` takes and returns a batch; one call per batch, its inputs and output
the batch's row count and columns (a batch is too large to be a call's payload).
``per="row"``: ``fn`` takes one row (a dict) and returns one row; one call per row, with the
row as inputs and the returned row as output, all under one call per batch. Batches are
numpy (a dict of arrays) or pandas; a row's values are plain Python values.

Every batch call is a child of the call that was current where ``traced_batches`` was
called (Ray Data runs the function later, in tasks of its own), and its ids are the same
when Ray Data retries the task.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from engine.integrations.ray._tracer import ClusterTracer, TaskCall, _ray_task_id
from engine.producer._nested import current_parent
from engine.wire import uuid7

__all__ = ["traced_batches"]

Per = Literal["batch", "row"]


def traced_batches(tracer: ClusterTracer, fn: Callable[[Any], Any], *, per: Per = "batch",
                   name: str | None = None) -> Callable[[Any], Any]:
    """A function for ``map_batches`` that runs ``fn`` and traces it (see the module doc)."""
    if per not in ("batch", "row"):
        raise ValueError(f"per must be 'batch' or 'row', got {per!r}")
    if not isinstance(tracer, ClusterTracer):
        raise TypeError("traced_batches needs the tracer of a RayEngine (RayEngine.producer())")
    op_name = name or getattr(fn, "__qualname__", repr(fn))
    parent = current_parent()
    apply = _per_row(tracer, fn, op_name) if per == "row" else fn

    def traced(batch: Any) -> Any:
        task_id = _ray_task_id() or uuid7()  # run outside a task (ids are then random)
        with TaskCall(tracer, task_id, f"{op_name}.batch" if per == "row" else op_name,
                      _describe_batch(batch), {}, None, tracer.project, parent) as call:
            out = apply(batch)
            call.output = _describe_batch(out)
        return out

    traced.__name__ = getattr(fn, "__name__", "traced_batches")
    return traced


def _per_row(tracer: ClusterTracer, fn: Callable[[Any], Any],
             op_name: str) -> Callable[[Any], Any]:
    row_op = tracer.op(fn, name=op_name)

    def each_row(batch: Any) -> Any:
        rows, rebuild = _rows_of(batch)
        return rebuild([row_op(row) for row in rows])

    return each_row


def _rows_of(batch: Any) -> tuple[list[dict[str, Any]], Callable[[list[dict]], Any]]:
    """The batch's rows as dicts of plain values, and how to make a batch of its kind again."""
    if isinstance(batch, dict):  # numpy: column -> array
        import numpy as np

        columns = {key: np.asarray(values).tolist() for key, values in batch.items()}
        count = len(next(iter(columns.values()), []))
        rows = [{key: values[i] for key, values in columns.items()} for i in range(count)]
        return rows, lambda out: {key: np.asarray([row[key] for row in out])
                                  for key in (out[0] if out else batch)}
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - Ray Data needs pandas for this format
        pd = None
    if pd is not None and isinstance(batch, pd.DataFrame):
        return batch.to_dict("records"), lambda out: pd.DataFrame(out, columns=None)
    raise TypeError(f"per='row' needs numpy or pandas batches (batch_format='numpy' or "
                    f"'pandas'), got {type(batch).__name__}")


def _describe_batch(batch: Any) -> dict[str, Any]:
    """A batch as a call's inputs or output: its row count and columns."""
    if isinstance(batch, dict):
        columns = list(batch)
        rows = len(batch[columns[0]]) if columns else 0
    elif hasattr(batch, "column_names"):  # pyarrow
        columns, rows = list(batch.column_names), batch.num_rows
    elif hasattr(batch, "columns") and hasattr(batch, "__len__"):  # pandas
        columns, rows = [str(c) for c in batch.columns], len(batch)
    else:
        columns, rows = [], len(batch) if hasattr(batch, "__len__") else 0
    return {"rows": rows, "columns": columns}
