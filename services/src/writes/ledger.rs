//! The service's own tables in Postgres, schema `outpost`: the ledger of
//! op groups (what made writes idempotent) and the versions of the column
//! values Outpost wrote (what last-writer-wins compares with).
//!
//! Invariants:
//! - `applied_groups` gets the `(client_id, seq)` row of an applied group in
//!   the group's own transaction, so the row exists exactly when the group's
//!   changes do; a rejected group's row is written after its rollback.
//! - `column_versions` is written in the same transaction as the values it
//!   describes, under the row's lock; `value_hash` is the hash of the text
//!   Postgres returned for the written value.
//! - Neither table is published for replication: clients never see them.

use super::hlc::Version;
use super::pool::Conn;
use crate::lsn::Lsn;

/// Creates the schema and tables when missing. Serialised by an advisory
/// lock, so services starting together do not race.
const SETUP: &str = "
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
CREATE TABLE IF NOT EXISTS outpost.column_versions (
    tbl        text NOT NULL,
    key        text NOT NULL,
    col        text NOT NULL,
    hlc        bigint NOT NULL,
    client_id  text NOT NULL,
    value_hash bigint NOT NULL,
    PRIMARY KEY (tbl, key, col)
);
COMMIT;
";

/// Sets up the `outpost` schema unless its tables exist, and takes them out
/// of `publication` if someone added them.
pub(crate) async fn setup(
    conn: &mut Conn,
    publication: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    let present = conn
        .query_opt(
            "SELECT to_regclass('outpost.applied_groups') IS NOT NULL \
                AND to_regclass('outpost.column_versions') IS NOT NULL",
            &[],
        )
        .await?
        .map(|r| r.try_get::<_, bool>(0))
        .transpose()?
        .unwrap_or(false);
    // Created beforehand by someone allowed to: nothing to create (and no
    // CREATE privilege needed).
    if !present {
        conn.batch(SETUP).await?;
    }
    let Some(publication) = publication else {
        return Ok(());
    };
    let published = conn
        .query(
            "SELECT p.puballtables, pt.tablename::text \
             FROM pg_publication p \
             JOIN pg_publication_tables pt ON pt.pubname = p.pubname \
             WHERE p.pubname = $1 AND pt.schemaname = 'outpost'",
            &[&publication],
        )
        .await?;
    for row in published {
        let all_tables: bool = row.try_get(0)?;
        let table: String = row.try_get(1)?;
        if all_tables {
            tracing::warn!(
                publication,
                table = %table,
                "the publication is FOR ALL TABLES, so it streams Outpost's own bookkeeping \
                 tables too; they are ignored, but list the synced tables instead to spare \
                 the decoding"
            );
            continue;
        }
        let sql = format!(
            "ALTER PUBLICATION \"{}\" DROP TABLE outpost.\"{}\"",
            publication.replace('"', "\"\""),
            table.replace('"', "\"\"")
        );
        conn.batch(&sql).await?;
        tracing::info!(publication, table = %table, "removed an Outpost table from the publication");
    }
    Ok(())
}

/// What the ledger holds for a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Recorded {
    /// `applied` or `rejected`.
    pub status: String,
    pub reason_code: String,
    pub message: String,
    pub op_index: u32,
    pub commit_lsn: Option<Lsn>,
}

/// Takes the group's ledger row inside the open transaction. `false`: the
/// group was recorded before (the insert waited for any transaction still
/// holding it, so the recorded row is committed).
pub(crate) async fn claim(
    conn: &mut Conn,
    client_id: &str,
    seq: i64,
) -> Result<bool, tokio_postgres::Error> {
    let inserted = conn
        .execute(
            "INSERT INTO outpost.applied_groups (client_id, seq, status) \
             VALUES ($1, $2, 'applied') ON CONFLICT DO NOTHING",
            &[&client_id, &seq],
        )
        .await?;
    Ok(inserted == 1)
}

/// The recorded result of a group.
pub(crate) async fn lookup(
    conn: &mut Conn,
    client_id: &str,
    seq: i64,
) -> Result<Option<Recorded>, tokio_postgres::Error> {
    let row = conn
        .query_opt(
            "SELECT status, coalesce(reason_code, ''), coalesce(message, ''), \
                    coalesce(op_index, 0), commit_lsn::text \
             FROM outpost.applied_groups WHERE client_id = $1 AND seq = $2",
            &[&client_id, &seq],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let op_index: i32 = row.try_get(3)?;
    let lsn: Option<String> = row.try_get(4)?;
    Ok(Some(Recorded {
        status: row.try_get(0)?,
        reason_code: row.try_get(1)?,
        message: row.try_get(2)?,
        op_index: u32::try_from(op_index).unwrap_or(0),
        commit_lsn: lsn.and_then(|l| l.parse().ok()),
    }))
}

/// Records a rejection (outside any transaction). `false`: the group was
/// recorded meanwhile by another attempt, whose result stands.
pub(crate) async fn record_rejection(
    conn: &mut Conn,
    client_id: &str,
    seq: i64,
    reason_code: &str,
    message: &str,
    op_index: u32,
) -> Result<bool, tokio_postgres::Error> {
    let op_index = i32::try_from(op_index).unwrap_or(i32::MAX);
    let inserted = conn
        .execute(
            "INSERT INTO outpost.applied_groups \
                 (client_id, seq, status, reason_code, message, op_index) \
             VALUES ($1, $2, 'rejected', $3, $4, $5) ON CONFLICT DO NOTHING",
            &[&client_id, &seq, &reason_code, &message, &op_index],
        )
        .await?;
    Ok(inserted == 1)
}

/// The current end of the WAL: read right after a commit on the same
/// connection, an upper bound of that commit's LSN.
pub(crate) async fn current_wal_lsn(conn: &mut Conn) -> Result<Lsn, tokio_postgres::Error> {
    let row = conn
        .query_opt("SELECT pg_current_wal_lsn()::text", &[])
        .await?;
    Ok(row
        .and_then(|r| r.try_get::<_, String>(0).ok())
        .and_then(|l| l.parse().ok())
        .unwrap_or_default())
}

/// Stores an applied group's commit LSN (best effort: without it, a
/// duplicate is answered with the then current WAL end, also an upper bound).
pub(crate) async fn store_commit_lsn(
    conn: &mut Conn,
    client_id: &str,
    seq: i64,
    lsn: Lsn,
) -> Result<(), tokio_postgres::Error> {
    // Not worth a flush of its own: asynchronous commit.
    conn.batch("SET synchronous_commit = off").await?;
    let result = conn
        .execute(
            "UPDATE outpost.applied_groups SET commit_lsn = $3::text::pg_lsn \
             WHERE client_id = $1 AND seq = $2",
            &[&client_id, &seq, &lsn.to_string()],
        )
        .await;
    conn.batch("RESET synchronous_commit").await?;
    result.map(|_| ())
}

/// A column's recorded version and the hash of the value it was written with.
pub(crate) struct ColumnVersion {
    pub version: Version,
    pub value_hash: i64,
}

/// The recorded versions of a row's columns, by column name.
pub(crate) async fn versions(
    conn: &mut Conn,
    table: &str,
    key: &str,
) -> Result<Vec<(String, ColumnVersion)>, tokio_postgres::Error> {
    let rows = conn
        .query(
            "SELECT col, hlc, client_id, value_hash FROM outpost.column_versions \
             WHERE tbl = $1 AND key = $2",
            &[&table, &key],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get(0)?,
                ColumnVersion {
                    version: Version {
                        hlc: r.try_get(1)?,
                        client_id: r.try_get(2)?,
                    },
                    value_hash: r.try_get(3)?,
                },
            ))
        })
        .collect()
}

/// Records the version of columns just written with `version`.
pub(crate) async fn write_versions(
    conn: &mut Conn,
    table: &str,
    key: &str,
    columns: &[String],
    hashes: &[i64],
    version: &Version,
) -> Result<(), tokio_postgres::Error> {
    if columns.is_empty() {
        return Ok(());
    }
    conn.execute(
        "INSERT INTO outpost.column_versions AS v (tbl, key, col, hlc, client_id, value_hash) \
         SELECT $1, $2, c.col, $4, $5, c.hash \
         FROM unnest($3::text[], $6::int8[]) AS c(col, hash) \
         ON CONFLICT (tbl, key, col) DO UPDATE \
         SET hlc = excluded.hlc, client_id = excluded.client_id, value_hash = excluded.value_hash",
        &[
            &table,
            &key,
            &columns,
            &version.hlc,
            &version.client_id,
            &hashes,
        ],
    )
    .await?;
    Ok(())
}

/// Forgets the versions of a row (deleted, or inserted anew).
pub(crate) async fn drop_versions(
    conn: &mut Conn,
    table: &str,
    key: &str,
) -> Result<(), tokio_postgres::Error> {
    conn.execute(
        "DELETE FROM outpost.column_versions WHERE tbl = $1 AND key = $2",
        &[&table, &key],
    )
    .await?;
    Ok(())
}
