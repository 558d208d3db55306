"""``engine copy``: copy projects from one trace server to another.

Moves a project between stores -- ``engine serve`` on SQLite to one on ClickHouse, a
backup, a hosted project onto a local server -- over the weave trace-server API of both
ends (any server that speaks it). Per project, in an order that keeps every reference
whole: the files its objects name (op source code, custom objects), the tables they name
(datasets), every live object version oldest first (so version numbers come out the
same) with its tags and aliases (an alias that moved ends on the version holding it now),
every call (ids, parents, times, inputs, outputs, summaries, exceptions as stored),
its feedback (under the same ids), its LLM prices and its retention (weave's TTL settings).

Ids and digests are kept: the target computes each digest again and the copy checks it
against the source's (a digest that comes out different would break the refs to it: named
and counted, never silent). Writing what the target already holds writes the same thing
again, so an interrupted copy resumes by running it again (prices already there are
skipped, not added twice). Not copied: deleted calls and versions, feedback creation
times (the target's clock).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from engine.cli import _args, _probe
from engine.cli._args import CommandFailed
from engine.common import _env
from engine.common._errors import HTTPError
from engine.common._redact import redact_url
from engine.wire.labels import reserved_alias

FROM_KEY_ENV = _env.COPY_FROM_API_KEY
TO_KEY_ENV = _env.COPY_TO_API_KEY
_PAGE = 1_000  # objects, feedback per read
_CALLS_PER_POST = 500
_POST_BYTES = 4 << 20  # a body stays far below any server's limit (engine serve: 64 MiB)
_DERIVED_SUMMARY = ("status", "trace_name", "latency_ms", "display_name")  # a server's own
_START_FIELDS = ("project_id", "id", "op_name", "display_name", "trace_id", "parent_id",
                 "thread_id", "turn_id", "started_at", "attributes", "inputs", "wb_user_id",
                 "wb_run_id", "wb_run_step")  # fmt: skip
_END_FIELDS = ("project_id", "id", "ended_at", "exception", "output", "summary",
               "wb_run_step_end")  # fmt: skip


def add(subparsers: argparse._SubParsersAction) -> None:
    copy = _args.add_command(
        subparsers, "copy", "copy projects from one trace server to another",
        "Copy the calls, object versions, tables, files, feedback and LLM prices of projects "
        "from one trace server to another (ids and digests kept; run it again to resume). "
        f"Keys: ${FROM_KEY_ENV} and ${TO_KEY_ENV}, else ${_env.API_KEY} for both.")
    copy.add_argument("--from", dest="source", type=_args.url, required=True,
                      help="the trace server to read")
    copy.add_argument("--to", dest="target", type=_args.url, required=True,
                      help="the trace server to write")
    copy.add_argument("--project", type=_args.project, action="append", default=None,
                      help="entity/project to copy (repeat for several; default: every "
                           "project the source lists, which engine serve does)")
    copy.set_defaults(func=run)


@dataclass
class Copied:
    """What one project's copy wrote, and what it could not keep as it was."""

    project: str
    files: int = 0
    tables: int = 0
    objects: int = 0
    calls: int = 0
    feedback: int = 0
    costs: int = 0
    costs_present: int = 0
    changed_digests: list[str] = field(default_factory=list)
    missing_on_source: list[str] = field(default_factory=list)
    labels: int = 0
    labels_not_copied: int = 0
    retention_days: int | None = None

    def line(self) -> str:
        said = (f"{self.project}: {self.calls:,} calls, {self.objects:,} object versions, "
                f"{self.tables:,} tables, {self.files:,} files, {self.feedback:,} feedback, "
                f"{self.costs:,} prices ({self.costs_present:,} already there)")
        if self.labels:
            said += f"; {self.labels:,} tags/aliases"
        if self.retention_days is not None:
            said += f"; calls kept {self.retention_days:,} days"
        if self.labels_not_copied:
            said += f"; {self.labels_not_copied:,} tags/aliases not copied (the target refused them)"
        if self.missing_on_source:
            said += (f"; {len(self.missing_on_source):,} named but not on the source either: "
                     f"{', '.join(self.missing_on_source[:5])}")
        if self.changed_digests:
            said += (f"; {len(self.changed_digests):,} digests came out different on the "
                     f"target (refs to them break): {', '.join(self.changed_digests[:5])}")
        return said


def run(args: argparse.Namespace) -> int:
    with _args.sigterm_interrupts():  # one line and 143, as Ctrl-C's; run again to resume
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from engine.client import RemoteHTTPTraceServer

    if args.source.rstrip("/") == args.target.rstrip("/"):
        raise _args.UsageError("copy: --from and --to are the same server")
    common = os.environ.get(_env.API_KEY)
    from_key = os.environ.get(FROM_KEY_ENV) or common
    to_key = os.environ.get(TO_KEY_ENV) or common
    # a wrong URL or key: one clear line first, naming the variable the key came from
    source_store = _probe.server_info(args.source, from_key,
                                      key_from=_key_from(FROM_KEY_ENV, common)).get("store_id")
    target_store = _probe.server_info(args.target, to_key,
                                      key_from=_key_from(TO_KEY_ENV, common)).get("store_id")
    if source_store and source_store == target_store:
        raise _args.UsageError(f"copy: --from and --to are the same server (one store, "
                               f"{source_store}, under two URLs)")
    source = RemoteHTTPTraceServer(args.source, api_key=from_key)
    target = RemoteHTTPTraceServer(args.target, api_key=to_key)
    projects = _projects(args.source, from_key, args.project)
    if not projects:
        print(f"engine copy: {redact_url(args.source)} lists no projects; nothing copied", flush=True)
        return 0
    began = time.monotonic()
    results = []
    ends = ((args.source, from_key), (args.target, to_key))
    with source, target:
        for project in projects:
            result = copy_project(source, target, project)
            _copy_retention(*ends, project, result)
            print(f"engine copy: {result.line()}", flush=True)
            results.append(result)
    broken = sum(len(r.changed_digests) for r in results)
    print(f"engine copy: {len(results)} project(s) from {redact_url(args.source)} to "
          f"{redact_url(args.target)} in "
          f"{time.monotonic() - began:.1f} s" + (f"; {broken} digests differ" if broken else ""),
          flush=True)
    return 1 if broken else 0


def _key_from(side_env: str, common: str | None) -> str:
    if os.environ.get(side_env):
        return f"${side_env}"
    return f"${_env.API_KEY}" if common else f"${side_env} or ${_env.API_KEY}"


def _projects(url: str, api_key: str | None, named: list[str] | None) -> list[str]:
    """The projects to copy: those named (each checked against the source's list, where it
    has one: a misspelt name copied nothing, and said so only as "0 calls"), else every
    project the source lists."""
    listed = _listed_projects(url, api_key, required=not named)
    if named and listed is not None:
        unknown = [project for project in named if project not in listed]
        if unknown:
            raise _args.UsageError(
                f"copy: {redact_url(url)} has no calls or objects in project {unknown[0]}"
                + (_env.did_you_mean(unknown[0], listed) or f" (it holds {len(listed):,} others)"))
    return named or listed or []


def _listed_projects(url: str, api_key: str | None, *, required: bool) -> list[str] | None:
    """Every project ``engine serve``'s ``/ui/projects`` lists; None where the server lists
    none (other servers) and ``required`` is false."""
    answer = _probe.request(f"{url.rstrip('/')}/ui/projects", headers=_probe.auth_headers(api_key))
    if answer.status != 200:
        if not required:
            return None
        raise CommandFailed(f"copy: {redact_url(url)} does not list its projects (GET /ui/projects "
                            f"answered HTTP {answer.status}): name them with --project")
    return [p["project_id"] for p in json.loads(answer.body)["projects"]]


def copy_project(source: Any, target: Any, project: str) -> Copied:
    done = Copied(project)
    versions = list(_object_versions(source, project))
    tables, files = set(), {}
    for version in versions:
        _refs_in(version["val"], project, tables, files)
    _copy_named(source, target, project, tables, files, done)
    for version in versions:
        # the value carries its class markers (a builtin class's too, as stored): the target
        # derives the object's classes from them as the source did
        obj = {"project_id": project, "object_id": version["object_id"], "val": version["val"],
               "wb_user_id": version.get("wb_user_id")}
        digest = target.obj_create({"obj": obj}).digest
        _check(done, f"{version['object_id']}:{version['digest']}", version["digest"], digest)
        done.objects += 1
        _copy_labels(target, project, version, done)
    called_tables, called_files = _copy_calls(source, target, project, done)
    # what only calls name (an image or audio input, a table passed to an op)
    _copy_named(source, target, project, called_tables - tables,
                {d: n for d, n in called_files.items() if d not in files}, done)
    _copy_feedback(source, target, project, done)
    _copy_costs(source, target, project, done)
    return done


def _copy_retention(source: tuple[str, str | None], target: tuple[str, str | None],
                    project: str, done: Copied) -> None:
    """The retention in force for the project (weave's TTL settings), set on the target
    when the source has one (a server default becomes the project's own there)."""
    (src_url, src_key), (dst_url, dst_key) = source, target
    answer = _probe.post_json(f"{src_url.rstrip('/')}/project/ttl_settings/read",
                              {"project_id": project}, src_key)
    days = json.loads(answer.body).get("retention_days") if answer.status == 200 else None
    if days is None:  # kept until deleted, or a server without TTL settings: nothing to set
        return
    answer = _probe.post_json(f"{dst_url.rstrip('/')}/project/ttl_settings/update",
                              {"project_id": project, "retention_days": days}, dst_key)
    if answer.status != 200:
        raise CommandFailed(f"copy: {redact_url(dst_url)} did not take {project}'s retention of {days} "
                            f"days (HTTP {answer.status}): its calls would be kept for ever")
    done.retention_days = days


def _copy_named(source: Any, target: Any, project: str, tables: set[str],
                files: dict[str, str], done: Copied) -> None:
    """Files and tables by digest; one the source does not have (named but never stored,
    e.g. weave's cache kept it from that server) is counted and left, as on the source."""
    work = [(_copy_file, digest, name) for digest, name in sorted(files.items())]
    work += [(_copy_table, digest, None) for digest in sorted(tables)]
    for copy, digest, name in work:
        try:
            copy(source, target, project, digest, name, done)
        except HTTPError as exc:
            if exc.status != 404:
                raise
            done.missing_on_source.append(f"{'file' if name else 'table'} {digest}")


def _check(done: Copied, name: str, wanted: str, got: str) -> None:
    if got != wanted:
        done.changed_digests.append(name)


def _builtins(value: Any) -> Any:
    return msgspec.to_builtins(value)


def _copy_labels(target: Any, project: str, version: dict[str, Any], done: Copied) -> None:
    """The version's tags and aliases (``latest`` is the target's own). Versions come oldest
    first and the source lists an alias on the version holding it now, so an alias that
    moved ends on the same version. A target without the routes (404) or refusing a name
    (400) has them counted as not copied."""
    key = {"project_id": project, "object_id": version["object_id"], "digest": version["digest"]}
    tags = version.get("tags") or []
    aliases = [a for a in version.get("aliases") or [] if not reserved_alias(a)]
    for method, kind, names in ((target.obj_add_tags, "tags", tags),
                                (target.obj_set_aliases, "aliases", aliases)):
        if not names:
            continue
        try:
            method({**key, kind: names})
        except HTTPError as exc:
            if exc.status not in (400, 404):
                raise
            done.labels_not_copied += len(names)
        else:
            done.labels += len(names)


def _object_versions(source: Any, project: str) -> Iterator[dict[str, Any]]:
    """Every live version, oldest first (the target numbers versions in creation order)."""
    offset = 0
    while True:
        page = source.objs_query({"project_id": project, "limit": _PAGE, "offset": offset,
                                  "sort_by": [{"field": "created_at", "direction": "asc"}],
                                  "include_tags_and_aliases": True}).objs
        yield from (_builtins(obj) for obj in page)
        if len(page) < _PAGE:
            return
        offset += len(page)


def _refs_in(value: Any, project: str, tables: set[str], files: dict[str, str]) -> None:
    """The tables (``weave:///<project>/table/<digest>``) and files (a custom object's
    ``files``: name -> digest) a value names, anywhere inside it."""
    prefix = f"weave:///{project}/table/"
    if isinstance(value, str):
        if value.startswith(prefix):
            tables.add(value[len(prefix):].split("/", 1)[0])
    elif isinstance(value, dict):
        if value.get("_type") == "CustomWeaveType" and isinstance(value.get("files"), dict):
            for name, digest in value["files"].items():
                if isinstance(digest, str):
                    files[digest] = name
        for item in value.values():
            _refs_in(item, project, tables, files)
    elif isinstance(value, list):
        for item in value:
            _refs_in(item, project, tables, files)


def _copy_file(source: Any, target: Any, project: str, digest: str, name: str,
               done: Copied) -> None:
    content = source.file_content_read({"project_id": project, "digest": digest}).content
    got = target.file_create({"project_id": project, "name": name, "content": content}).digest
    _check(done, f"file {digest}", digest, got)
    done.files += 1


def _copy_table(source: Any, target: Any, project: str, digest: str, _name: None,
                done: Copied) -> None:
    """The rows in order; a large table as a first part and appends (one body each stays
    below ``_POST_BYTES``): the digest is the same either way."""
    rows = [row.val for row in source.table_query_stream({"project_id": project,
                                                          "digest": digest})]
    if not rows:  # an empty table, or none: a server answers both with no rows
        stats = source.table_query_stats_batch({"project_id": project, "digests": [digest]})
        if not stats.tables:
            raise HTTPError(404, f"table {digest} not found")
    chunks = list(_chunks(rows, 10_000))
    got = target.table_create({"table": {"project_id": project, "rows": chunks[0] if chunks
                                         else []}}).digest
    for chunk in chunks[1:]:
        got = target.table_update({"project_id": project, "base_digest": got, "updates": [
            {"append": {"row": row}} for row in chunk]}).digest
    _check(done, f"table {digest}", digest, got)
    done.tables += 1


def _chunks(items: list[Any], most: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    size = 0
    for item in items:
        item_bytes = len(msgspec.json.encode(item))
        if chunk and (len(chunk) >= most or size + item_bytes > _POST_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += item_bytes
    if chunk:
        yield chunk


def _copy_calls(source: Any, target: Any, project: str,
                done: Copied) -> tuple[set[str], dict[str, str]]:
    """Every call, oldest first; returns the tables and files the calls name."""
    stream = source.calls_query_stream({"project_id": project,
                                        "sort_by": [{"field": "started_at", "direction": "asc"}]})
    tables: set[str] = set()
    files: dict[str, str] = {}
    items: list[dict[str, Any]] = []
    for call in map(_builtins, stream):
        for part in ("inputs", "output", "attributes"):
            _refs_in(call.get(part), project, tables, files)
        start = {k: call[k] for k in _START_FIELDS if call.get(k) is not None}
        start.setdefault("attributes", {})
        start.setdefault("inputs", {})
        items.append({"mode": "start", "req": {"start": start}})
        if call.get("ended_at") is not None:
            end = {k: call[k] for k in _END_FIELDS if call.get(k) is not None}
            end["summary"] = _stored_summary(end.get("summary"))
            end.setdefault("output", None)
            items.append({"mode": "end", "req": {"end": end}})
        done.calls += 1
        if len(items) >= 2 * _CALLS_PER_POST:
            _post_calls(target, items)
            items = []
    if items:
        _post_calls(target, items)
    return tables, files


def _post_calls(target: Any, items: list[dict[str, Any]]) -> None:
    for chunk in _chunks(items, 2 * _CALLS_PER_POST):
        target.call_start_batch({"batch": chunk})


def _stored_summary(summary: dict[str, Any] | None) -> dict[str, Any]:
    """The summary as the client sent it: without the fields a server derives on read."""
    summary = dict(summary or {})
    weave = summary.pop("weave", None)
    if isinstance(weave, dict):
        kept = {k: v for k, v in weave.items() if k not in _DERIVED_SUMMARY}
        if kept:
            summary["weave"] = kept
    return summary


def _copy_feedback(source: Any, target: Any, project: str, done: Copied) -> None:
    offset = 0
    while True:
        page = source.feedback_query({"project_id": project, "limit": _PAGE, "offset": offset,
                                      "sort_by": [{"field": "created_at",
                                                   "direction": "asc"}]}).result
        batch = []
        for row in page:
            req = {k: row.get(k) for k in ("id", "weave_ref", "creator", "feedback_type",
                                           "payload", "annotation_ref", "runnable_ref",
                                           "call_ref", "trigger_ref", "wb_user_id")}
            req["project_id"] = project
            batch.append({k: v for k, v in req.items() if v is not None})
        if batch:  # one request per page (a server without the batch route: one each)
            target.feedback_create_batch({"batch": batch})
            done.feedback += len(batch)
        if len(page) < _PAGE:
            return
        offset += len(page)


_COST_FIELDS = ("llm_id", "prompt_token_cost", "completion_token_cost",
                "prompt_token_cost_unit", "completion_token_cost_unit", "effective_date",
                "provider_id", "cache_read_input_token_cost", "cache_creation_input_token_cost")


def _copy_costs(source: Any, target: Any, project: str, done: Copied) -> None:
    def rows(server: Any) -> list[dict[str, Any]]:
        res = server.cost_query({"project_id": project, "fields": list(_COST_FIELDS)})
        return [_builtins(row) for row in res.results]

    present = {json.dumps(row, sort_keys=True, default=str) for row in rows(target)}
    for row in rows(source):
        if json.dumps(row, sort_keys=True, default=str) in present:
            done.costs_present += 1
            continue
        price = {k: v for k, v in row.items() if k != "llm_id" and v is not None}
        target.cost_create({"project_id": project, "costs": {row["llm_id"]: price}})
        done.costs += 1

