"""What weave's server checks and adds when feedback is created or purged.

- ``wandb.reaction.1``: the payload's ``emoji`` is exactly one emoji; the stored payload
  gains its ``alias`` (``:thumbs_up:``), the emoji without skin tone (``detoned``) and
  that one's alias (``detoned_alias``), so reactions group whatever tone was picked.
- ``wandb.note.1``: a ``note`` of 1 to 1024 characters.
- ``wandb.annotation.<name>`` needs an ``annotation_ref`` to an object named ``<name>``
  and a ``value``; ``wandb.runnable.<name>`` a ``runnable_ref`` to ``<name>`` and an
  ``output`` (a ``call_ref`` too when the runnable is an op); ``wandb.agent_monitor``
  needs runnable, call and trigger refs. Those refs are refused on other feedback, and
  the ``scorer_*`` fields are reserved to runnable and agent-monitor feedback.
- A purge (feedback or costs) names ids only: ``$eq`` of ``id`` and a string, ``$in``
  of ``id`` (costs), or an ``$or`` of such ``$eq`` s.

Every refusal is a 400 naming the field, as weave's ``InvalidRequest``.
"""

from __future__ import annotations

import re
from typing import Any

import emoji
import msgspec

from engine.server._body import ApiError
from engine.wire.feedback import FeedbackCreateReq

REACTION = "wandb.reaction.1"
NOTE = "wandb.note.1"
ANNOTATION = "wandb.annotation"
RUNNABLE = "wandb.runnable"
AGENT_MONITOR = "wandb.agent_monitor"
MAX_NOTE_CHARS = 1024
MAX_PAYLOAD_BYTES = 1024 * 1024
SCORER_FIELDS = ("scorer_tags", "scorer_tag_reasons", "scorer_tag_confidences", "scorer_ratings",
                 "scorer_rating_reasons", "scorer_rating_confidences")  # fmt: skip
_SKIN_TONE = re.compile(r"_(light|medium-light|medium|medium-dark|dark)_skin_tone")


def _bad(field: str, message: str) -> ApiError:
    return ApiError(400, f"{field}{message}")


def _without_skin_tone(text: str) -> str:
    """Each emoji of ``text`` with its skin-tone modifier taken off."""
    return emoji.replace_emoji(
        text, replace=lambda em, _: emoji.emojize(_SKIN_TONE.sub("", emoji.demojize(em)))
    )


def reaction_payload(payload: dict[str, Any], field: str) -> dict[str, Any]:
    em = payload.get("emoji")
    if not isinstance(em, str) or emoji.emoji_count(em) != 1:
        raise _bad(field, "payload.emoji: must be exactly one emoji")
    detoned = _without_skin_tone(em)
    return {**payload, "alias": emoji.demojize(em), "detoned": detoned,
            "detoned_alias": emoji.demojize(detoned)}  # fmt: skip


def _ref_name(ref: str) -> str:
    """``weave:///e/p/object/<name>:<digest>`` → ``<name>``."""
    parts = ref.removeprefix("weave:///").split("/")
    return parts[3].rsplit(":", 1)[0] if len(parts) >= 4 else ""


def _check_typed(req: FeedbackCreateReq, field: str) -> None:
    kind = req.feedback_type
    if kind.startswith(ANNOTATION):
        name = kind.removeprefix(ANNOTATION + ".")
        if not kind.startswith(ANNOTATION + ".") or not req.annotation_ref:
            raise _bad(field, "annotation_ref: required, and feedback_type wandb.annotation.<name>")
        if _ref_name(req.annotation_ref) != name or "value" not in req.payload:
            raise _bad(field, f"annotation_ref must name {name!r} and payload hold 'value'")
    elif req.annotation_ref:
        raise _bad(field, "annotation_ref: only on wandb.annotation.* feedback")
    elif kind.startswith(RUNNABLE):
        name = kind.removeprefix(RUNNABLE + ".")
        if not kind.startswith(RUNNABLE + ".") or not req.runnable_ref:
            raise _bad(field, "runnable_ref: required, and feedback_type wandb.runnable.<name>")
        if _ref_name(req.runnable_ref) != name or "output" not in req.payload:
            raise _bad(field, f"runnable_ref must name {name!r} and payload hold 'output'")
        if "/op/" in req.runnable_ref and not req.call_ref:
            raise _bad(field, "call_ref: required for runnable feedback on an op")
    elif kind.startswith(AGENT_MONITOR):
        if not (req.runnable_ref and req.call_ref and req.trigger_ref):
            raise _bad(field, "runnable_ref, call_ref and trigger_ref: required on agent-monitor feedback")
    else:
        for name in ("runnable_ref", "call_ref", "trigger_ref"):
            if getattr(req, name):
                raise _bad(field, f"{name}: only on runnable or agent-monitor feedback")
        if any(getattr(req, name) for name in SCORER_FIELDS):
            raise _bad(field, "scorer_*: only on wandb.runnable or wandb.agent_monitor feedback")


def processed_payload(req: FeedbackCreateReq, field: str = "") -> dict[str, Any]:
    """The payload as stored, after weave's checks (a 400 naming what is wrong)."""
    _check_typed(req, field)
    payload = req.payload
    if req.feedback_type == REACTION:
        payload = reaction_payload(payload, field)
    elif req.feedback_type == NOTE:
        note = payload.get("note")
        if not isinstance(note, str) or not 1 <= len(note) <= MAX_NOTE_CHARS:
            raise _bad(field, f"payload.note: a string of 1..{MAX_NOTE_CHARS} characters")
    if len(msgspec.json.encode(payload)) > MAX_PAYLOAD_BYTES:
        raise _bad(field, f"payload: larger than {MAX_PAYLOAD_BYTES} bytes")
    return payload


def _is_id_literal(operands: Any, many: bool) -> bool:
    if not isinstance(operands, list) or len(operands) != 2 or operands[0] != {"$getField": "id"}:
        return False
    values = operands[1] if many else [operands[1]]
    return isinstance(values, list) and all(
        isinstance(v, dict) and set(v) == {"$literal"} and isinstance(v["$literal"], str)
        for v in values
    )


def check_purge_by_ids(query: dict[str, Any], allow_in: bool, what: str) -> None:
    """A purge query must name ids only (a 400 otherwise)."""
    expr = query.get("$expr") if isinstance(query, dict) else None
    ((op, arg),) = expr.items() if isinstance(expr, dict) and len(expr) == 1 else ((None, None),)
    if op == "$eq" and _is_id_literal(arg, many=False):
        return
    if op == "$in" and allow_in and _is_id_literal(arg, many=True):
        return
    if op == "$or" and isinstance(arg, list) and all(
        isinstance(a, dict) and set(a) == {"$eq"} and _is_id_literal(a["$eq"], many=False) for a in arg
    ):  # fmt: skip
        return
    raise ApiError(400, f"query: {what} is purged by id only ($eq of id and a string"
                        f"{', $in of id' if allow_in else ''}, or $or of those)")  # fmt: skip
