"""Tenancy at the one door every route goes through: the :class:`~engine.server._store.Store`.

Every store operation names its project (``project_id``, or a query, version, document or
call that carries one), so checking there covers every route, the ones added later too,
without any route having to remember. Before each operation the guard finds the projects
in its arguments and checks them against the grant of the request being handled
(``_auth.CURRENT_GRANT``): a write needs an ``rw`` key. An operation that names no project
is refused: it would be one that crosses projects -- except the listing of projects (the
trace browser's first page), whose answer is cut down to the projects the key may read.

The same door, with or without keys, refuses to add data to a project whose name no client
could have meant (``e/..``, a blank part: :mod:`engine.common._project`), whichever route
writes it; reading and deleting a project so named, stored by an earlier version, go on.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from engine.common._project import EXAMPLE, name_problem
from engine.server._auth import CURRENT_GRANT
from engine.server._body import ApiError

WRITES = frozenset({
    "insert_calls", "delete_calls", "set_call_display_name", "put_object", "delete_objects",
    "set_aliases", "remove_aliases", "add_tags", "remove_tags", "put_table", "put_file",
    "put_docs", "delete_docs", "replace_doc", "set_retention_days", "delete_calls_before",
})  # fmt: skip
# the writes that add data to a project, whose name must be one a client may write
ADDS = frozenset({"insert_calls", "put_object", "put_table", "put_file", "put_docs"})
_PROJECTLESS = frozenset({"close", "ping", "store_id"})
_SIGNATURES: dict[Callable[..., Any], inspect.Signature] = {}
# operations over all projects whose answer is filtered to what the grant may read
_LISTINGS = frozenset({"project_call_counts", "retained_projects", "object_projects"})


def _projects(value: Any) -> set[str]:
    """The project ids of ``value``'s items (lists, tuples of them, at any depth): one loop
    over a batch's items, no generator per item (every write without keys comes here)."""
    if not isinstance(value, (list, tuple)):
        project_id = getattr(value, "project_id", None)
        return set() if project_id is None else {project_id}
    found: set[str] = set()
    for item in value:
        project_id = getattr(item, "project_id", None)
        if project_id is not None:
            found.add(project_id)
        elif isinstance(item, (list, tuple)):
            found |= _projects(item)
    return found


def projects_of(method: Callable[..., Any], args: tuple, kwargs: dict) -> set[str]:
    function = getattr(method, "__func__", method)  # one signature per store method, not per call
    signature = _SIGNATURES.get(function)
    if signature is None:
        signature = _SIGNATURES[function] = inspect.signature(method)
    bound = signature.bind(*args, **kwargs)
    found: set[str] = set()
    for name, value in bound.arguments.items():
        if name == "project_id":
            found.add(value)
        else:
            found |= _projects(value)
    return found


def check_project_name(project_id: str, field: str = "project_id") -> None:
    """422 unless ``project_id`` names a project a client may write (a 422, not a 400: the
    engine's sender then isolates the item by halving its batch, and keeps the rest)."""
    problem = name_problem(project_id)
    if problem is not None:
        raise ApiError(422, f"{field}: project {project_id!r} {problem}; writes to it are "
                            f"refused: {EXAMPLE}")


class GuardedStore:
    """A store whose operations check the request's grant first, and whose writes that add
    data check the project's name (attributes pass through)."""

    def __init__(self, store: Any) -> None:
        self.inner = store

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not callable(target) or name.startswith("_") or name in _PROJECTLESS:
            return target
        if name in _LISTINGS:
            return _filtered_listing(target)
        write, adds = name in WRITES, name in ADDS

        def guarded(*args: Any, **kwargs: Any) -> Any:
            grant = CURRENT_GRANT.get()
            if grant is None and not adds:
                return target(*args, **kwargs)
            projects = projects_of(target, args, kwargs)
            if adds:
                for project_id in sorted(projects):
                    check_project_name(project_id)
            if grant is not None:
                if not projects:
                    raise ApiError(403, f"this API key ({grant.label}) may not run {name} "
                                        "across projects")  # fmt: skip
                for project_id in sorted(projects):
                    grant.check(project_id, write)
            return target(*args, **kwargs)

        return guarded


def check_grant(project_id: str, write: bool) -> None:
    """The request's grant for ``project_id``, for a route whose body names no project to
    the store (an empty batch under ``/v2/{entity}/{project}/``: checked against the path)."""
    grant = CURRENT_GRANT.get()
    if grant is not None:
        grant.check(project_id, write)


def _filtered_listing(target: Callable[..., Any]) -> Callable[..., Any]:
    """``(project_id, …)`` rows of every project, cut down to those the grant may read."""

    async def listing(*args: Any, **kwargs: Any) -> Any:
        rows = await target(*args, **kwargs)
        grant = CURRENT_GRANT.get()
        if grant is None:
            return rows
        return [row for row in rows if grant.allows(row[0], False)]

    return listing
