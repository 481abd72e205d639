//! The service's embedded store: the mirror of every synced row and the
//! per-bucket op logs, in one SQLite database (WAL mode) under the data
//! directory.
//!
//! ```text
//! meta        key → value: epoch, schema version, slot, last commit LSN, last op id
//! mirror      (table, key) → the row as Postgres printed it + where it is placed
//!             (each bucket it is in, with the id of its PUT op there) + the
//!             hash of that version
//! ops         op id → the op: its bucket's id, kind, encoded RowOp
//!             (+ index ops_by_bucket: bucket id, whose entries end with
//!             the op id as every index's do with the rowid)
//! tombstones  (bucket, table, key) → op id of the row's REMOVE op there
//! buckets     id → bucket (unique), compaction horizon
//! bucket_sums id → summary: checksum, row count, last op id (a fixed-size
//!             blob, see `sums`)
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
//! - `ops` holds one op per row and bucket (the latest), so reading a
//!   bucket from a cursor gives the changed rows' current state, and reading
//!   it from zero gives the bucket's whole content. Removes stay as tombstones
//!   until compacted past a horizon; a cursor older than the horizon must be
//!   reset by the reader. A PUT op is found through the mirror's `placed`, a
//!   REMOVE op through `tombstones` (one entry per REMOVE op), so that an op
//!   is written as an append to the op log, and an entry in the index of
//!   its bucket's ops, which names the bucket by its integer id: a commit
//!   that reaches many buckets dirties a page per few hundred of them, not
//!   a page per op (the op log itself only grows at its end).
//! - A bucket's id is assigned when its first op is written and kept until
//!   the store is emptied.
//! - A bucket's checksum is the wrapping sum of the row hashes of the PUT ops
//!   it holds (see `outpost_proto::row_hash`), kept up to date in the same
//!   store transaction as the ops.
//! - A mirror row's `placed` lists exactly the buckets holding a PUT op for
//!   it, with those ops' ids, and `hash` is their hash: the writer replaces
//!   ops and keeps checksums from the mirror without reading ops back.
//! - A store written by an older layout (`meta.format` below [`FORMAT`]) is
//!   emptied when the writer opens it: the service then rebuilds it from a
//!   new snapshot, under a new epoch.
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

mod checkpointer;
mod index;
mod mirror;
mod reader;
mod sums;
#[cfg(test)]
mod tests;
mod text_row;
mod writer;

pub use mirror::{MirrorRow, Placed};
pub use reader::{BucketInfo, ReadTxn, ReaderPool, StoredCheckpoint};
pub use text_row::{DecodeRowError, TextRow};
pub use writer::{BucketChange, ChangedOp, StoreState, StoreWriter, Touched};

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
    #[error("the summary of bucket {0} is damaged")]
    Summary(String),
    #[error("mirror row {key} of {tbl} is damaged")]
    Mirror { tbl: String, key: String },
    #[error("store: cannot start the thread that checkpoints its log: {0}")]
    Thread(#[source] std::io::Error),
}

/// The database file inside a data directory.
pub fn database_path(data_dir: &Path) -> PathBuf {
    data_dir.join("outpost.db")
}

/// How long a connection waits for a lock another one holds.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The layout of the tables below; a store with an older one is rebuilt.
const FORMAT: i64 = 5;

/// Every table of the store, to empty a store of an older layout.
const DROP_ALL: &str = "
DROP TABLE IF EXISTS meta; DROP TABLE IF EXISTS mirror; DROP TABLE IF EXISTS bucket_ops;
DROP TABLE IF EXISTS ops; DROP TABLE IF EXISTS tombstones;
DROP TABLE IF EXISTS buckets; DROP TABLE IF EXISTS bucket_sums;
DROP TABLE IF EXISTS members; DROP TABLE IF EXISTS member_versions;
DROP TABLE IF EXISTS links;
";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mirror (
    tbl TEXT NOT NULL, klen INTEGER NOT NULL, key TEXT NOT NULL, row BLOB NOT NULL,
    placed TEXT NOT NULL, hash INTEGER NOT NULL, PRIMARY KEY (tbl, klen, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ops (
    op_id INTEGER PRIMARY KEY, bucket INTEGER NOT NULL, kind INTEGER NOT NULL, op BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS ops_by_bucket ON ops (bucket);
CREATE TABLE IF NOT EXISTS tombstones (
    bucket TEXT NOT NULL, tbl TEXT NOT NULL, key TEXT NOT NULL, op_id INTEGER NOT NULL,
    PRIMARY KEY (bucket, tbl, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS buckets (
    id INTEGER PRIMARY KEY, bucket TEXT NOT NULL UNIQUE, horizon INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS bucket_sums (id INTEGER PRIMARY KEY, summary BLOB NOT NULL);
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
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        upgrade(&conn).map_err(open_err)?;
    }
    conn.pragma_update(None, "cache_size", -16384)
        .map_err(open_err)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Creates the tables, first emptying a store of an older layout.
fn upgrade(conn: &rusqlite::Connection) -> Result<(), rusqlite::Error> {
    use rusqlite::OptionalExtension;
    let has_meta: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta')",
        [],
        |r| r.get(0),
    )?;
    if has_meta {
        let format: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'format'", [], |r| {
                r.get(0)
            })
            .optional()?;
        if format.and_then(|f| f.parse::<i64>().ok()) != Some(FORMAT) {
            tracing::warn!(
                format = FORMAT,
                "the store was written with an older layout; it is rebuilt from a new snapshot"
            );
            // In one transaction: a store emptied half-way would have lost
            // its format row and kept tables of the old layout.
            conn.execute_batch(&format!("BEGIN IMMEDIATE; {DROP_ALL} COMMIT;"))?;
        }
    }
    conn.execute_batch(SCHEMA)?;
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('format', ?1) ON CONFLICT (key) DO NOTHING",
        [FORMAT.to_string()],
    )?;
    Ok(())
}

/// The op kinds stored in `ops.kind`, as in the wire `RowOp.Kind`.
pub(crate) const KIND_PUT: i64 = 1;
pub(crate) const KIND_REMOVE: i64 = 2;
