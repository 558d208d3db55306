"""The differential scenario, feedback fields of call queries (``feedback.[<type>].…``):
filters, sorts and counts on reactions, notes and runnable (scorer) feedback, in the forms
weave's client builds (``get_calls(scored_by=…)``: ``$not $eq ""`` on a scorer's output,
``$eq`` on its ``runnable_ref``) and weave's UI sends (``$eq`` / ``$contains`` on a
reaction or a note).

Call ``fa`` carries two reactions and two notes (the second of each is what its filters
look for: weave matches every one of a call's reactions and notes), ``fb`` one of each;
the scorer's output is a number and a boolean (weave reads a payload's boolean as the text
``true`` / ``false``, after numbers when sorted); ``fd`` has no feedback.
"""

from __future__ import annotations

from typing import Any

from tests.server.fidelity.compare import Step

QP = "fid/fbfields"
SCORER = "my_scorer"
RUNNABLE = f"wandb.runnable.{SCORER}"
SCORER_REF = f"weave:///{QP}/op/{SCORER}:h9Ch4KTNtpV3KmtlaQ8SgrE4ym8pLwPxIm8XcdHlKk0"
OUTPUT = f"feedback.[{RUNNABLE}].payload.output"
REACTION = "feedback.[wandb.reaction.1].payload.emoji"
NOTE = "feedback.[wandb.note.1].payload.note"
_F = "feedback"


def _call(call_id: str, t_s: int) -> dict[str, Any]:
    return {"project_id": QP, "id": call_id, "trace_id": f"t{call_id}", "op_name": "op",
            "started_at": f"2024-01-02T03:04:0{t_s}Z", "ended_at": f"2024-01-02T03:05:0{t_s}Z",
            "attributes": {}, "inputs": {}, "output": t_s, "summary": {}}  # fmt: skip


def _feedback(call_id: str, kind: str, payload: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"project_id": QP, "weave_ref": f"weave:///{QP}/call/{call_id}", "feedback_type": kind,
            "payload": payload, "wb_user_id": "user-a", **extra}  # fmt: skip


def _score(call_id: str, output: dict[str, Any]) -> dict[str, Any]:
    return _feedback(call_id, RUNNABLE, {"output": output}, runnable_ref=SCORER_REF,
                     call_ref=f"weave:///{QP}/call/score-{call_id}")  # fmt: skip


def _get(field: str) -> dict[str, Any]:
    return {"$getField": field}


def _lit(value: Any) -> dict[str, Any]:
    return {"$literal": value}


def _where(label: str, expr: dict[str, Any]) -> Step:
    return Step(_F, f"fbfields.{label}", "calls_query",
                {"project_id": QP, "query": {"$expr": expr}, "columns": ["id"]})  # fmt: skip


def _sort(label: str, field: str, direction: str) -> Step:
    return Step(_F, f"fbfields.sort_{label}", "calls_query",
                {"project_id": QP, "columns": ["id"], "sort_by": [{"field": field, "direction": direction}]})  # fmt: skip


def _contains(field: str, text: str, case_insensitive: bool = False) -> dict[str, Any]:
    return {"$contains": {"input": _get(field), "substr": _lit(text), "case_insensitive": case_insensitive}}


SCORED_BY_NAME = {"$and": [{"$not": [{"$eq": [_get(OUTPUT), _lit("")]}]}]}
SCORED_BY_REF = {"$and": [{"$eq": [_get(f"feedback.[{RUNNABLE}].runnable_ref"), _lit(SCORER_REF)]}]}


def feedback_fields() -> list[Step]:
    return [
        Step(_F, "fbfields.calls", "calls_complete",
             {"batch": [_call("fa", 1), _call("fb", 2), _call("fc", 3), _call("fd", 4)]}),
        Step(_F, "fbfields.feedback", "feedback_create_batch", {"batch": [
            _feedback("fa", "wandb.reaction.1", {"emoji": "👍"}),
            _feedback("fa", "wandb.reaction.1", {"emoji": "👎"}),
            _feedback("fb", "wandb.reaction.1", {"emoji": "👍"}),
            _feedback("fa", "wandb.note.1", {"note": "first note"}),
            _feedback("fa", "wandb.note.1", {"note": "Second thoughts"}),
            _feedback("fb", "wandb.note.1", {"note": "needs work"}),
            _score("fa", {"score": 0.9, "passed": True}),
            _score("fb", {"score": 0.2, "passed": False}),
            _score("fc", {"score": 0.5, "passed": 1}),
        ]}),
        _where("scored_by_name", SCORED_BY_NAME),
        _where("scored_by_ref", SCORED_BY_REF),
        _where("score_gt", {"$gt": [_get(f"{OUTPUT}.score"), _lit(0.4)]}),
        _where("passed_bool", {"$eq": [_get(f"{OUTPUT}.passed"), _lit(True)]}),
        _where("passed_text", {"$eq": [_get(f"{OUTPUT}.passed"), _lit("true")]}),
        _where("passed_contains", _contains(f"{OUTPUT}.passed", "als")),
        _where("reaction_second", {"$eq": [_get(REACTION), _lit("👎")]}),
        _where("reaction_shared", {"$eq": [_get(REACTION), _lit("👍")]}),
        _where("reaction_none", {"$eq": [_get(REACTION), _lit(None)]}),
        _where("note_second", _contains(NOTE, "thoughts")),
        _where("note_any_case", _contains(NOTE, "SECOND", case_insensitive=True)),
        _where("note_eq_second", {"$eq": [_get(NOTE), _lit("Second thoughts")]}),
        _where("reaction_and_score", {"$and": [{"$eq": [_get(REACTION), _lit("👎")]},
                                               {"$gt": [_get(f"{OUTPUT}.score"), _lit(0.5)]}]}),
        _sort("score_desc", f"{OUTPUT}.score", "desc"),
        _sort("passed_asc", f"{OUTPUT}.passed", "asc"),
        Step(_F, "fbfields.stats_scored_by", "calls_query_stats",
             {"project_id": QP, "query": {"$expr": SCORED_BY_NAME}}),
        Step(_F, "fbfields.stats_reaction", "calls_query_stats",
             {"project_id": QP, "query": {"$expr": {"$eq": [_get(REACTION), _lit("👎")]}}}),
    ]  # fmt: skip
