//! The replica: one SQLite file (WAL mode) holding the user's rows in typed
//! tables, plus the sync state in `_outpost_*` tables.
//!
//! ```text
//! _outpost_state   key/value: client_id, epoch, op_id, lsn, schema_version
//! _outpost_buckets bucket → op_id (cursor), checksum, count
//! _outpost_row_refs (bucket id, table id, key) → hash   which bucket holds
//!                  which row (see [`refs`]; `_outpost_rows` shows it by name)
//! _outpost_tables  name → definition (JSON)      the synced tables
//! _outpost_outbox  local changes not yet answered by the service (one op
//!                  group per local transaction: txid; seq = its first id)
//! _outpost_pending ops of groups the service applied, until a checkpoint
//!                  at or past their commit LSN arrives
//! _outpost_shadow  (tbl, key) → the server's values of a row with local
//!                  changes (NULL: the server has no such row)
//! _outpost_rejections  one row per op of every group the service refused
//! ```
//!
//! What the app sees of a row with local changes is its server values with
//! its pending ops (`_outpost_pending`, then `_outpost_outbox`, in id order)
//! applied on top; [`local`] rebuilds it whenever either side changes.
//!
//! Invariants:
//! - downloaded data is applied inside one SQLite transaction that commits only
//!   at a checkpoint whose checksums all match, so another connection reading
//!   the file only ever sees states that Postgres had;
//! - for every bucket, `_outpost_buckets.checksum` is the wrapping sum of the
//!   `hash` of its `_outpost_row_refs`, and `count` their number;
//! - a row is in its typed table exactly while at least one bucket holds it;
//! - dropping a `Replica` with data pending rolls that data back (SQLite does
//!   this when the connection closes inside a transaction);
//! - a row has a `_outpost_shadow` entry exactly while it has pending ops, and
//!   the entry follows what the buckets hold for it;
//! - the replica's own connection registers `outpost_capture()` as 0: nothing
//!   it writes is captured as a local change. As the capture triggers do
//!   nothing on it, each of its transactions runs with triggers off unless
//!   the file has triggers of its own (named without the reserved `_outpost_`
//!   prefix), which then fire for the data the replica writes as before;
//! - the replica's commits never copy the write-ahead log into the file
//!   themselves: a thread of its own does ([`wal`]), so a large sync is
//!   readable as soon as it commits.
//!
//! Values are stored as they arrive; SQLite stores a REAL NaN as NULL, which
//! does not affect checksums because they are computed from the values on the
//! wire.

mod apply;
mod capture;
mod data;
mod key;
mod local;
mod outbox;
mod refs;
#[cfg(test)]
mod refs_tests;
mod schema;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod throughput;
mod values;
mod wal;
#[cfg(test)]
mod write_tests;

pub(crate) use apply::CheckpointOutcome;
pub(crate) use capture::register as register_functions;
pub(crate) use data::PreparedBatch;
pub use outbox::{PendingGroup, Rejection, WriteStatus};
pub(crate) use outbox::{UploadLimits, WriteOutcome};

use crate::ClientError;
use outpost_proto::v1::BucketCursor;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use schema::TableDef;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The replica's own tables (with those of [`refs`]).
const INTERNAL_TABLES: &str = "
CREATE TABLE IF NOT EXISTS _outpost_state (
    key TEXT PRIMARY KEY,
    value
);
CREATE TABLE IF NOT EXISTS _outpost_buckets (
    bucket TEXT PRIMARY KEY,
    op_id INTEGER NOT NULL,
    checksum INTEGER NOT NULL,
    count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS _outpost_tables (
    name TEXT PRIMARY KEY,
    definition TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS _outpost_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    txid INTEGER NOT NULL,
    tbl TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    columns TEXT,
    before TEXT,
    hlc INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS _outpost_outbox_by_txid ON _outpost_outbox (txid);
CREATE INDEX IF NOT EXISTS _outpost_outbox_by_row ON _outpost_outbox (tbl, key);
DROP TRIGGER IF EXISTS _outpost_outbox_hlc;
CREATE TRIGGER _outpost_outbox_hlc AFTER INSERT ON _outpost_outbox BEGIN
    INSERT INTO _outpost_state (key, value) VALUES ('hlc', NEW.hlc)
        ON CONFLICT (key) DO UPDATE SET value = max(CAST(value AS INTEGER), excluded.value);
END;
CREATE TABLE IF NOT EXISTS _outpost_pending (
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    commit_lsn INTEGER NOT NULL,
    status TEXT NOT NULL,
    tbl TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    columns TEXT,
    before TEXT,
    hlc INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS _outpost_pending_by_row ON _outpost_pending (tbl, key);
CREATE INDEX IF NOT EXISTS _outpost_pending_by_lsn ON _outpost_pending (commit_lsn);
CREATE TABLE IF NOT EXISTS _outpost_shadow (
    tbl TEXT NOT NULL,
    key TEXT NOT NULL,
    data TEXT,
    PRIMARY KEY (tbl, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _outpost_rejections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER NOT NULL,
    op INTEGER NOT NULL,
    op_index INTEGER NOT NULL,
    tbl TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    reason_code TEXT NOT NULL,
    message TEXT NOT NULL,
    attempted TEXT,
    at TEXT NOT NULL
);
";

/// The last checkpoint applied to a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointState {
    /// The op id of the checkpoint (the cursor of every bucket it listed).
    pub op_id: u64,
    /// The Postgres LSN the replica's state corresponds to.
    pub lsn: u64,
    /// The service store epoch the cursors belong to.
    pub epoch: String,
}

/// What the replica holds for one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketState {
    /// The bucket name, e.g. `todos_by_list[42]`.
    pub bucket: String,
    /// The op id up to which the bucket is applied (its cursor).
    pub op_id: u64,
    /// The wrapping sum of the hashes of the rows the bucket holds.
    pub checksum: u64,
    /// The number of rows the bucket holds.
    pub count: u64,
}

/// A synced table and how many rows the replica holds in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableState {
    /// The table name.
    pub name: String,
    /// Rows in the typed table.
    pub rows: u64,
}

/// A bucket's checksum and row count as kept while data is applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BucketAcc {
    pub(crate) op_id: u64,
    pub(crate) checksum: u64,
    pub(crate) count: u64,
}

/// What changed in the open transaction, written out at the checkpoint.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// Buckets whose cursor, checksum or count changed.
    dirty: HashSet<String>,
    /// Buckets reset in this transaction (deleted before `dirty` is written).
    dropped: HashSet<String>,
    /// Row operations applied in this transaction.
    rows: u64,
    /// Whether `_outpost_shadow` had entries when the transaction began
    /// (only then can incoming data touch rows with local changes).
    shadow: bool,
    /// Rows with local changes whose server values or pending ops changed:
    /// rebuilt before the commit.
    touched: BTreeSet<(String, String)>,
    /// Buckets that held some of the rows of a run of PUTs: their rows are
    /// written one by one until the commit.
    no_bulk: HashSet<String>,
}

/// A replica file, opened for syncing or for reading.
pub struct Replica {
    conn: Connection,
    path: PathBuf,
    /// Random id of this installation, created with the file.
    client_id: String,
    /// Synced tables by name (from `_outpost_tables` plus the current schema).
    tables: HashMap<String, TableDef>,
    /// Every bucket's state including pending changes; reloaded on rollback.
    buckets: HashMap<String, BucketAcc>,
    /// Bucket and table ids of `_outpost_row_refs`; reloaded on rollback.
    ids: refs::Ids,
    /// Whether this connection currently compiles triggers.
    triggers: bool,
    /// `Some` while a transaction is open.
    pending: Option<Pending>,
    /// The `PRAGMA data_version` at which the outbox was last found empty:
    /// until another connection commits, it still is (this connection never
    /// writes to it), and polling it reads nothing.
    outbox_empty_at: Option<i64>,
    /// Checkpoints the file's log beside this connection's commits (`None`
    /// when read-only). Declared after `conn`, so dropped after it.
    _checkpointer: Option<wal::Checkpointer>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("path", &self.path)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// Opens (creating if needed) a replica file: WAL mode, the capture functions
/// (`capture` says whether writes through this connection are recorded), the
/// `_outpost_` tables, and a client id on first use.
pub(crate) fn open_file(
    path: &Path,
    capture: bool,
    busy_timeout: Duration,
) -> Result<(Connection, String), ClientError> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(busy_timeout)?;
    capture::register(&mut conn, capture)?;

    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), %mode, "the replica could not switch to WAL mode");
    }
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA cache_size = -32768; PRAGMA temp_store = MEMORY;
         PRAGMA journal_size_limit = 67108864;",
    )?;
    conn.set_prepared_statement_cache_capacity(256);
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let created = conn
        .execute_batch(INTERNAL_TABLES)
        .map_err(ClientError::from)
        .and_then(|()| refs::ensure(&conn))
        .and_then(|()| {
            let id: Option<String> = conn
                .query_row(
                    "SELECT value FROM _outpost_state WHERE key = 'client_id'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            match id {
                Some(id) => Ok(id),
                None => {
                    let id = format!("{:032x}", rand::random::<u128>());
                    conn.execute(
                        "INSERT INTO _outpost_state (key, value) VALUES ('client_id', ?1)",
                        [&id],
                    )?;
                    Ok(id)
                }
            }
        });
    let client_id = match created {
        Ok(id) => {
            conn.execute_batch("COMMIT")?;
            id
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    };
    Ok((conn, client_id))
}

/// Reads an unsigned value stored as SQLite's signed 64-bit integer.
fn get_u64(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    row.get::<_, i64>(idx).map(|v| v as u64)
}

impl Replica {
    /// Opens (creating if needed) the replica at `path` for syncing: WAL mode,
    /// the `_outpost_` tables, and a client id on first use. Its connection
    /// does not capture writes; apps write through [`crate::LocalDb`].
    pub fn open(path: &Path) -> Result<Self, ClientError> {
        let (mut conn, client_id) = open_file(path, false, Duration::from_secs(10))?;
        let checkpointer = wal::Checkpointer::start(&mut conn, path)?;
        let mut replica = Replica {
            conn,
            path: path.to_path_buf(),
            client_id,
            tables: HashMap::new(),
            buckets: HashMap::new(),
            ids: refs::Ids::default(),
            triggers: true,
            pending: None,
            outbox_empty_at: None,
            _checkpointer: Some(checkpointer),
        };
        replica.reload()?;
        Ok(replica)
    }

    /// Opens an existing replica read-only (for inspection while another
    /// process syncs it). Fails if the file holds no replica.
    pub fn open_read_only(path: &Path) -> Result<Self, ClientError> {
        if !path.exists() {
            return Err(ClientError::NotAReplica {
                path: path.to_path_buf(),
                reason: "the file does not exist".into(),
            });
        }
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // Statements on synced tables compile their triggers, which call these.
        capture::register(&mut conn, false)?;
        let tables: i64 = conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type IN ('table', 'view') AND name IN
             ('_outpost_state', '_outpost_buckets', '_outpost_rows', '_outpost_tables')",
            [],
            |r| r.get(0),
        )?;
        if tables != 4 {
            return Err(ClientError::NotAReplica {
                path: path.to_path_buf(),
                reason: "the _outpost_ tables are missing".into(),
            });
        }
        let client_id: String = conn
            .query_row(
                "SELECT value FROM _outpost_state WHERE key = 'client_id'",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or_default();
        let mut replica = Replica {
            conn,
            path: path.to_path_buf(),
            client_id,
            tables: HashMap::new(),
            buckets: HashMap::new(),
            ids: refs::Ids::default(),
            triggers: true,
            pending: None,
            outbox_empty_at: None,
            _checkpointer: None,
        };
        replica.reload()?;
        Ok(replica)
    }

    /// The SQLite connection, for reading the typed tables. Writes through it
    /// are not captured (it is the sync writer's kind of connection): write
    /// with [`crate::LocalDb`].
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The file this replica lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The random id of this installation, sent to the service for its logs.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The last checkpoint applied, or `None` before the first one.
    pub fn checkpoint(&self) -> Result<Option<CheckpointState>, ClientError> {
        let op_id = self.state_u64("op_id")?;
        let Some(op_id) = op_id else { return Ok(None) };
        Ok(Some(CheckpointState {
            op_id,
            lsn: self.state_u64("lsn")?.unwrap_or(0),
            epoch: self.state_text("epoch")?.unwrap_or_default(),
        }))
    }

    /// The schema version of the last `Schema` applied.
    pub fn schema_version(&self) -> Result<Option<String>, ClientError> {
        self.state_text("schema_version")
    }

    /// Every bucket the replica holds, by name.
    pub fn buckets(&self) -> Result<Vec<BucketState>, ClientError> {
        let mut stmt = self.conn.prepare(
            "SELECT bucket, op_id, checksum, count FROM _outpost_buckets ORDER BY bucket",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(BucketState {
                bucket: r.get(0)?,
                op_id: get_u64(r, 1)?,
                checksum: get_u64(r, 2)?,
                count: get_u64(r, 3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every synced table with its row count, by name.
    pub fn tables(&self) -> Result<Vec<TableState>, ClientError> {
        let mut names: Vec<&String> = self.tables.keys().collect();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let sql = format!("SELECT count(*) FROM {}", schema::quote_ident(name));
            let rows: Option<i64> = self
                .conn
                .query_row(&sql, [], |r| r.get(0))
                .optional()
                .or_else(|e| match e {
                    // The table may not exist yet in a read-only view.
                    rusqlite::Error::SqliteFailure(..) => Ok(None),
                    e => Err(e),
                })?;
            out.push(TableState {
                name: name.clone(),
                rows: rows.unwrap_or(0) as u64,
            });
        }
        Ok(out)
    }

    /// The epoch and cursors to send when connecting (committed state only).
    pub(crate) fn request_state(&self) -> Result<(String, Vec<BucketCursor>), ClientError> {
        let epoch = self.state_text("epoch")?.unwrap_or_default();
        let mut cursors: Vec<BucketCursor> = self
            .buckets
            .iter()
            .map(|(bucket, acc)| BucketCursor {
                bucket: bucket.clone(),
                op_id: acc.op_id,
            })
            .collect();
        cursors.sort_by(|a, b| a.bucket.cmp(&b.bucket));
        Ok((epoch, cursors))
    }

    fn state_value(&self, key: &str) -> Result<Option<rusqlite::types::Value>, ClientError> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM _outpost_state WHERE key = ?1",
                [key],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn state_u64(&self, key: &str) -> Result<Option<u64>, ClientError> {
        use rusqlite::types::Value as V;
        match self.state_value(key)? {
            None | Some(V::Null) => Ok(None),
            Some(V::Integer(i)) => Ok(Some(i as u64)),
            Some(other) => Err(ClientError::CorruptReplica(format!(
                "_outpost_state.{key} is {other:?}, expected an integer"
            ))),
        }
    }

    fn state_text(&self, key: &str) -> Result<Option<String>, ClientError> {
        use rusqlite::types::Value as V;
        match self.state_value(key)? {
            None | Some(V::Null) => Ok(None),
            Some(V::Text(s)) => Ok(Some(s)),
            Some(other) => Err(ClientError::CorruptReplica(format!(
                "_outpost_state.{key} is {other:?}, expected text"
            ))),
        }
    }

    /// Reloads the in-memory table definitions and bucket states from the
    /// committed database.
    fn reload(&mut self) -> Result<(), ClientError> {
        self.tables = schema::load_tables(&self.conn)?
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        let mut stmt = self
            .conn
            .prepare("SELECT bucket, op_id, checksum, count FROM _outpost_buckets")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                BucketAcc {
                    op_id: get_u64(r, 1)?,
                    checksum: get_u64(r, 2)?,
                    count: get_u64(r, 3)?,
                },
            ))
        })?;
        self.buckets = rows.collect::<Result<_, _>>()?;
        self.ids = refs::Ids::load(&self.conn)?;
        Ok(())
    }
}
