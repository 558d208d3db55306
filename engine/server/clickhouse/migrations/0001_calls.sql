-- Calls. The server inserts every part of a call (a start, an end, a complete call, a
-- rename, a delete) into call_parts; call_parts keeps nothing (ENGINE = Null): the
-- materialized view folds each inserted block into calls_merged, so each byte is written
-- once. calls_merged holds one aggregate state per column and call, merged by
-- ClickHouse in the background and by GROUP BY at read time.
--
-- Every part carries `version`, the writing server's clock in nanoseconds (strictly
-- increasing per server). Each group of columns is taken from the newest part that
-- carries the group (argMax over version; parts without the group weigh 0), so a resent
-- batch changes nothing and the last write wins, whichever replica wrote it and in
-- whatever order the parts arrive. Nullable values are wrapped in a 1-tuple because
-- argMax skips NULL values and a start may set a field back to NULL.
-- A call is visible once a start arrived after its last delete (start_version >
-- deleted_version); its end fields only if an end arrived after that delete.

CREATE TABLE IF NOT EXISTS call_parts (
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
) ENGINE = Null;

CREATE TABLE IF NOT EXISTS calls_merged (
    project_id String,
    id String,
    first_version SimpleAggregateFunction(min, UInt64),
    start_version SimpleAggregateFunction(max, UInt64),
    end_version SimpleAggregateFunction(max, UInt64),
    deleted_version SimpleAggregateFunction(max, UInt64),
    op_name AggregateFunction(argMax, Nullable(String), UInt64),
    display_name AggregateFunction(argMax, Tuple(Nullable(String)), UInt64),
    trace_id AggregateFunction(argMax, Tuple(Nullable(String)), UInt64),
    parent_id AggregateFunction(argMax, Tuple(Nullable(String)), UInt64),
    thread_id AggregateFunction(argMax, Tuple(Nullable(String)), UInt64),
    turn_id AggregateFunction(argMax, Tuple(Nullable(String)), UInt64),
    started_at_us AggregateFunction(argMax, Tuple(Nullable(Int64)), UInt64),
    attributes AggregateFunction(argMax, Tuple(Nullable(String)), UInt64),
    inputs AggregateFunction(argMax, Tuple(Nullable(String)), UInt64),
    otel_dump AggregateFunction(argMax, Tuple(Nullable(String)), UInt64),
    wb_user_id AggregateFunction(argMax, Tuple(Nullable(String)), UInt64),
    wb_run_id AggregateFunction(argMax, Tuple(Nullable(String)), UInt64),
    wb_run_step AggregateFunction(argMax, Tuple(Nullable(Int64)), UInt64),
    ended_at_us AggregateFunction(argMax, Tuple(Nullable(Int64)), UInt64),
    exception AggregateFunction(argMax, Tuple(Nullable(String)), UInt64),
    output AggregateFunction(argMax, Tuple(Nullable(String)), UInt64),
    summary AggregateFunction(argMax, Tuple(Nullable(String)), UInt64),
    wb_run_step_end AggregateFunction(argMax, Tuple(Nullable(Int64)), UInt64)
) ENGINE = AggregatingMergeTree
ORDER BY (project_id, id);

CREATE MATERIALIZED VIEW IF NOT EXISTS call_parts_to_merged TO calls_merged AS
SELECT
    project_id,
    id,
    min(version) AS first_version,
    max(if(has_start, version, 0)) AS start_version,
    max(if(has_end, version, 0)) AS end_version,
    max(if(is_delete, version, 0)) AS deleted_version,
    argMaxState(op_name, if(has_start, version, 0)) AS op_name,
    argMaxState(tuple(display_name), if(has_start OR has_name, version, 0)) AS display_name,
    argMaxState(tuple(trace_id), if(has_start, version, 0)) AS trace_id,
    argMaxState(tuple(parent_id), if(has_start, version, 0)) AS parent_id,
    argMaxState(tuple(thread_id), if(has_start, version, 0)) AS thread_id,
    argMaxState(tuple(turn_id), if(has_start, version, 0)) AS turn_id,
    argMaxState(tuple(started_at_us), if(has_start, version, 0)) AS started_at_us,
    argMaxState(tuple(attributes), if(has_start, version, 0)) AS attributes,
    argMaxState(tuple(inputs), if(has_start, version, 0)) AS inputs,
    argMaxState(tuple(otel_dump), if(has_start, version, 0)) AS otel_dump,
    argMaxState(tuple(wb_user_id), if(has_start, version, 0)) AS wb_user_id,
    argMaxState(tuple(wb_run_id), if(has_start, version, 0)) AS wb_run_id,
    argMaxState(tuple(wb_run_step), if(has_start, version, 0)) AS wb_run_step,
    argMaxState(tuple(ended_at_us), if(has_end, version, 0)) AS ended_at_us,
    argMaxState(tuple(exception), if(has_end, version, 0)) AS exception,
    argMaxState(tuple(output), if(has_end, version, 0)) AS output,
    argMaxState(tuple(summary), if(has_end, version, 0)) AS summary,
    argMaxState(tuple(wb_run_step_end), if(has_end, version, 0)) AS wb_run_step_end
FROM call_parts
GROUP BY project_id, id;
