-- weave's project TTL settings: how many days a project's calls are kept (NULL: until
-- deleted). One row per update; a read takes the newest (argMax of a tuple, so a NULL set
-- last wins: aggregates skip NULL arguments). Replicas write and read the same table.

CREATE TABLE IF NOT EXISTS project_settings (
    project_id String,
    retention_days Nullable(Int64),
    updated_at_us Int64,
    updated_by Nullable(String)
) ENGINE = ReplacingMergeTree(updated_at_us)
ORDER BY project_id;
