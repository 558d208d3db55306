"""Which project ids name a project: ``entity/project``, as weave and W&B spell them.

weave's client refuses an entity or project that is empty or blank or holds a slash
(``weave/utils/project_id.py``, ``weave.init``). Beyond that a name part must not be ``.``
or ``..``: a browser resolves such a step in any path, encoded or not, so the trace
browser (and W&B's UI) cannot link to the project, and ``e/..`` is surely a mistake; nor
hold a control character (a trailing newline read with a value from a file). W&B also
refuses ``\\ # ? % :`` and names over 128 characters; engine serve takes those (the trace
browser encodes them in its links), as weave's own SQLite server does.

The producer refuses such a project up front (``ConfigError``), the servers refuse writes
to one (engine/server/_store_guard.py); a store may still hold one written by an earlier
version, so reading and deleting it go on working.
"""

from __future__ import annotations

import re
import urllib.parse

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
EXAMPLE = 'write it "entity/project" (e.g. my-team/my-eval)'


def shape_problem(project_id: str) -> str | None:
    """What keeps ``project_id`` from having the shape ``entity/project`` (one slash, neither
    part empty), or None."""
    parts = project_id.split("/")
    if len(parts) != 2:
        return "is not entity/project (one slash)"
    for what, part in zip(("entity", "project"), parts):
        if not part:
            return f"has an empty {what}"
    return None


def name_problem(project_id: str) -> str | None:
    """What keeps ``project_id`` from naming a project a client may write, or None."""
    problem = shape_problem(project_id)
    if problem is not None:
        return problem
    for what, part in zip(("entity", "project"), project_id.split("/")):
        if not part.strip():
            return f"has a blank {what}"
        if part in (".", ".."):
            return f"has the {what} {part!r}, which no link can hold (a browser resolves it)"
        control = _CONTROL.search(part)
        if control is not None:
            return f"has a control character ({control.group()!r}) in its {what}"
    return None


def project_path(project_id: str) -> str:
    """``entity/project`` as the two segments of a ``/v2/{entity}/{project}/…`` path, each
    percent-encoded: a ``?``, ``#`` or ``%`` in a name would otherwise end or garble the
    path (the server decodes them back)."""
    return "/".join(urllib.parse.quote(part, safe="") for part in project_id.split("/"))
