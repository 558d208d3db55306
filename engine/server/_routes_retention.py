"""weave's project TTL settings: how many days a project's calls are kept.

``/project/ttl_settings/update`` sets a project's retention (``retention_days``: a whole
number of days ≥ 1, or null for the server's default); ``/project/ttl_settings/read``
answers the retention in force: the project's own, else ``engine serve
--retention-days``, else null (kept until deleted). The server deletes calls past it
itself (:mod:`engine.server._retention`).
"""

from __future__ import annotations

from aiohttp import web

from engine.server._auth import CURRENT_GRANT
from engine.server._body import ApiError
from engine.server._reply import ok, project_of
from engine.server._state import state_of
from engine.wire._base import Request

routes = web.RouteTableDef()
MAX_RETENTION_DAYS = 1_000_000  # ~2,700 years: a cutoff any store's clock can compute
DEFAULT_DAYS = web.AppKey("engine_retention_default_days", object)


class TTLSettingsReadReq(Request, kw_only=True):
    project_id: str


class TTLSettingsUpdateReq(Request, kw_only=True):
    project_id: str
    retention_days: int | None = None
    wb_user_id: str | None = None


def default_days(request: web.Request) -> int | None:
    days = request.app.get(DEFAULT_DAYS)
    return days if isinstance(days, int) else None


async def retention_in_force(request: web.Request, project_id: str) -> int | None:
    """The project's own retention, else the server's default, else None."""
    days = await state_of(request).store.retention_days(project_id)
    return default_days(request) if days is None else days


@routes.post("/project/ttl_settings/read")
async def project_ttl_settings_read(request: web.Request) -> web.Response:
    req = await state_of(request).decode(request, TTLSettingsReadReq)
    project_of(req.project_id)
    return ok({"retention_days": await retention_in_force(request, req.project_id)})


@routes.post("/project/ttl_settings/update")
async def project_ttl_settings_update(request: web.Request) -> web.Response:
    state = state_of(request)
    req = await state.decode(request, TTLSettingsUpdateReq)
    project_of(req.project_id)
    days = req.retention_days
    if days is not None and not 1 <= days <= MAX_RETENTION_DAYS:
        raise ApiError(400, f"retention_days: must be null (the server's default) or a whole "
                            f"number of days from 1 to {MAX_RETENTION_DAYS:,}, got {days}")
    grant = CURRENT_GRANT.get()
    user = req.wb_user_id or (grant.label if grant is not None else None)
    await state.store.set_retention_days(req.project_id, days, user)
    return ok({"retention_days": days})


REQUEST_TYPES = {("POST", "/project/ttl_settings/read"): TTLSettingsReadReq,
                 ("POST", "/project/ttl_settings/update"): TTLSettingsUpdateReq}  # fmt: skip
