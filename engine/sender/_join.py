"""A replay joins the start and the end of one call, dead-lettered or spooled as v2
requests of their own, into one complete call.

A call open long enough that its start went alone toward a server without upsert batches
(weave's) went as a v2 ``call/start`` and a v2 ``call/end`` request; when neither was
delivered (the server down), both are dead letters. Sent again as they are, each is a
request of its own, one at a time, the end only once weave shows its start (it answers an
end whose start it has not stored yet 404): 2,000 such letters took a replay 46 s toward a
server 20 ms away (3,305 spool segments: 87 s). Joined, they are one item of a
``calls/complete`` batch, as the live sender splices them.
"""

from __future__ import annotations

import msgspec

from engine.sender._deadletter import DeadLetter

_START, _END, _COMPLETE = "/call/start", "/call/end", "/calls/complete"
CALL_META = "call"  # a spool segment's meta: [project, call id] of its v2 start or end
_Wrapped = dict[str, dict[str, msgspec.Raw]]


def start_end_pairs(routes: list[str], keys: list[tuple[str, str] | None]) -> list[tuple[int, int]]:
    """(start, end) indexes of each v2 ``call/start`` whose ``call/end`` comes after it
    among ``routes`` with the same key (project, call id; None: not to be joined)."""
    ends = {key: n for n, (route, key) in enumerate(zip(routes, keys))
            if key is not None and route.endswith(_END)}
    return [(n, ends[key]) for n, (route, key) in enumerate(zip(routes, keys))
            if key is not None and route.endswith(_START) and ends.get(key, -1) > n]


def join_alone_pairs(letters: list[DeadLetter]) -> tuple[list[DeadLetter],
                                                         dict[int, tuple[DeadLetter, ...]]]:
    """``letters`` with each v2 start whose end is among them (same project and call id)
    replaced, at the start's place, by one complete call on that project's
    ``calls/complete`` route, and the end left out; and, by ``id()`` of each joined letter,
    the two it was made of (what goes back to the dead letters if it is not delivered)."""
    joined: list[DeadLetter | None] = list(letters)
    parts: dict[int, tuple[DeadLetter, ...]] = {}
    keys = [(letter.project, letter.call_id)
            if letter.call_id and not letter.item_invalid else None for letter in letters]
    for n, at in start_end_pairs([letter.route for letter in letters], keys):
        whole = _complete(letters[n], letters[at])
        if whole is not None:
            joined[n], joined[at] = whole, None
            parts[id(whole)] = (letters[n], letters[at])
    return [letter for letter in joined if letter is not None], parts


def _complete(start: DeadLetter, end: DeadLetter) -> DeadLetter | None:
    """One complete call of a v2 start and end letter; None if either is not what a v2
    request holds."""
    whole = join_items(start.item, end.item)
    if whole is None:
        return None
    return msgspec.structs.replace(start, route=complete_route(start.route),
                                   item=msgspec.Raw(whole))


def is_alone_route(route: str) -> bool:
    """Whether ``route`` is a v2 ``call/start`` or ``call/end`` (a request of one item)."""
    return route.startswith("/v2/") and (route.endswith(_START) or route.endswith(_END))


def complete_route(start_route: str) -> str:
    """The ``calls/complete`` route of a v2 ``call/start`` route's project."""
    return start_route[: -len(_START)] + _COMPLETE


def join_items(start_body: bytes, end_body: bytes) -> bytes | None:
    """One complete call of a v2 start request's body and its end's (the start's fields
    first, the end's that the start lacks after); None if either is not such a body."""
    try:
        started = msgspec.json.decode(start_body, type=_Wrapped).get("start")
        ended = msgspec.json.decode(end_body, type=_Wrapped).get("end")
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    if not started or not ended:
        return None
    whole = dict(started)
    for key, value in ended.items():
        whole.setdefault(key, value)
    return msgspec.json.encode(whole)

