//! The service's own tables in Postgres, schema `outpost`: the ledger of
//! op groups (what made writes idempotent) and the versions of the column
//! values Outpost wrote (what last-writer-wins compares with), one row per
//! written row.
//!
//! Invariants:
//! - `applied_groups` gets the `(client_id, seq)` row of an applied group in
//!   the group's own transaction, so the row exists exactly when the group's
//!   changes do; a rejected group's row is written after its rollback. Its
//!   `commit_lsn` is no longer written (rows from earlier versions may hold
//!   one, and a duplicate of such a group is answered with it).
//! - `row_versions` is written in the same transaction as the values it
//!   describes, under the row's lock, whole: a write reads the row's
//!   versions and writes back every column's (`versions`, a JSON object of
//!   `column: [hlc, client id, value hash]`), where the value hash is the
//!   hash of the text Postgres returned for the written value. A row with no
//!   version left has no `row_versions` row.
//! - The per-column layout of earlier versions (`column_versions`, one row
//!   per column) is folded into `row_versions` and dropped by [`setup`].
//! - Neither table is published for replication: clients never see them.

use std::collections::{BTreeMap, HashMap};

use tokio_postgres::types::ToSql;

use super::hlc::Version;
use super::pool::Conn;
use crate::lsn::Lsn;

/// Creates the schema and tables when missing, and converts a ledger of
/// an earlier version (`deploy/outpost-ledger.sql`, which an operator can
/// run by hand). Serialised by an advisory lock, so services starting
/// together do not race.
const SETUP: &str = include_str!("../../../deploy/outpost-ledger.sql");

/// Sets up the `outpost` schema unless its tables exist, and takes them out
/// of `publication` if someone added them.
pub(crate) async fn setup(
    conn: &mut Conn,
    publication: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    let present = conn
        .query_opt(
            "SELECT to_regclass('outpost.applied_groups') IS NOT NULL \
                AND to_regclass('outpost.row_versions') IS NOT NULL \
                AND to_regclass('outpost.column_versions') IS NULL",
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

/// COMMIT, then [`CURRENT_WAL_LSN`], as one simple query (one message,
/// one answer): sent by [`Conn::commit_reading_lsn`], its row read with
/// [`lsn_text`].
pub(crate) const COMMIT_READING_WAL_LSN: &str = "COMMIT; SELECT pg_current_wal_lsn()::text";

/// The LSN [`CURRENT_WAL_LSN`] read.
pub(crate) fn lsn(row: &tokio_postgres::Row) -> Result<Lsn, tokio_postgres::Error> {
    let text: String = row.try_get(0)?;
    Ok(lsn_text(&text))
}

/// The LSN of the text [`CURRENT_WAL_LSN`] returns.
pub(crate) fn lsn_text(text: &str) -> Lsn {
    text.parse().unwrap_or_default()
}

/// A column's recorded version and the hash of the value it was written with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ColumnVersion {
    pub version: Version,
    pub value_hash: i64,
}

/// The recorded versions of a row's columns, by column name.
pub(crate) type RowVersions = HashMap<String, ColumnVersion>;

/// The recorded versions of a row (`$1` table label, `$2` version key):
/// read with [`versions`].
pub(crate) const VERSIONS: &str =
    "SELECT versions::text FROM outpost.row_versions WHERE tbl = $1 AND key = $2";

/// The versions [`VERSIONS`] read (no row: none recorded). Versions in a
/// form this service does not read (written by hand) count as none
/// recorded: last-writer-wins then compares with the row's commit time.
pub(crate) fn versions(rows: &[tokio_postgres::Row]) -> Result<RowVersions, tokio_postgres::Error> {
    match rows.first() {
        None => Ok(RowVersions::new()),
        Some(row) => Ok(readable(&row.try_get::<_, String>(0)?)),
    }
}

/// [`decode`], or none recorded (with a warning) when `text` is not in
/// the form this service writes.
pub(crate) fn readable(text: &str) -> RowVersions {
    decode(text).unwrap_or_else(|e| {
        tracing::warn!(error = %e, versions = text, "unreadable row versions in outpost.row_versions are ignored");
        RowVersions::new()
    })
}

/// A row's versions from their JSON form (`column: [hlc, client id, value
/// hash]`).
fn decode(text: &str) -> Result<RowVersions, serde_json::Error> {
    let by_column: HashMap<String, (i64, String, i64)> = serde_json::from_str(text)?;
    Ok(by_column
        .into_iter()
        .map(|(column, (hlc, client_id, value_hash))| {
            (
                column,
                ColumnVersion {
                    version: Version { hlc, client_id },
                    value_hash,
                },
            )
        })
        .collect())
}

/// Records the versions of a row (`$1` table label, `$2` version key, `$3`
/// its versions in their JSON form, or NULL when none are left), in one
/// statement. Built by [`VersionWrite::params`].
pub(crate) const WRITE_VERSIONS: &str = "WITH gone AS (\
         DELETE FROM outpost.row_versions \
         WHERE $3::text IS NULL AND tbl = $1::text AND key = $2::text) \
     INSERT INTO outpost.row_versions AS v (tbl, key, versions) \
     SELECT $1::text, $2::text, $3::text::jsonb WHERE $3::text IS NOT NULL \
     ON CONFLICT (tbl, key) DO UPDATE SET versions = excluded.versions";

/// What a write records of one row's versions.
pub(crate) struct VersionWrite {
    pub table: String,
    pub key: String,
    /// The last-writer-wins columns written, and the hashes of their values.
    pub columns: Vec<String>,
    pub hashes: Vec<i64>,
    pub version: Version,
    /// Forget the versions of the row's other columns (the row was deleted,
    /// or inserted anew).
    pub replace: bool,
}

impl VersionWrite {
    /// Nothing to record: no column written and none to forget.
    pub(crate) fn is_empty(&self) -> bool {
        self.columns.is_empty() && !self.replace
    }

    /// The row's versions once written, in their JSON form: of those
    /// `recorded`, the columns not written (none when the row's versions
    /// are replaced), then the columns written, with this write's version.
    /// `None`: no version is left.
    pub(crate) fn merged(&self, recorded: Option<&RowVersions>) -> Option<String> {
        // Column → [hlc, client id, value hash], columns in name order.
        let mut versions: BTreeMap<&str, (i64, &str, i64)> = BTreeMap::new();
        if !self.replace
            && let Some(recorded) = recorded
        {
            versions.extend(recorded.iter().map(|(c, v)| {
                let version = (v.version.hlc, v.version.client_id.as_str(), v.value_hash);
                (c.as_str(), version)
            }));
        }
        let version = (self.version.hlc, self.version.client_id.as_str());
        versions.extend(
            self.columns
                .iter()
                .zip(&self.hashes)
                .map(|(c, &hash)| (c.as_str(), (version.0, version.1, hash))),
        );
        if versions.is_empty() {
            return None;
        }
        serde_json::to_string(&versions).ok()
    }

    /// The parameters of [`WRITE_VERSIONS`], over the row's versions
    /// `recorded` before the write.
    pub(crate) fn params(
        self,
        recorded: Option<&RowVersions>,
    ) -> Vec<Box<dyn ToSql + Send + Sync>> {
        let versions = self.merged(recorded);
        vec![Box::new(self.table), Box::new(self.key), Box::new(versions)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(hlc: i64, client: &str, hash: i64) -> ColumnVersion {
        ColumnVersion {
            version: Version {
                hlc,
                client_id: client.into(),
            },
            value_hash: hash,
        }
    }

    fn write(columns: &[&str], replace: bool) -> VersionWrite {
        VersionWrite {
            table: "public.t".into(),
            key: "[\"1\"]".into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            hashes: (0..columns.len() as i64).map(|i| 100 + i).collect(),
            version: Version {
                hlc: 9,
                client_id: "b".into(),
            },
            replace,
        }
    }

    #[test]
    fn a_write_keeps_the_versions_of_the_columns_it_does_not_write() {
        let recorded: RowVersions = [
            ("x".to_string(), v(1, "a", -5)),
            ("y".to_string(), v(2, "a", 7)),
        ]
        .into_iter()
        .collect();
        let merged = write(&["y", "z"], false)
            .merged(Some(&recorded))
            .expect("versions");
        assert_eq!(
            merged,
            r#"{"x":[1,"a",-5],"y":[9,"b",100],"z":[9,"b",101]}"#
        );
        let back = decode(&merged).expect("decode");
        assert_eq!(back["x"], v(1, "a", -5));
        assert_eq!(back["z"], v(9, "b", 101));
        assert_eq!(back.len(), 3);
    }

    #[test]
    fn a_replacing_write_forgets_the_others_and_a_delete_leaves_none() {
        let recorded: RowVersions = [("x".to_string(), v(1, "a", 3))].into_iter().collect();
        assert_eq!(
            write(&["y"], true).merged(Some(&recorded)).as_deref(),
            Some(r#"{"y":[9,"b",100]}"#)
        );
        assert_eq!(write(&[], true).merged(Some(&recorded)), None);
        assert!(decode("[1, 2]").is_err());
    }
}
