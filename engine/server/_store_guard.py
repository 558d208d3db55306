"""Tenancy at the one door every route goes through: the :class:`~engine.server._store.Store`.

Every store operation names its project (``project_id``, or a query, version, document or
call that carries one), so checking there covers every route, the ones added later too,
without any route having to remember. Before each operation the guard finds the projects
in its arguments and checks them against the grant of the request being handled
(``_auth.CURRENT_GRANT``): a write needs an ``rw`` key. An operation that names no project
is refused: it would be one that crosses projects -- except the listing of projects (the
trace browser's first page), whose answer is cut down to the projects the key may read.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

from engine.server._auth import CURRENT_GRANT
from engine.server._body import ApiError

WRITES = frozenset({
    "insert_calls", "delete_calls", "set_call_display_name", "put_object", "delete_objects",
    "set_aliases", "remove_aliases", "add_tags", "remove_tags", "put_table", "put_file",
    "put_docs", "delete_docs", "replace_doc", "set_retention_days", "delete_calls_before",
})  # fmt: skip
_PROJECTLESS = frozenset({"close", "ping", "store_id"})
# operations over all projects whose answer is filtered to what the grant may read
_LISTINGS = frozenset({"project_call_counts", "retained_projects", "object_projects"})


def _projects(value: Any) -> Iterator[str]:
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _projects(item)
    elif (project_id := getattr(value, "project_id", None)) is not None:
        yield project_id


def projects_of(method: Callable[..., Any], args: tuple, kwargs: dict) -> set[str]:
    bound = inspect.signature(method).bind(*args, **kwargs)
    found: set[str] = set()
    for name, value in bound.arguments.items():
        if name == "project_id":
            found.add(value)
        else:
            found.update(_projects(value))
    return found


class GuardedStore:
    """A store whose operations check the request's grant first (attributes pass through)."""

    def __init__(self, store: Any) -> None:
        self.inner = store

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not callable(target) or name.startswith("_") or name in _PROJECTLESS:
            return target
        if name in _LISTINGS:
            return _filtered_listing(target)
        write = name in WRITES

        def guarded(*args: Any, **kwargs: Any) -> Any:
            grant = CURRENT_GRANT.get()
            if grant is not None:
                projects = projects_of(target, args, kwargs)
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
