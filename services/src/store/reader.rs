//! Read access to the store for client streams: a small pool of read-only
//! SQLite connections, and consistent read transactions over them.
//!
//! Invariant: everything a [`ReadTxn`] returns comes from one SQLite read
//! snapshot, so the checkpoint it reports and the ops and checksums it
//! returns describe the same replicated transaction boundary.

use super::sums::read_summary;
use super::{KIND_REMOVE, StoreError, open_connection};
use crate::lsn::Lsn;
use outpost_proto::v1::RowOp;
use prost::Message;
use rusqlite::OptionalExtension;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The newest checkpoint a read snapshot holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub epoch: String,
    pub op_id: u64,
    pub lsn: Lsn,
}

/// One bucket's summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BucketInfo {
    pub checksum: u64,
    pub count: u64,
    pub last_op_id: u64,
    /// Tombstones at or below this op id were dropped: a cursor below it
    /// cannot be caught up and must be reset.
    pub horizon: u64,
}

/// A pool of read-only connections to the store database.
pub struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<rusqlite::Connection>>,
    /// How many idle connections to keep.
    max_idle: usize,
}

impl ReaderPool {
    pub fn new(path: &Path, max_idle: usize) -> Self {
        ReaderPool {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    /// Runs `f` inside one read transaction. Blocking: call it from a
    /// blocking thread.
    pub fn read<R>(
        &self,
        f: impl FnOnce(&ReadTxn<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let conn = self.idle.lock().map(|mut idle| idle.pop()).unwrap_or(None);
        let conn = match conn {
            Some(c) => c,
            None => open_connection(&self.path, true)?,
        };
        conn.execute_batch("BEGIN DEFERRED")?;
        let result = f(&ReadTxn { conn: &conn });
        let end = conn.execute_batch("COMMIT");
        if end.is_ok()
            && let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.max_idle
        {
            idle.push(conn);
        }
        result
    }
}

/// A consistent read of the store.
pub struct ReadTxn<'a> {
    pub(super) conn: &'a rusqlite::Connection,
}

impl ReadTxn<'_> {
    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?)
    }

    /// The checkpoint this snapshot is at.
    pub fn checkpoint(&self) -> Result<StoredCheckpoint, StoreError> {
        let op_id = match self.meta("last_op_id")? {
            None => 0,
            Some(v) => v.parse().map_err(|_| StoreError::Meta {
                key: "last_op_id",
                value: v,
            })?,
        };
        let lsn = match self.meta("durable_lsn")? {
            None => Lsn::ZERO,
            Some(v) => v.parse().map_err(|_| StoreError::Meta {
                key: "durable_lsn",
                value: v,
            })?,
        };
        Ok(StoredCheckpoint {
            epoch: self.meta("epoch")?.unwrap_or_default(),
            op_id,
            lsn,
        })
    }

    /// A bucket's summary; an empty bucket that never had a row is all zero.
    pub fn bucket(&self, bucket: &str) -> Result<BucketInfo, StoreError> {
        let info: Option<(i64, i64)> = self
            .conn
            .prepare_cached("SELECT id, horizon FROM buckets WHERE bucket = ?1")?
            .query_row([bucket], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((id, horizon)) = info else {
            return Ok(BucketInfo::default());
        };
        let summary = read_summary(self.conn, id, bucket)?;
        let horizon = horizon as u64;
        Ok(BucketInfo {
            checksum: summary.checksum,
            count: summary.count as u64,
            last_op_id: summary.last_op_id,
            horizon,
        })
    }

    /// As [`ReadTxn::ops_since`], with each op as the store holds it: its
    /// id and its encoding without the id (see `outpost_proto::frame`).
    pub fn encoded_ops_since(
        &self,
        bucket: &str,
        cursor: u64,
        mut f: impl FnMut(u64, &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT op_id, kind, op FROM ops
             WHERE bucket = (SELECT id FROM buckets WHERE bucket = ?1) AND op_id > ?2
             ORDER BY op_id",
        )?;
        let mut rows = stmt.query(rusqlite::params![bucket, cursor as i64])?;
        while let Some(row) = rows.next()? {
            if cursor == 0 && row.get::<_, i64>(1)? == KIND_REMOVE {
                continue;
            }
            let op_id = row.get::<_, i64>(0)? as u64;
            let bytes = row.get_ref(2)?.as_blob().map_err(rusqlite::Error::from)?;
            if !f(op_id, bytes) {
                break;
            }
        }
        Ok(())
    }

    /// Calls `f` with every op of `bucket` after `cursor`, in op id order.
    /// From cursor zero removes are skipped (the client holds nothing).
    /// Stops early when `f` returns false.
    pub fn ops_since(
        &self,
        bucket: &str,
        cursor: u64,
        mut f: impl FnMut(RowOp) -> bool,
    ) -> Result<(), StoreError> {
        let mut damaged = None;
        self.encoded_ops_since(bucket, cursor, |op_id, bytes| match RowOp::decode(bytes) {
            Ok(mut op) => {
                op.op_id = op_id;
                f(op)
            }
            Err(e) => {
                damaged = Some(e);
                false
            }
        })?;
        damaged.map_or(Ok(()), |e| Err(e.into()))
    }
}
