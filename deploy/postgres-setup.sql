-- What Outpost needs from Postgres, for a database `app` and a role `outpost`.
-- postgresql.conf: wal_level = logical (restart required); max_replication_slots
-- and max_wal_senders at least 1 more than in use.

CREATE ROLE outpost LOGIN REPLICATION PASSWORD 'change-me';
GRANT CONNECT ON DATABASE app TO outpost;
GRANT USAGE ON SCHEMA public TO outpost;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO outpost;
-- Writes from clients (only for tables with write rules):
GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO outpost;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO outpost;
-- The `outpost` schema holds the applied-groups ledger and row versions; the
-- service creates it (deploy/outpost-ledger.sql) with this right, or run that
-- script once yourself:
GRANT CREATE ON DATABASE app TO outpost;
-- Optional, for last-writer-wins against changes made by other programs:
-- ALTER SYSTEM SET track_commit_timestamp = on;   (restart required)
-- With create_publication = false, create the publication as the tables' owner:
-- CREATE PUBLICATION outpost FOR TABLE lists, todos;
