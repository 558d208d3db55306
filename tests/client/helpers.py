"""Request builders shared by the client tests."""

from __future__ import annotations

import datetime as dt
from typing import Any

from engine.wire import uuid7

T0 = dt.datetime(2026, 11, 28, 12, 0, 0, tzinfo=dt.timezone.utc)


def start(project: str, op_name: str = "predict", **fields: Any) -> dict[str, Any]:
    body = {"project_id": project, "id": uuid7(), "trace_id": uuid7(), "op_name": op_name,
            "started_at": T0, "attributes": {}, "inputs": {"x": 1}}
    body.update(fields)
    return body


def end(project: str, call_id: str, **fields: Any) -> dict[str, Any]:
    body = {"project_id": project, "id": call_id, "ended_at": T0 + dt.timedelta(seconds=1),
            "output": {"y": 2}, "summary": {}}
    body.update(fields)
    return body


def rows(n: int, pad_bytes: int = 0) -> list[dict[str, Any]]:
    return [{"i": i, "pad": "x" * pad_bytes} for i in range(n)]
