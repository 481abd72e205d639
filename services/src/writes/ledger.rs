//! The service's own tables in Postgres, schema `outpost`: the ledger of
//! op groups (what made writes idempotent) and the versions of the column
//! values Outpost wrote (what last-writer-wins compares with).
//!
//! Invariants:
//! - `applied_groups` gets the `(client_id, seq)` row of an applied group in
//!   the group's own transaction, so the row exists exactly when the group's
//!   changes do; a rejected group's row is written after its rollback. Its
//!   `commit_lsn` is no longer written (rows from earlier versions may hold
//!   one, and a duplicate of such a group is answered with it).
//! - `column_versions` is written in the same transaction as the values it
//!   describes, under the row's lock; `value_hash` is the hash of the text
//!   Postgres returned for the written value.
//! - Neither table is published for replication: clients never see them.

use tokio_postgres::types::ToSql;

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

/// Takes the group's ledger row inside the open transaction (`$1`
/// client id, `$2` seq); no row inserted: the group was recorded before
/// (the insert waited for any transaction still holding it, so the recorded
/// row is committed).
pub(crate) const CLAIM: &str = "INSERT INTO outpost.applied_groups (client_id, seq, status) \
     VALUES ($1, $2, 'applied') ON CONFLICT DO NOTHING";

/// The recorded result of a group (`$1` client id, `$2` seq): read with
/// [`recorded`].
pub(crate) const LOOKUP: &str = "SELECT status, coalesce(reason_code, ''), coalesce(message, ''), \
            coalesce(op_index, 0), commit_lsn::text \
     FROM outpost.applied_groups WHERE client_id = $1 AND seq = $2";

/// The row [`LOOKUP`] read.
pub(crate) fn recorded(
    row: Option<tokio_postgres::Row>,
) -> Result<Option<Recorded>, tokio_postgres::Error> {
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

/// Records a rejection (outside any transaction): `$1` client id, `$2`
/// seq, `$3` reason code, `$4` message, `$5` op index. No row inserted: the
/// group was recorded meanwhile by another attempt, whose result stands.
pub(crate) const RECORD_REJECTION: &str = "INSERT INTO outpost.applied_groups \
         (client_id, seq, status, reason_code, message, op_index) \
     VALUES ($1, $2, 'rejected', $3, $4, $5) ON CONFLICT DO NOTHING";

/// The current end of the WAL: read right after a commit on the same
/// connection, an upper bound of that commit's LSN. Read with [`lsn`].
pub(crate) const CURRENT_WAL_LSN: &str = "SELECT pg_current_wal_lsn()::text";

/// The LSN [`CURRENT_WAL_LSN`] read.
pub(crate) fn lsn(row: &tokio_postgres::Row) -> Result<Lsn, tokio_postgres::Error> {
    let text: String = row.try_get(0)?;
    Ok(text.parse().unwrap_or_default())
}

/// A column's recorded version and the hash of the value it was written with.
pub(crate) struct ColumnVersion {
    pub version: Version,
    pub value_hash: i64,
}

/// The recorded versions of a row's columns (`$1` table label, `$2` version
/// key): read with [`versions`].
pub(crate) const VERSIONS: &str = "SELECT col, hlc, client_id, value_hash \
     FROM outpost.column_versions WHERE tbl = $1 AND key = $2";

/// The versions [`VERSIONS`] read, by column name.
pub(crate) fn versions(
    rows: &[tokio_postgres::Row],
) -> Result<Vec<(String, ColumnVersion)>, tokio_postgres::Error> {
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

/// Records the versions of a row's columns just written, in one statement:
/// `$1` table label, `$2` version key, `$3` columns, `$4` hlc, `$5` client
/// id, `$6` value hashes, `$7` whether the versions of the row's other
/// columns are forgotten (the row was deleted, or inserted anew). Built by
/// [`VersionWrite::params`].
pub(crate) const WRITE_VERSIONS: &str = "WITH forgotten AS (\
         DELETE FROM outpost.column_versions \
         WHERE $7 AND tbl = $1 AND key = $2 AND col <> ALL ($3::text[])) \
     INSERT INTO outpost.column_versions AS v (tbl, key, col, hlc, client_id, value_hash) \
     SELECT $1, $2, c.col, $4, $5, c.hash \
     FROM unnest($3::text[], $6::int8[]) AS c(col, hash) \
     ON CONFLICT (tbl, key, col) DO UPDATE \
     SET hlc = excluded.hlc, client_id = excluded.client_id, value_hash = excluded.value_hash";

/// What [`WRITE_VERSIONS`] records for one row.
pub(crate) struct VersionWrite {
    pub table: String,
    pub key: String,
    /// The last-writer-wins columns written, and the hashes of their values.
    pub columns: Vec<String>,
    pub hashes: Vec<i64>,
    pub version: Version,
    /// Forget the versions of the row's other columns.
    pub replace: bool,
}

impl VersionWrite {
    /// Nothing to record: no column written and none to forget.
    pub(crate) fn is_empty(&self) -> bool {
        self.columns.is_empty() && !self.replace
    }

    /// The parameters of [`WRITE_VERSIONS`].
    pub(crate) fn params(self) -> Vec<Box<dyn ToSql + Send + Sync>> {
        vec![
            Box::new(self.table),
            Box::new(self.key),
            Box::new(self.columns),
            Box::new(self.version.hlc),
            Box::new(self.version.client_id),
            Box::new(self.hashes),
            Box::new(self.replace),
        ]
    }
}
