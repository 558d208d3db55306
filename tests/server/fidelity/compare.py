"""Run a scenario on two servers, normalise their answers, compare them step by step.

Normalisation (each server's answers separately, in step order):

- A value the server made up is replaced by its kind and the order in which it first
  appeared in that answer: UUIDs that no request carried (``<uuid:1>``) and content
  digests (``<digest:0>``). Two answers agree when they hold made-up values in the same
  places and repeat them in the same places (numbered per answer, so one extra id early
  on does not shift every later answer).
- The latency of a call whose times the server's clock made is ``<elapsed>``.
- Fields that weave 0.54.0's response models declare and the 0.52 reference predates
  (``NEWER_FIELDS``) are compared only where the reference has them.
- A time is kept, in one canonical UTC form, when it lies in the scenario's own era (a
  time a client sent); a time near the server's clock becomes ``<now>``.
- A key whose value is null is dropped: weave's clients read a missing optional field and
  a null one alike.
- An error answer is compared by its status alone (reasons are prose).
- The caller's user id in answers of weave's REST prediction and score routes
  (``CALLER_FILLED``) is not compared: those routes take no ``wb_user_id``, the hosted
  server fills in the W&B user of the caller's key (the reference shim plays that caller),
  and ``engine serve``'s keys name projects, not users, so it answers none.

A step the reference cannot answer is listed, not scored: weave's SQLite server leaves
the method unimplemented (501) or fails on the request (5xx: a bug of the reference, not a
behaviour to match). A value the reference marks as not computed (``-1`` for a size or a
percentile it cannot compute, ``NOT_COMPUTED``) is not compared.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tests.server.fidelity.backends import Answer

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# weave's base64 digests (43 characters, '-'/'_' mapped to 'X'/'Y') and hex table digests
DIGEST = re.compile(r"^(?:[A-Za-z0-9]{43}|[0-9a-f]{64})$")
ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}")
SCENARIO_YEAR = 2024  # every time a scenario sends lies in this year
# (method, top-level field): in 0.54.0's response models, newer than the reference
NEWER_FIELDS = frozenset({("obj_delete", "deleted_versions"), ("feedback_query", "total_count")})
# methods whose answers carry the caller's user id as the hosted server knows it
CALLER_FILLED = ("prediction_", "score_")
# fields whose -1 means "the SQLite reference does not compute this"
NOT_COMPUTED = frozenset({"total_size_bytes", "p50_turn_duration_ms", "p99_turn_duration_ms"})

Req = dict[str, Any]


@dataclass(frozen=True)
class Step:
    """One request. ``req`` may be a function of the answers so far (by label) of the
    server being called, for values that server made up (digests, ids)."""

    family: str
    label: str
    method: str
    req: Req | Callable[[dict[str, Any]], Req]


@dataclass
class Normaliser:
    sent: set[str]  # every string the scenario sent: never treated as made up
    seen: dict[str, str] = field(default_factory=dict)

    def __call__(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, str):
            return self._string(value)
        return value

    def _string(self, text: str) -> str:
        if ISO_TIME.match(text):
            return _time(text)
        if text in self.sent:
            return text
        if UUID.match(text) or DIGEST.match(text):
            kind = "uuid" if UUID.match(text) else "digest"
            return self.seen.setdefault(text, f"<{kind}:{len(self.seen)}>")
        if text.startswith("weave:///"):  # a ref: the made-up digest at its end too
            head, sep, tail = text.rpartition(":") if "/table/" not in text else text.rpartition("/")
            if sep and DIGEST.match(tail) and tail not in self.sent:
                return head + sep + self._string(tail)
        return text


def _time(text: str) -> str:
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    if when.year != SCENARIO_YEAR:
        return "<now>"
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def strings_in(value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings_in(v)
    elif isinstance(value, str):
        yield value


@dataclass(frozen=True)
class Outcome:
    step: Step
    ours: Any
    reference: Any

    @property
    def scored(self) -> bool:
        status = self.reference.get("status") if isinstance(self.reference, dict) else None
        return not (isinstance(status, int) and status >= 500)

    @property
    def identical(self) -> bool:
        return self.ours == self.reference


def comparable(answer: Answer, normalise: Normaliser) -> Any:
    if answer.status != 200:
        return {"status": answer.status}
    return _clock_latencies(normalise(answer.body))


def _clock_latencies(value: Any) -> Any:
    """A call whose times the server's clock made has a latency of that clock too."""
    if isinstance(value, list):
        return [_clock_latencies(v) for v in value]
    if not isinstance(value, dict):
        return value
    value = {k: _clock_latencies(v) for k, v in value.items()}
    weave = (value.get("summary") or {}).get("weave") if isinstance(value.get("summary"), dict) else None
    if "<now>" in (value.get("started_at"), value.get("finished_at"), value.get("ended_at")) \
            and isinstance(weave, dict) and "latency_ms" in weave:
        weave["latency_ms"] = "<elapsed>"
    return value


def _without_not_computed(ours: Any, reference: Any) -> Any:
    """``ours`` without the fields the reference marks as not computed (``-1``)."""
    if isinstance(ours, dict) and isinstance(reference, dict):
        return {k: _without_not_computed(v, reference.get(k)) for k, v in ours.items()
                if not (k in NOT_COMPUTED and reference.get(k) == -1)}  # fmt: skip
    if isinstance(ours, list) and isinstance(reference, list) and len(ours) == len(reference):
        return [_without_not_computed(a, b) for a, b in zip(ours, reference, strict=True)]
    return ours


def _drop_not_computed(reference: Any) -> Any:
    if isinstance(reference, dict):
        return {k: _drop_not_computed(v) for k, v in reference.items()
                if not (k in NOT_COMPUTED and v == -1)}  # fmt: skip
    if isinstance(reference, list):
        return [_drop_not_computed(v) for v in reference]
    return reference


def _without_caller(method: str, answer: Any) -> Any:
    if not method.startswith(CALLER_FILLED):
        return answer
    if isinstance(answer, list):
        return [_without_caller(method, item) for item in answer]
    if isinstance(answer, dict):
        return {k: v for k, v in answer.items() if k != "wb_user_id"}
    return answer


def _without_newer(method: str, ours: Any, reference: Any) -> Any:
    if not (isinstance(ours, dict) and isinstance(reference, dict)):
        return ours
    return {k: v for k, v in ours.items() if (method, k) not in NEWER_FIELDS or k in reference}


def run(steps: list[Step], ours: Any, reference: Any) -> list[Outcome]:
    """Each step on both servers, in order; answers normalised and paired."""
    rows = answers(steps, [ours, reference])
    return paired(steps, [row[0] for row in rows], [row[1] for row in rows])


def answers(steps: list[Step], servers: list[Any]) -> list[tuple[Answer, ...]]:
    """Each step on every server, in order (one answer per server and step); a step's
    request is built from that server's own earlier answers."""
    contexts: list[dict[str, Any]] = [{} for _ in servers]
    rows = []
    for step in steps:
        row = []
        for server, context in zip(servers, contexts, strict=True):
            req = step.req(context) if callable(step.req) else step.req
            answer = server.call(step.method, req)
            context[step.label] = answer.body if answer.status == 200 else None
            row.append(answer)
        rows.append(tuple(row))
    return rows


def paired(steps: list[Step], ours: list[Answer], reference: list[Answer]) -> list[Outcome]:
    """Two servers' answers to ``steps`` (from :func:`answers`), normalised and paired."""
    # strings the scenario itself wrote (not those it took from an answer): never made up
    sent = set(strings_in([step.req for step in steps if not callable(step.req)]))
    outcomes = []
    for step, a, b in zip(steps, ours, reference, strict=True):
        mine, theirs = comparable(a, Normaliser(sent)), comparable(b, Normaliser(sent))
        mine, theirs = _without_caller(step.method, mine), _without_caller(step.method, theirs)
        mine = _without_not_computed(_without_newer(step.method, mine, theirs), theirs)
        outcomes.append(Outcome(step, mine, _drop_not_computed(theirs)))
    return outcomes


def score(outcomes: list[Outcome]) -> dict[str, tuple[int, int]]:
    """``family -> (identical, total)``, plus ``"all"``."""
    table: dict[str, list[int]] = {}
    for outcome in filter(lambda o: o.scored, outcomes):
        for family in (outcome.step.family, "all"):
            counts = table.setdefault(family, [0, 0])
            counts[0] += outcome.identical
            counts[1] += 1
    return {family: (same, total) for family, (same, total) in table.items()}


def differences(ours: Any, ref: Any, path: str = "$", limit: int = 6) -> list[str]:
    """Where two normalised answers differ: ``path: ours … | reference …`` (first few)."""
    if isinstance(ours, dict) and isinstance(ref, dict):
        found = []
        for key in list(dict.fromkeys([*ours, *ref])):
            if ours.get(key, "<absent>") != ref.get(key, "<absent>"):
                found += differences(ours.get(key, "<absent>"), ref.get(key, "<absent>"),
                                     f"{path}.{key}", limit - len(found))  # fmt: skip
            if len(found) >= limit:
                break
        return found
    if isinstance(ours, list) and isinstance(ref, list) and len(ours) == len(ref):
        found = []
        for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
            if a != b:
                found += differences(a, b, f"{path}[{i}]", limit - len(found))
            if len(found) >= limit:
                break
        return found
    return [f"{path}: ours {_short(ours)} | reference {_short(ref)}"]


def _short(value: Any, width: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width] + "…"


def report(outcomes: list[Outcome]) -> str:
    """A markdown table of the score by family, then every difference."""
    lines = ["| family | identical | total |", "|---|---|---|"]
    for family, (same, total) in sorted(score(outcomes).items(), key=lambda kv: kv[0] == "all"):
        lines.append(f"| {family} | {same} | {total} |")
    unscored = [o.step.label for o in outcomes if not o.scored]
    if unscored:
        lines += ["", f"Not scored (the reference cannot answer: 501 or 5xx): {', '.join(unscored)}"]
    for outcome in outcomes:
        if outcome.scored and not outcome.identical:
            lines += ["", f"### {outcome.step.label} ({outcome.step.method})"]
            lines += [f"- {d}" for d in differences(outcome.ours, outcome.reference)]
    return "\n".join(lines)
