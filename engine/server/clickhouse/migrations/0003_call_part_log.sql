-- Calls, second layout: every part of a call (a start, an end, a complete call, a rename,
-- a delete) is kept as one row of call_part_log, a plain MergeTree ordered by
-- (project_id, id); reads merge a call's parts with one GROUP BY id, each group of
-- columns taken from the newest part that carries it (argMaxIf over version), as 0001's
-- view did when writing. Why: 0001's materialized view computed 24 argMax states per
-- inserted part, which made an insert ~3x the CPU of writing the rows themselves (10.6
-- vs 4.1 us per call in chDB, 10k-call batches), and large batches are now parsed by
-- ClickHouse straight from the request's JSON (INSERT ... SELECT FROM input()), with no
-- row built in Python.
--
-- Columns and flags are 0001's call_parts: has_start / has_end / has_name / is_delete
-- say which groups a part carries; version is the writer's clock in nanoseconds.

CREATE TABLE IF NOT EXISTS call_part_log (
    project_id String,
    id String,
    version UInt64,
    has_start UInt8 DEFAULT 0,
    has_end UInt8 DEFAULT 0,
    has_name UInt8 DEFAULT 0,
    is_delete UInt8 DEFAULT 0,
    op_name Nullable(String),
    display_name Nullable(String),
    trace_id Nullable(String),
    parent_id Nullable(String),
    thread_id Nullable(String),
    turn_id Nullable(String),
    started_at_us Nullable(Int64),
    attributes Nullable(String),
    inputs Nullable(String),
    otel_dump Nullable(String),
    wb_user_id Nullable(String),
    wb_run_id Nullable(String),
    wb_run_step Nullable(Int64),
    ended_at_us Nullable(Int64),
    exception Nullable(String),
    output Nullable(String),
    summary Nullable(String),
    wb_run_step_end Nullable(Int64)
) ENGINE = MergeTree
ORDER BY (project_id, id);

-- A server of schema 1-2 still running beside the one applying this (a rolling upgrade)
-- keeps inserting into call_parts (ENGINE = Null): its parts land here, each once, with
-- the columns it names (all of them; they are the same). This view is created before the
-- old one goes, so no insert falls between the two (migration 0005 creates it on the
-- databases that applied this file before it did).
CREATE MATERIALIZED VIEW IF NOT EXISTS call_parts_to_log TO call_part_log AS
SELECT
    project_id, id, version, has_start, has_end, has_name, is_delete, op_name, display_name,
    trace_id, parent_id, thread_id, turn_id, started_at_us, attributes, inputs, otel_dump,
    wb_user_id, wb_run_id, wb_run_step, ended_at_us, exception, output, summary, wb_run_step_end
FROM call_parts;

-- Nothing folds parts into calls_merged any more. A part inserted while both views
-- existed is in both tables, and the copy below adds it again: equal parts change no
-- merged value.
DROP VIEW IF EXISTS call_parts_to_merged;

-- The calls stored under 0001 move over as parts: the first arrival (seq), the newest
-- start (with the display name as last set), the newest end, the last delete. A replica
-- applying this at the same time copies them again: equal parts change no merged value.
-- calls_merged stays (that copy reads it); nothing reads it afterwards.
INSERT INTO call_part_log
    (project_id, id, version, has_start, has_end, has_name, is_delete, op_name, display_name,
     trace_id, parent_id, thread_id, turn_id, started_at_us, attributes, inputs, otel_dump,
     wb_user_id, wb_run_id, wb_run_step, ended_at_us, exception, output, summary, wb_run_step_end)
SELECT
    project_id, id, part.1, part.2 = 'start', part.2 = 'end', 0, part.2 = 'delete',
    if(part.2 = 'start', op_name, NULL), if(part.2 = 'start', display_name, NULL),
    trace_id, parent_id, thread_id, turn_id, started_at_us, attributes, inputs, otel_dump,
    wb_user_id, wb_run_id, wb_run_step, ended_at_us, exception, output, summary, wb_run_step_end
FROM (
    SELECT
        project_id, id,
        arrayJoin(arrayFilter(p -> p.1 > 0, [
            (min(first_version), 'seq'), (max(start_version), 'start'),
            (max(end_version), 'end'), (max(deleted_version), 'delete')])) AS part,
        argMaxMerge(op_name) AS op_name,
        argMaxMerge(display_name).1 AS display_name,
        argMaxMerge(trace_id).1 AS trace_id,
        argMaxMerge(parent_id).1 AS parent_id,
        argMaxMerge(thread_id).1 AS thread_id,
        argMaxMerge(turn_id).1 AS turn_id,
        argMaxMerge(started_at_us).1 AS started_at_us,
        argMaxMerge(attributes).1 AS attributes,
        argMaxMerge(inputs).1 AS inputs,
        argMaxMerge(otel_dump).1 AS otel_dump,
        argMaxMerge(wb_user_id).1 AS wb_user_id,
        argMaxMerge(wb_run_id).1 AS wb_run_id,
        argMaxMerge(wb_run_step).1 AS wb_run_step,
        argMaxMerge(ended_at_us).1 AS ended_at_us,
        argMaxMerge(exception).1 AS exception,
        argMaxMerge(output).1 AS output,
        argMaxMerge(summary).1 AS summary,
        argMaxMerge(wb_run_step_end).1 AS wb_run_step_end
    FROM calls_merged
    GROUP BY project_id, id
);
