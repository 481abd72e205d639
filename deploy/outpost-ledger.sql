-- Outpost's own tables, schema `outpost`: the ledger of applied op groups and
-- the last-writer-wins versions of the rows Outpost wrote. The service runs
-- this at start-up when the tables are missing (or a ledger of an earlier
-- version is to be converted); a role without the rights to do so needs it
-- run once by the schema's owner. Safe to run again.
BEGIN;
SELECT pg_advisory_xact_lock(7418110557345);
CREATE SCHEMA IF NOT EXISTS outpost;
CREATE TABLE IF NOT EXISTS outpost.applied_groups (
    client_id   text NOT NULL,
    seq         bigint NOT NULL,
    status      text NOT NULL,
    reason_code text,
    message     text,
    op_index    int,
    commit_lsn  pg_lsn,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_id, seq)
);
-- versions: {"column": [hlc, client id, value hash], ...}
CREATE TABLE IF NOT EXISTS outpost.row_versions (
    tbl      text NOT NULL,
    key      text NOT NULL,
    versions jsonb NOT NULL,
    PRIMARY KEY (tbl, key)
);
-- Earlier versions kept one row per column in outpost.column_versions: fold
-- them in (per column, the greater version wins), then drop the table. The
-- lock waits for writers of the old layout and keeps new ones out, so the
-- fold sees every version committed; stop services of earlier versions
-- first, or their writes fail once the table is gone.
DO $$
BEGIN
    IF to_regclass('outpost.column_versions') IS NOT NULL THEN
        LOCK TABLE outpost.column_versions IN ACCESS EXCLUSIVE MODE;
        INSERT INTO outpost.row_versions AS r (tbl, key, versions)
        SELECT tbl, key, jsonb_object_agg(col, jsonb_build_array(hlc, client_id, value_hash))
        FROM outpost.column_versions GROUP BY tbl, key
        ON CONFLICT (tbl, key) DO UPDATE SET versions = (
            SELECT jsonb_object_agg(col, CASE
                WHEN n.value IS NULL THEN o.value
                WHEN o.value IS NULL THEN n.value
                WHEN ((n.value->>0)::bigint, (n.value->>1) COLLATE "C")
                    > ((o.value->>0)::bigint, (o.value->>1) COLLATE "C")
                    THEN n.value
                ELSE o.value END)
            FROM jsonb_each(r.versions) AS o(col, value)
            FULL JOIN jsonb_each(excluded.versions) AS n(col, value) USING (col));
        DROP TABLE outpost.column_versions;
    END IF;
END $$;
COMMIT;
