"""Objects, aliases, tags, tables, files and documents in ClickHouse (migration 0002).

Each function takes a ``clickhouse-connect`` client first and runs on a store thread.
Tables keep the newest row per key and are read with FINAL; an object's version number
is its rank by creation time (then digest) among all its versions, deleted ones included,
so a version deleted and created again keeps its number, as in the SQLite store.
"""

from __future__ import annotations

from typing import Any

from engine.server._store import ObjectsQuery, ObjectVersion

_STORED = (
    "project_id", "object_id", "digest", "kind", "base_object_class", "leaf_object_class",
    "val", "wb_user_id", "created_at_us", "deleted_at_us",
)  # fmt: skip
_NUMBERED = (
    "SELECT *, toInt64(row_number() OVER (PARTITION BY object_id "
    "ORDER BY created_at_us, digest) - 1) AS version_index "
    "FROM obj_versions FINAL WHERE project_id = {project_id:String}{narrow}"
)
# the digest 'latest' names: its alias, else the last live version
_LATEST = (
    "SELECT object_id, argMax(digest, version_index) AS digest FROM ({numbered}) "
    "WHERE deleted_at_us IS NULL GROUP BY object_id"
)
_ALIASES = "SELECT object_id, alias, digest FROM obj_aliases FINAL WHERE project_id = {project_id:String}"


def _select(narrow: str = "") -> str:
    numbered = _NUMBERED.replace("{narrow}", narrow)
    latest = _LATEST.format(numbered=numbered)
    return (
        f"WITH numbered AS ({numbered}), "
        f"named AS (SELECT object_id, digest FROM ({_ALIASES}) WHERE alias = 'latest'), "
        f"latest AS (SELECT l.object_id AS object_id, if(n.digest != '', n.digest, l.digest) "
        f"AS digest FROM ({latest}) AS l LEFT JOIN named AS n ON n.object_id = l.object_id) "
        f"SELECT {', '.join('o.' + c for c in _STORED)}, o.version_index, "
        "(o.object_id, o.digest) IN (SELECT object_id, digest FROM latest) AS is_latest "
        "FROM numbered AS o"
    )


def _version(row: tuple) -> ObjectVersion:
    fields = dict(zip(_STORED, row[:-2], strict=True))
    return ObjectVersion(**fields, version_index=row[-2], is_latest=bool(row[-1]))


def _rows(client: Any, sql: str, params: dict[str, Any]) -> list[tuple]:
    return client.query(sql, parameters=params).result_rows


def read(client: Any, project_id: str, object_id: str, version: str,
         include_deleted: bool = False) -> ObjectVersion | None:  # fmt: skip
    params: dict[str, Any] = {"project_id": project_id, "object_id": object_id}
    where = "1" if include_deleted else "o.deleted_at_us IS NULL"
    if version == "latest":
        where += " AND is_latest"
    elif version[:1] == "v" and version[1:].isdigit():
        where += " AND o.version_index = {index:Int64}"
        params["index"] = int(version[1:])
    else:  # a digest, or an alias naming one
        where += (" AND o.digest = ifNull((SELECT any(toNullable(digest)) FROM obj_aliases FINAL WHERE "
                  "project_id = {project_id:String} AND object_id = {object_id:String} AND "
                  "alias = {version:String}), {version:String})")  # fmt: skip
        params["version"] = version
    sql = f"{_select(' AND object_id = {object_id:String}')} WHERE {where} LIMIT 1"
    rows = _rows(client, sql, params)
    return _version(rows[0]) if rows else None


def put(client: Any, new: ObjectVersion, version: int) -> ObjectVersion:
    """Store (or revive) a version and point ``latest`` at it; returns it as stored."""
    found = _rows(client,
        "SELECT created_at_us FROM obj_versions FINAL WHERE project_id = {p:String} "
        "AND object_id = {o:String} AND digest = {d:String}",
        {"p": new.project_id, "o": new.object_id, "d": new.digest},
    )  # fmt: skip
    created = found[0][0] if found else new.created_at_us  # a revived version keeps its time
    row = [getattr(new, c) for c in _STORED]
    row[_STORED.index("created_at_us")] = created
    row[_STORED.index("deleted_at_us")] = None
    client.insert("obj_versions", [[*row, version]], column_names=[*_STORED, "version"])
    set_aliases(client, new.project_id, new.object_id, new.digest, ["latest"], version + 1)
    stored = read(client, new.project_id, new.object_id, new.digest)
    assert stored is not None
    return stored


def query(client: Any, q: ObjectsQuery) -> list[ObjectVersion]:
    where, params = ["o.deleted_at_us IS NULL"], {"project_id": q.project_id}
    for name, column in (("object_ids", "object_id"), ("base_object_classes", "base_object_class"),
                         ("leaf_object_classes", "leaf_object_class")):  # fmt: skip
        values = getattr(q, name)
        if values:  # weave: an empty list is no filter
            params[name] = list(values)
            where.append(f"has({{{name}:Array(String)}}, o.{column})")
    if q.exclude_base_object_classes:
        params["excluded"] = list(q.exclude_base_object_classes)
        # a NULL class is not "not in" either, as in weave
        where.append("o.base_object_class IS NOT NULL AND NOT has({excluded:Array(String)}, o.base_object_class)")
    if q.is_op is not None:
        where.append("o.kind = 'op'" if q.is_op else "o.kind != 'op'")
    if q.latest_only:
        where.append("is_latest")
    if q.tags:
        params["tags"] = list(q.tags)
        where.append("(o.object_id, o.digest) IN (SELECT object_id, digest FROM obj_tags FINAL "
                     "WHERE project_id = {project_id:String} AND has({tags:Array(String)}, tag))")  # fmt: skip
    if q.aliases:
        where.append(_aliases_condition(q.aliases, params))
    order = [f"o.{'object_id' if f == 'object_id' else 'created_at_us'} {'DESC' if d else 'ASC'}"
             for f, d in q.sort_by]  # fmt: skip
    order += ["o.created_at_us ASC", "o.object_id ASC", "o.version_index ASC"]
    sql = f"{_select()} WHERE {' AND '.join(where)} ORDER BY {', '.join(order)}"
    if q.limit is not None or q.offset:
        params["limit"], params["offset"] = 2**63 if q.limit is None else q.limit, q.offset
        sql += " LIMIT {limit:UInt64} OFFSET {offset:UInt64}"
    return [_version(r) for r in _rows(client, sql, params)]


def _aliases_condition(aliases: tuple[str, ...], params: dict[str, Any]) -> str:
    named = [a for a in aliases if a != "latest"]
    terms = ["is_latest"] if len(named) < len(aliases) else []
    if named:
        params["aliases"] = named
        terms.append("(o.object_id, o.digest) IN (SELECT object_id, digest FROM obj_aliases FINAL "
                     "WHERE project_id = {project_id:String} AND has({aliases:Array(String)}, alias))")  # fmt: skip
    return f"({' OR '.join(terms)})"


def delete(client: Any, project_id: str, object_id: str, versions: list[str] | None,
           now_us: int, version: int) -> list[ObjectVersion]:  # fmt: skip
    if versions is None:
        gone = [v for v in query(client, ObjectsQuery(project_id=project_id, object_ids=(object_id,)))]
    else:
        found = (read(client, project_id, object_id, v) for v in versions)
        gone = list({v.digest: v for v in found if v}.values())
    if not gone:
        return []
    rows = []
    for v in gone:
        row = [getattr(v, c) for c in _STORED]
        row[_STORED.index("deleted_at_us")] = now_us
        rows.append([*row, version])
    client.insert("obj_versions", rows, column_names=[*_STORED, "version"])
    digests = [v.digest for v in gone]
    _drop_labels(client, project_id, object_id, digests, version)
    return gone


def _drop_labels(client: Any, project_id: str, object_id: str, digests: list[str],
                 version: int) -> None:  # fmt: skip
    params = {"p": project_id, "o": object_id, "d": digests}
    for table, key in (("obj_aliases", "alias"), ("obj_tags", "tag")):
        rows = _rows(client, f"SELECT digest, {key} FROM {table} FINAL WHERE project_id = {{p:String}} "
                     "AND object_id = {o:String} AND has({d:Array(String)}, digest)", params)  # fmt: skip
        if rows:
            client.insert(table, [[project_id, object_id, d, k, version, 1] for d, k in rows],
                          column_names=["project_id", "object_id", "digest", key, "version", "removed"])  # fmt: skip


def live(client: Any, project_id: str, object_id: str, digest: str) -> bool:
    return bool(_rows(client,
        "SELECT 1 FROM obj_versions FINAL WHERE project_id = {p:String} AND object_id = {o:String} "
        "AND digest = {d:String} AND deleted_at_us IS NULL",
        {"p": project_id, "o": object_id, "d": digest},
    ))  # fmt: skip


def set_aliases(client: Any, project_id: str, object_id: str, digest: str, aliases: list[str],
                version: int) -> None:  # fmt: skip
    client.insert("obj_aliases", [[project_id, object_id, a, digest, version, 0] for a in aliases],
                  column_names=["project_id", "object_id", "alias", "digest", "version", "removed"])  # fmt: skip


def remove_aliases(client: Any, project_id: str, object_id: str, aliases: list[str],
                   version: int) -> None:  # fmt: skip
    client.insert("obj_aliases", [[project_id, object_id, a, "", version, 1] for a in aliases],
                  column_names=["project_id", "object_id", "alias", "digest", "version", "removed"])  # fmt: skip


def set_tags(client: Any, project_id: str, object_id: str, digest: str, tags: list[str],
             version: int, removed: int) -> None:  # fmt: skip
    client.insert("obj_tags", [[project_id, object_id, digest, t, version, removed] for t in tags],
                  column_names=["project_id", "object_id", "digest", "tag", "version", "removed"])  # fmt: skip


def label_names(client: Any, project_id: str, what: str) -> list[str]:
    table = {"tag": "obj_tags", "alias": "obj_aliases"}[what]
    sql = f"SELECT DISTINCT {what} FROM {table} FINAL WHERE project_id = {{p:String}} ORDER BY {what}"
    return [r[0] for r in _rows(client, sql, {"p": project_id})]


def labels(client: Any, project_id: str, keys: list[tuple[str, str]]
           ) -> dict[tuple[str, str], tuple[list[str], list[str]]]:  # fmt: skip
    found: dict[tuple[str, str], tuple[list[str], list[str]]] = {k: ([], []) for k in keys}
    params = {"p": project_id, "o": list({o for o, _ in keys})}
    for i, (table, column) in enumerate((("obj_tags", "tag"), ("obj_aliases", "alias"))):
        sql = (f"SELECT object_id, digest, {column} FROM {table} FINAL WHERE project_id = {{p:String}} "
               f"AND has({{o:Array(String)}}, object_id) ORDER BY {column}")  # fmt: skip
        for object_id, digest, name in _rows(client, sql, params):
            if (object_id, digest) in found:
                found[(object_id, digest)][i].append(name)
    return found
