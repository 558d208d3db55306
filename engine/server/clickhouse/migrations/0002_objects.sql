-- Objects, their aliases and tags, tables, files, feedback and costs: small and written
-- rarely, so each table keeps the newest row per key (ReplacingMergeTree over the
-- writing server's `version`, nanoseconds) and reads use FINAL. A row with removed = 1
-- is a delete: FINAL drops the key. An object's version numbers are not stored: reads
-- number the versions of an object by creation time (then digest), so two replicas that
-- publish versions of one object at once cannot hand out the same number.

CREATE TABLE IF NOT EXISTS obj_versions (
    project_id String,
    object_id String,
    digest String,
    kind LowCardinality(String),
    base_object_class Nullable(String),
    leaf_object_class Nullable(String),
    val String,
    wb_user_id Nullable(String),
    created_at_us Int64,
    deleted_at_us Nullable(Int64),
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (project_id, object_id, digest);

CREATE TABLE IF NOT EXISTS obj_aliases (
    project_id String,
    object_id String,
    alias String,
    digest String,
    version UInt64,
    removed UInt8 DEFAULT 0
) ENGINE = ReplacingMergeTree(version, removed)
ORDER BY (project_id, object_id, alias);

CREATE TABLE IF NOT EXISTS obj_tags (
    project_id String,
    object_id String,
    digest String,
    tag String,
    version UInt64,
    removed UInt8 DEFAULT 0
) ENGINE = ReplacingMergeTree(version, removed)
ORDER BY (project_id, object_id, digest, tag);

CREATE TABLE IF NOT EXISTS table_rows (
    project_id String,
    digest String,
    val String
) ENGINE = ReplacingMergeTree
ORDER BY (project_id, digest);

CREATE TABLE IF NOT EXISTS table_versions (
    project_id String,
    digest String,
    row_digests Array(String)
) ENGINE = ReplacingMergeTree
ORDER BY (project_id, digest);

CREATE TABLE IF NOT EXISTS file_blobs (
    project_id String,
    digest String,
    content String
) ENGINE = ReplacingMergeTree
ORDER BY (project_id, digest);

CREATE TABLE IF NOT EXISTS docs (
    kind LowCardinality(String),
    project_id String,
    id String,
    created_at_us Int64,
    doc String,
    version UInt64,
    removed UInt8 DEFAULT 0
) ENGINE = ReplacingMergeTree(version, removed)
ORDER BY (kind, project_id, id);
