-- Migration 0003 dropped the view that folded call_parts into calls_merged, and a server
-- of schema 1-2 still running on the database (a rolling upgrade) kept inserting into
-- call_parts (ENGINE = Null): it answered 200 and its calls were stored nowhere. Its parts
-- now land in call_part_log, where servers of schema 3 on read them, each part once
-- (servers of schema 3 on write call_part_log directly, never call_parts). 0003 creates
-- the same view now (before it drops the old one); this is for the databases that
-- applied 0003 before it did.

CREATE MATERIALIZED VIEW IF NOT EXISTS call_parts_to_log TO call_part_log AS
SELECT
    project_id, id, version, has_start, has_end, has_name, is_delete, op_name, display_name,
    trace_id, parent_id, thread_id, turn_id, started_at_us, attributes, inputs, otel_dump,
    wb_user_id, wb_run_id, wb_run_step, ended_at_us, exception, output, summary, wb_run_step_end
FROM call_parts;
