//! The service's embedded store: the mirror of every synced row and the
//! per-bucket op logs, in one SQLite database (WAL mode) under the data
//! directory.
//!
//! ```text
//! meta        key → value: epoch, schema version, slot, last commit LSN, last op id
//! mirror      (table, key) → the row as Postgres printed it + the buckets it is in
//! bucket_ops  (bucket, table, key) → the latest op for that row in that bucket
//! buckets     bucket → checksum, row count, last op id, compaction horizon
//! members     (membership, user key, key, source row) — the membership index
//! member_versions (membership, user key) → op id of its last change
//! links       (hop source, parent key, child key) — the link index
//! ```
//!
//! Invariants:
//! - One writer ([`StoreWriter`]), any number of readers ([`ReaderPool`]). A
//!   reader sees only committed store transactions, and the writer commits
//!   only at replicated transaction boundaries, so every state a reader sees
//!   is one that Postgres had.
//! - `bucket_ops` holds one op per row and bucket (the latest), so reading a
//!   bucket from a cursor gives the changed rows' current state, and reading
//!   it from zero gives the bucket's whole content. Removes stay as tombstones
//!   until compacted past a horizon; a cursor older than the horizon must be
//!   reset by the reader.
//! - A bucket's checksum is the wrapping sum of the row hashes of the PUT ops
//!   it holds (see `outpost_proto::row_hash`), kept up to date in the same
//!   store transaction as the ops.
//! - `meta.last_commit_lsn` is the commit LSN of the last replicated
//!   transaction stored: a transaction at or below it is a replay and is
//!   skipped by the ingest.
//! - The membership index holds one entry per membership-table row and
//!   membership it satisfies: users whose claim gives `user key` get bucket
//!   key element `key`. Every change of a `(membership, user key)`'s entries
//!   takes a new op id, recorded in `member_versions` in the same store
//!   transaction, so a reader can tell, inside its snapshot, whether a
//!   user's bucket set changed since an op id.
//! - The link index holds one entry per row and hop column that reaches a
//!   parent: `(source, parent mirror key, child mirror key)`, so that a
//!   changed parent finds the rows routed through it.

mod index;
mod reader;
#[cfg(test)]
mod tests;
mod text_row;
mod writer;

pub use reader::{BucketInfo, ReadTxn, ReaderPool, StoredCheckpoint};
pub use text_row::{DecodeRowError, TextRow};
pub use writer::{StoreState, StoreWriter, Touched};

use std::path::{Path, PathBuf};

/// Errors of the embedded store. All of them are definite for the operation
/// that hit them; the service stops rather than risk a gap.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Row(#[from] DecodeRowError),
    #[error("store op is damaged: {0}")]
    Op(#[from] prost::DecodeError),
    #[error("store meta value {key} is damaged: {value:?}")]
    Meta { key: &'static str, value: String },
}

/// The database file inside a data directory.
pub fn database_path(data_dir: &Path) -> PathBuf {
    data_dir.join("outpost.db")
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mirror (
    tbl TEXT NOT NULL, key TEXT NOT NULL, row BLOB NOT NULL, buckets TEXT NOT NULL,
    PRIMARY KEY (tbl, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bucket_ops (
    bucket TEXT NOT NULL, tbl TEXT NOT NULL, key TEXT NOT NULL,
    op_id INTEGER NOT NULL, kind INTEGER NOT NULL, op BLOB NOT NULL, hash INTEGER NOT NULL,
    PRIMARY KEY (bucket, tbl, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS bucket_ops_by_op ON bucket_ops (bucket, op_id);
CREATE TABLE IF NOT EXISTS buckets (
    bucket TEXT PRIMARY KEY, checksum INTEGER NOT NULL, count INTEGER NOT NULL,
    last_op_id INTEGER NOT NULL, horizon INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members (
    membership INTEGER NOT NULL, user_key TEXT NOT NULL, key TEXT NOT NULL, src TEXT NOT NULL,
    PRIMARY KEY (membership, user_key, key, src)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS member_versions (
    membership INTEGER NOT NULL, user_key TEXT NOT NULL, op_id INTEGER NOT NULL,
    PRIMARY KEY (membership, user_key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS links (
    source INTEGER NOT NULL, parent TEXT NOT NULL, child TEXT NOT NULL,
    PRIMARY KEY (source, parent, child)) WITHOUT ROWID;
";

fn open_connection(path: &Path, read_only: bool) -> Result<rusqlite::Connection, StoreError> {
    use rusqlite::OpenFlags;
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let open_err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = rusqlite::Connection::open_with_flags(path, flags).map_err(open_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(open_err)?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
    }
    conn.pragma_update(None, "cache_size", -16384)
        .map_err(open_err)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// The op kinds stored in `bucket_ops.kind`, as in the wire `RowOp.Kind`.
pub(crate) const KIND_PUT: i64 = 1;
pub(crate) const KIND_REMOVE: i64 = 2;
