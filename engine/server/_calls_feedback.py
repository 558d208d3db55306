"""Feedback fields of a call query: ``feedback.[<feedback_type>].payload.<path>``,
``feedback.[<feedback_type>].runnable_ref`` and ``….trigger_ref`` (weave's
``CallsMergedFeedbackPayloadField``), which ``client.get_calls(scored_by=…)`` filters on.

A call's value of such a field is read from its oldest feedback of that type (``[*]``:
of any type); a call without one has none (NULL), as in weave's SQLite server. weave's
ClickHouse server takes any one of them, and a missing value as ``''``. A boolean in a
payload reads as the text ``true`` / ``false`` (both weave servers: ClickHouse's
``JSON_VALUE``), not as 1 / 0 as in the call's own JSON fields.

A call may carry many reactions and notes (weave's ``MULTI_VALUE_FEEDBACK_TYPES``): ``$eq``
and ``$contains`` with such a field as their first operand hold when any one of the
call's feedback of the type passes, and ``$eq`` with null when none has a value there, as
in both weave servers (ClickHouse: ``has(groupArrayIf(…))``; SQLite: ``instr`` over the
values joined by commas, so a value there also matches a part of another)."""

from __future__ import annotations

import re
from typing import NamedTuple

from engine.server._store import InvalidQuery

ANY_TYPE = "*"
MULTI_VALUE_TYPES = frozenset({"wandb.reaction.1", "wandb.note.1"})
# greedy, as weave's ClickHouse builder parses it
_FIELD = re.compile(r"^feedback\.(\[.+\])\.(.+)$", re.S)


class FeedbackField(NamedTuple):
    feedback_type: str  # ANY_TYPE: every type
    path: str  # in the feedback document: ``payload.<path>``, ``runnable_ref``, ``trigger_ref``


def feedback_field(name: str, where: str) -> FeedbackField:
    """``feedback.[wandb.runnable.s].payload.output`` → ``("wandb.runnable.s", "payload.output")``."""
    match = _FIELD.match(name)
    if not match:
        raise InvalidQuery(where, f"feedback field {name!r}: expected feedback.[<type>].<field>")
    bracketed, path = match.groups()
    head = path.split(".", 1)[0]
    if head in ("runnable_ref", "trigger_ref"):
        return FeedbackField(bracketed[1:-1], head)  # weave ignores any path after them
    if head != "payload":
        raise InvalidQuery(where, f"feedback field {name!r}: payload, runnable_ref or trigger_ref")
    return FeedbackField(bracketed[1:-1], path)
