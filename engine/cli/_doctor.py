"""``engine doctor URL``: can the engine deliver to this trace server? One line per check,
then a verdict; exit 0 when nothing would stop delivery.

Nothing is stored: ingest routes are probed with empty batches, the size limit with a body
whose padding makes it invalid JSON for the route (a server reads it whole, or answers 413,
before it looks inside).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from typing import NamedTuple

import zstandard

from engine.cli import _args, _probe
from engine.cli._args import CommandFailed
from engine.common import _env
from engine.common._config import EngineConfig
from engine.common._errors import ConfigError, reason_of
from engine.common._machine import same_machine
from engine.common._project import project_path
from engine.common._redact import redact_url

_PROBE_PROJECT = "engine-doctor/doctor"
# round trip: below this many calls/s per producer (4 KB calls, a ring per round trip), say
# what bounds delivery: ~20k is a 16 MiB ring 200 ms away
_FAR_CALLS_PER_S = 20_000
_CALL_BYTES = 4096
_JSON = {"Content-Type": "application/json"}
_MiB = 1 << 20


class Check(NamedTuple):
    name: str
    ok: bool | None  # None: a warning, delivery still works
    detail: str


def add(subparsers: argparse._SubParsersAction) -> None:
    doctor = _args.add_command(
        subparsers, "doctor", "check that the engine can deliver to a trace server",
        "Check reachability, authentication, ingest routes, compression and the request size "
        "limit of a trace server, and print a verdict. Stores nothing.")
    doctor.add_argument("url", type=_args.url, metavar="URL", help="trace server base URL")
    doctor.add_argument("--limit-mib", type=_args.positive_int, default=8,
                        help="largest request size to try, in MiB (default 8)")
    doctor.add_argument("--project", type=_args.project, default=None,
                        help="entity/project whose ingest the key must be let through for "
                             f"(default {_PROBE_PROJECT}, a name no one writes: a key granted "
                             "only some projects is refused there, and that is a warning)")
    doctor.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    api_key = os.environ.get(_env.API_KEY) or os.environ.get("WANDB_API_KEY") or None
    checks: list[Check] = [_route(args.url)]
    info = _reach(args.url, api_key, checks)
    if info is not None:
        for step in _STEPS:
            checks.append(step(args.url, api_key, info, args))
    checks.append(_shared_memory())
    checks.append(_spool(args.url))
    weave = _weave_integration()
    if weave is not None:
        checks.append(weave)
    for check in checks:
        mark = {True: "ok  ", False: "FAIL", None: "warn"}[check.ok]
        print(f"  {mark} {check.name}: {check.detail}")
    failed = [c.name for c in checks if c.ok is False]
    if failed:
        print(f"engine doctor: {redact_url(args.url)}: NOT READY ({', '.join(failed)} failed)")
        return 1
    print(f"engine doctor: {redact_url(args.url)}: READY: the engine can deliver here")
    return 0


def _route(url: str) -> Check:
    """Which proxy (credentials masked) and which CAs the engine's connections to ``url``
    take (engine.common._http): what to look at first when a corporate network is in the way."""
    from engine.common._http import ca_source, choose_proxy, insecure

    try:
        proxy = choose_proxy(url).shown
    except ConfigError as exc:
        return Check("network", False, str(exc))
    if not url.lower().startswith("https:"):
        return Check("network", True, f"proxy: {proxy}; plain http, no certificates")
    return Check("network", None if insecure() else True, f"proxy: {proxy}; CAs: {ca_source()}")


def _reach(url: str, api_key: str | None, checks: list[Check]) -> dict | None:
    started = time.perf_counter()
    status = _probe.request(f"{url}/server_info", headers=_probe.auth_headers(api_key)).status \
        if _answers(url) else None
    if status in (401, 403):
        checks.append(Check("reachable", True, "/server_info answers, and asks for a key"))
        what = "refused the key" if api_key else "needs a key: set ENGINE_API_KEY"
        checks.append(Check("auth", False, f"HTTP {status}: the server {what}"))
        return None
    try:
        info = _probe.server_info(url, api_key)
    except CommandFailed as exc:
        checks.append(Check("reachable", False, str(exc)))
        return None
    rtt_ms = (time.perf_counter() - started) * 1000
    version = info.get("trace_server_version") or "unknown version"
    checks.append(Check("reachable", True, f"/server_info answered in {rtt_ms:.0f} ms ({version})"))
    return info


def _reason(answer: _probe.Answer) -> str:
    """The server's reason for a refusal, on one line."""
    return " ".join(reason_of(answer.body).split()) or "no reason given"


def _project(args: argparse.Namespace) -> str:
    return args.project or _PROBE_PROJECT


def _answers(url: str) -> bool:
    try:
        _probe.request(f"{url}/server_info")
    except _probe.Unreachable:
        return False
    return True


def _post(url: str, path: str, body: bytes, api_key: str | None,
          headers: dict[str, str] | None = None) -> _probe.Answer:
    return _probe.request(url + path, data=body,
                          headers={**_JSON, **_probe.auth_headers(api_key), **(headers or {})})


def _auth(url: str, api_key: str | None, info: dict, args: argparse.Namespace) -> Check:
    body = json.dumps({"project_id": _project(args)}).encode()
    answer = _post(url, "/calls/query_stats", body, api_key)
    if answer.status == 403 and api_key and not args.project:  # a key granted other projects
        return Check("auth", None, f"the key was refused a read of {_project(args)} (HTTP 403: "
                     f"{_reason(answer)}); run with --project ENTITY/PROJECT to check the project "
                     "you write")
    if answer.status in (401, 403):
        what = "refused the key" if api_key else "needs a key: set ENGINE_API_KEY"
        return Check("auth", False, f"HTTP {answer.status}: the server {what}"
                     + (f" ({_reason(answer)})" if answer.status == 403 and api_key else ""))
    how = "with the key from the environment" if api_key else "without a key"
    return Check("auth", True, f"a read was let through {how} (HTTP {answer.status})")


def _routes(url: str, api_key: str | None, info: dict, args: argparse.Namespace) -> Check:
    empty = b'{"batch": []}'
    answer = _post(url, f"/v2/{project_path(_project(args))}/calls/complete", empty, api_key)
    complete = answer.status
    upsert = _post(url, "/call/upsert_batch", empty, api_key).status
    if complete in (401, 403):
        said = (f"calls/complete refused the key for {_project(args)} (HTTP {complete}: "
                f"{_reason(answer)})")
        if args.project:
            return Check("ingest routes", False, said)
        return Check("ingest routes", None, f"{said}; run with --project ENTITY/PROJECT to check "
                     "the project you write")
    if complete != 404:
        return Check("ingest routes", True, f"calls/complete answers (HTTP {complete}): "
                     "complete calls in one request each")
    if upsert != 404:
        return Check("ingest routes", None, f"no calls/complete (404); /call/upsert_batch answers "
                     f"(HTTP {upsert}): the engine falls back to starts and ends")
    return Check("ingest routes", False, "neither /v2/…/calls/complete nor /call/upsert_batch "
                 "exists here: not a trace server, or a wrong path in the URL")


def _compression(url: str, api_key: str | None, info: dict, args: argparse.Namespace) -> Check:
    accepts = info.get("accepts_encodings") or []
    if "zstd" not in accepts:
        return Check("compression", None, "the server does not advertise zstd: bodies go "
                     "uncompressed (more bytes on the wire)")
    body = zstandard.ZstdCompressor().compress(b'{"batch": []}')
    answer = _post(url, f"/v2/{project_path(_project(args))}/calls/complete", body, api_key,
                   {"Content-Encoding": "zstd"})
    status = answer.status
    if status in (401, 403):
        return _not_told("compression", answer, args)
    if status in (400, 415):
        return Check("compression", False, f"advertises zstd but refused a zstd body (HTTP "
                     f"{status}): set compression = \"none\"")
    if same_machine(info):
        return Check("compression", True, f"zstd accepted (HTTP {status}); the server runs on "
                     "this machine, so compression = \"auto\" sends plain bodies (zstd would "
                     "cost CPU here and save no link)")
    return Check("compression", True, f"zstd accepted (HTTP {status})")


def _limit(url: str, api_key: str | None, info: dict, args: argparse.Namespace) -> Check:
    accepted = 0
    size_mib = 1
    while size_mib <= args.limit_mib:
        body = b'{"batch": [], "pad": "' + b"x" * (size_mib * _MiB) + b'"}'
        answer = _post(url, f"/v2/{project_path(_project(args))}/calls/complete", body, api_key)
        if answer.status in (401, 403):  # refused before the body was read, if at all
            return _not_told("size limit", answer, args)
        if answer.status == 413:
            if not accepted:
                return Check("size limit", None, "a 1 MiB request is too large here: set "
                             "max_request_bytes and initial_request_bytes below 1048576")
            return Check("size limit", None, f"{size_mib} MiB answered 413; {accepted} MiB went "
                         f"through: the engine learns this limit (or set max_request_bytes)")
        accepted = size_mib
        size_mib *= 2
    return Check("size limit", True, f"requests of {accepted} MiB are read whole (no 413)")


def _not_told(name: str, answer: _probe.Answer, args: argparse.Namespace) -> Check:
    """A probe the server refused (401, 403) says nothing of what it was to check."""
    said = (f"could not tell: the server refused the probe for {_project(args)} (HTTP "
            f"{answer.status}: {_reason(answer)})")
    if not args.project:
        said += "; run with --project ENTITY/PROJECT to check the project you write"
    return Check(name, None, said)


def _store(url: str, api_key: str | None, info: dict, args: argparse.Namespace) -> Check:
    """``engine serve``'s readiness: does its store (SQLite, ClickHouse) answer? Other trace
    servers have no ``/ready``: not checked there."""
    answer = _probe.request(f"{url}/ready", headers=_probe.auth_headers(api_key))
    if answer.status == 404:
        return Check("store", True, "no /ready here (not engine serve): its store is not checked")
    if answer.status == 200:
        kind = _json_field(answer.body, "store") or "its store"
        return Check("store", True, f"/ready: the server's store ({kind}) answers")
    return Check("store", False, f"/ready answered HTTP {answer.status}: "
                 f"{reason_of(answer.body) or 'no reason given'}; calls wait in the rings and "
                 "are retried until it answers")


def _json_field(body: bytes, name: str) -> str | None:
    try:
        value = json.loads(body).get(name)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _settings() -> EngineConfig | str:
    """The engine's settings from the environment (or the defaults); a bad one, said."""
    from engine.common._config import load_config

    try:
        return load_config(None, url="http://127.0.0.1:1", project="doctor/check")
    except Exception as exc:  # noqa: BLE001 - a bad setting is said here, not raised
        return f"the engine's settings: {exc}"


def _round_trip(url: str, api_key: str | None, info: dict, args: argparse.Namespace) -> Check:
    """How long an empty ingest request takes, and what that bounds: a producer's records
    stay in its ring until acknowledged, so each ring is in flight at most once per trip."""
    path = f"/v2/{project_path(_project(args))}/calls/complete"
    trips_s = []
    for _ in range(3):
        started = time.perf_counter()
        if _post(url, path, b'{"batch": []}', api_key).status == 404:
            path = "/call/upsert_batch"
        trips_s.append(time.perf_counter() - started)
    trip_s = min(trips_s)
    said = f"an empty ingest request answered in {trip_s * 1000:.0f} ms (best of 3)"
    config = _settings()
    if isinstance(config, str):
        return Check("round trip", True, said)
    per_producer = config.ring_bytes / max(trip_s, 1e-6) / _CALL_BYTES
    if per_producer >= _FAR_CALLS_PER_S:
        return Check("round trip", True, said)
    return Check("round trip", None, f"{said}: a producer's ring ({config.ring_bytes / _MiB:.0f} "
                 f"MiB) is in flight at most once per round trip, so each producer process "
                 f"delivers at most ~{per_producer:,.0f} calls/s of 4 KB; more producer "
                 "processes or a larger ring_bytes carry more (docs/configuration.md, "
                 "\"A distant server\")")


def _shared_memory() -> Check:
    """This machine's side: room in /dev/shm for the producers' rings (ring_bytes from the
    environment or the default)."""
    from engine.ring import _files
    from engine.ring._set import shm_room

    config = _settings()
    if isinstance(config, str):
        return Check("shared memory", False, config)
    room = shm_room(2 * config.ring_bytes, config.max_slots)
    ring_mib = config.ring_bytes / _MiB
    if room is None:
        return Check("shared memory", True, "no /dev/shm here: rings are files in the temp dir")
    if room[0] >= room[1]:
        return Check("shared memory", True, f"{_files.SEGMENT_DIR} has room for {room[0]:,} "
                     f"producer rings of {ring_mib:.0f} MiB")
    return Check("shared memory", None, f"{_files.SEGMENT_DIR} has room for {room[0]} of the "
                 f"{room[1]} producer rings of {ring_mib:.0f} MiB an engine should hold: engines "
                 "keep their rings in a file in the temp dir (`docker run --shm-size=1g` keeps "
                 "them in memory)")


_SPOOL_ROOM_BYTES = 64 << 20  # less room than this before a bound: a warning


def _spool(url: str) -> Check:
    """What this machine keeps for ``url``: the engines' spool for it (the default, one per
    server, or ``spool_dir``), read without changing it."""
    from engine.common._config import load_config, spool_path
    from engine.sender._spool import pending_items

    try:
        config = load_config(None, url=url, project="doctor/check")
    except Exception as exc:  # noqa: BLE001 - a bad setting is said here, not raised
        return Check("spool", False, f"the engine's settings: {exc}")
    folder = spool_path(config)
    if folder is None:
        return Check("spool", True, 'off (spool_dir = "off"): what an engine cannot deliver '
                     "goes to the dead letters")
    try:
        items, size = pending_items(folder)
    except OSError as exc:
        return Check("spool", None, f"{folder}: cannot be read ({exc.strerror or exc})")
    room = _spool_room(folder, size, config.spool_max_bytes, config.disk_keep_free_bytes)
    if not items and room[1]:
        return Check("spool", True, f"nothing kept for this server ({folder}); {room[0]}")
    if not items:
        return Check("spool", None, f"nothing kept for this server ({folder}), but {room[0]}")
    return Check("spool", None, f"{folder} holds {items:,} items ({size / 1e6:.1f} MB) engines "
                 "could not deliver here: the next engine toward this server sends them, or "
                 f"`engine replay --to {redact_url(url)}`; {room[0]}")


def _spool_room(folder: str, held: int, max_bytes: int, keep_free: int) -> tuple[str, bool]:
    """How much more the spool may take before its bounds (``spool_max_bytes``,
    ``disk_keep_free_bytes``) park an outage's batches in the rings, and whether that is
    room (a few MB)."""
    from engine.common._files import free_bytes

    free = free_bytes(folder)
    rooms = []
    if free is not None:
        rooms.append((free - keep_free, f"disk_keep_free_bytes ({keep_free / (1 << 20):,.0f} "
                                        f"MiB; {free / (1 << 20):,.0f} MiB free)"))
    if max_bytes:
        rooms.append((max_bytes - held, f"spool_max_bytes ({max_bytes / (1 << 20):,.0f} MiB)"))
    if not rooms:
        return "its disk's free space cannot be read", True
    left, bound = min(rooms)
    if left < _SPOOL_ROOM_BYTES:
        return (f"it has no room left before {bound}: an outage's calls would wait in the "
                "rings (producers then wait or drop, on_full), not on disk", False)
    return f"room for {left / (1 << 20):,.0f} MiB more before {bound}", True


def _weave_integration() -> Check | None:
    """Whether the installed weave fits the engine's weave integration (``ENGINE_WEAVE=1``);
    None where weave is not installed."""
    import importlib.util

    if importlib.util.find_spec("weave") is None:
        return None
    try:
        from engine.integrations import weave as integration

        version, missing = integration.weave_version(), integration.missing_hook_points()
    except Exception as exc:  # noqa: BLE001 - a broken weave is said here, not raised
        return Check("weave integration", None, f"weave does not import here ({exc})")
    tested = integration.tested_versions()
    if missing:
        return Check("weave integration", None, f"weave {version} lacks {', '.join(missing)}: "
                     f"ENGINE_WEAVE=1 leaves it sending its traces itself (tested with "
                     f"weave {tested})")
    if not integration.is_tested(version):
        return Check("weave integration", None, f"weave {version} has every hook point the "
                     f"integration uses, but it is tested with weave {tested}")
    return Check("weave integration", True, f"weave {version}: ENGINE_WEAVE=1 sends its "
                 "calls through the engine")


_STEPS: tuple[Callable[[str, str | None, dict, argparse.Namespace], Check], ...] = (
    _auth, _routes, _store, _round_trip, _compression, _limit)
