//! The single writer of the store: applies row changes to the mirror and the
//! bucket logs inside one SQLite transaction, which it commits only at a
//! replicated transaction boundary (possibly several replicated transactions
//! at once: group commit).

use super::{KIND_PUT, KIND_REMOVE, StoreError, TextRow, open_connection};
use crate::lsn::Lsn;
use outpost_proto::v1::RowOp;
use outpost_proto::{bucket_checksum_add, bucket_checksum_sub};
use prost::Message;
use rusqlite::{OptionalExtension, params};
use std::path::Path;

/// What the store holds, as of its last commit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreState {
    /// Random id of this store's content; changes whenever it is rebuilt, so
    /// that clients' cursors from another content are never trusted.
    pub epoch: String,
    /// The compiled schema version the content was built with.
    pub schema_version: String,
    /// The replication slot the content follows.
    pub slot: String,
    /// Commit LSN of the last replicated transaction stored.
    pub last_commit_lsn: Lsn,
    /// LSN up to which everything is stored (commit end, or an idle position).
    pub durable_lsn: Lsn,
    /// The highest op id assigned.
    pub last_op_id: u64,
}

impl StoreState {
    /// True when the store has content (it was initialised from a snapshot).
    pub fn is_initialised(&self) -> bool {
        !self.epoch.is_empty()
    }
}

/// The one writer of a store.
pub struct StoreWriter {
    pub(super) conn: rusqlite::Connection,
    /// The committed state plus what the open transaction has added.
    state: StoreState,
    /// Whether a SQLite transaction is open.
    in_txn: bool,
    /// What the writes since the last [`StoreWriter::take_touched`] changed,
    /// so that only the streams holding it need to look.
    touched: Touched,
}

/// The buckets and membership keys a run of store writes changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    pub buckets: std::collections::HashSet<String>,
    /// `(membership, user key)` pairs whose membership entries changed.
    pub members: std::collections::HashSet<(usize, String)>,
}

fn meta_get(conn: &rusqlite::Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

fn meta_set(conn: &rusqlite::Connection, key: &str, value: &str) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")?
        .execute([key, value])?;
    Ok(())
}

fn parse_lsn(key: &'static str, value: Option<String>) -> Result<Lsn, StoreError> {
    match value {
        None => Ok(Lsn::ZERO),
        Some(v) => v.parse().map_err(|_| StoreError::Meta { key, value: v }),
    }
}

/// The committed state recorded in `meta`, with `last_op_id` as given.
fn committed_state(conn: &rusqlite::Connection, last_op_id: u64) -> Result<StoreState, StoreError> {
    Ok(StoreState {
        epoch: meta_get(conn, "epoch")?.unwrap_or_default(),
        schema_version: meta_get(conn, "schema_version")?.unwrap_or_default(),
        slot: meta_get(conn, "slot")?.unwrap_or_default(),
        last_commit_lsn: parse_lsn("last_commit_lsn", meta_get(conn, "last_commit_lsn")?)?,
        durable_lsn: parse_lsn("durable_lsn", meta_get(conn, "durable_lsn")?)?,
        last_op_id,
    })
}

impl StoreWriter {
    /// Opens (creating if needed) the store database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = open_connection(path, false)?;
        let last_op_id = match meta_get(&conn, "last_op_id")? {
            None => 0,
            Some(v) => v.parse().map_err(|_| StoreError::Meta {
                key: "last_op_id",
                value: v,
            })?,
        };
        let state = committed_state(&conn, last_op_id)?;
        Ok(StoreWriter {
            conn,
            state,
            in_txn: false,
            touched: Touched::default(),
        })
    }

    /// The state including the open transaction's changes.
    pub fn state(&self) -> &StoreState {
        &self.state
    }

    /// Empties the store and gives it a new epoch, for content that will be
    /// loaded from a new snapshot of `slot`. Left open: commit with
    /// [`StoreWriter::commit`] once the snapshot is loaded.
    pub fn reinitialise(
        &mut self,
        schema_version: &str,
        slot: &str,
        epoch: &str,
    ) -> Result<(), StoreError> {
        self.begin()?;
        self.conn.execute_batch(
            "DELETE FROM mirror; DELETE FROM bucket_ops; DELETE FROM buckets; DELETE FROM meta;
             DELETE FROM members; DELETE FROM member_versions; DELETE FROM links;",
        )?;
        self.state = StoreState {
            epoch: epoch.to_string(),
            schema_version: schema_version.to_string(),
            slot: slot.to_string(),
            last_commit_lsn: Lsn::ZERO,
            durable_lsn: Lsn::ZERO,
            // Op ids keep growing across epochs: a stale cursor is never
            // mistaken for a newer one.
            last_op_id: self.state.last_op_id,
        };
        meta_set(&self.conn, "epoch", epoch)?;
        meta_set(&self.conn, "schema_version", schema_version)?;
        meta_set(&self.conn, "slot", slot)?;
        Ok(())
    }

    /// Opens the store transaction if none is open.
    pub fn begin(&mut self) -> Result<(), StoreError> {
        if !self.in_txn {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.in_txn = true;
        }
        Ok(())
    }

    /// Whether a store transaction is open.
    pub fn in_transaction(&self) -> bool {
        self.in_txn
    }

    /// Records that everything through the replicated transaction committed
    /// at `commit_lsn` (ending at `end_lsn`) is in the open store transaction.
    pub fn mark_commit(&mut self, commit_lsn: Lsn, end_lsn: Lsn) {
        self.state.last_commit_lsn = commit_lsn;
        self.state.durable_lsn = self.state.durable_lsn.max(end_lsn);
    }

    /// Records an idle position: everything below `lsn` is stored.
    pub fn mark_idle(&mut self, lsn: Lsn) -> Result<(), StoreError> {
        if lsn > self.state.durable_lsn {
            self.state.durable_lsn = lsn;
            if !self.in_txn {
                meta_set(&self.conn, "durable_lsn", &lsn.to_string())?;
            }
        }
        Ok(())
    }

    /// Commits the open transaction (if any) with the state's LSNs and op id.
    pub fn commit(&mut self) -> Result<(), StoreError> {
        if !self.in_txn {
            return Ok(());
        }
        meta_set(
            &self.conn,
            "last_commit_lsn",
            &self.state.last_commit_lsn.to_string(),
        )?;
        meta_set(
            &self.conn,
            "durable_lsn",
            &self.state.durable_lsn.to_string(),
        )?;
        meta_set(&self.conn, "last_op_id", &self.state.last_op_id.to_string())?;
        self.conn.execute_batch("COMMIT")?;
        self.in_txn = false;
        Ok(())
    }

    /// The mirrored row and the buckets it is in.
    pub fn mirror_get(
        &mut self,
        tbl: &str,
        key: &str,
    ) -> Result<Option<(TextRow, Vec<String>)>, StoreError> {
        let found: Option<(Vec<u8>, String)> = self
            .conn
            .prepare_cached("SELECT row, buckets FROM mirror WHERE tbl = ?1 AND key = ?2")?
            .query_row([tbl, key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        match found {
            None => Ok(None),
            Some((row, buckets)) => Ok(Some((TextRow::decode(&row)?, split_buckets(&buckets)))),
        }
    }

    pub fn mirror_put(
        &mut self,
        tbl: &str,
        key: &str,
        row: &TextRow,
        buckets: &[String],
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO mirror (tbl, key, row, buckets) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (tbl, key) DO UPDATE SET row = excluded.row, buckets = excluded.buckets",
            )?
            .execute(params![tbl, key, row.encode(), buckets.join("\n")])?;
        Ok(())
    }

    pub fn mirror_delete(&mut self, tbl: &str, key: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM mirror WHERE tbl = ?1 AND key = ?2")?
            .execute([tbl, key])?;
        Ok(())
    }

    /// Every mirrored row of a table: (key, buckets).
    pub fn mirror_keys(&mut self, tbl: &str) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key, buckets FROM mirror WHERE tbl = ?1")?;
        let rows = stmt.query_map([tbl], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (key, buckets) = row?;
            out.push((key, split_buckets(&buckets)));
        }
        Ok(out)
    }

    pub(super) fn next_op_id(&mut self) -> u64 {
        self.state.last_op_id += 1;
        self.state.last_op_id
    }

    /// The previous op of a row in a bucket: (kind, hash).
    fn previous_op(
        &mut self,
        bucket: &str,
        tbl: &str,
        key: &str,
    ) -> Result<Option<(i64, u64)>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT kind, hash FROM bucket_ops WHERE bucket = ?1 AND tbl = ?2 AND key = ?3",
            )?
            .query_row([bucket, tbl, key], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .optional()?)
    }

    /// Stores `op` (built with `op_id` 0: the id is assigned here and set on
    /// the op when it is read back).
    fn write_op(
        &mut self,
        bucket: &str,
        tbl: &str,
        key: &str,
        kind: i64,
        op: &RowOp,
        hash: u64,
    ) -> Result<u64, StoreError> {
        let op_id = self.next_op_id();
        if !self.touched.buckets.contains(bucket) {
            self.touched.buckets.insert(bucket.to_string());
        }
        let bytes = op.encode_to_vec();
        self.conn
            .prepare_cached(
                "INSERT INTO bucket_ops (bucket, tbl, key, op_id, kind, op, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (bucket, tbl, key) DO UPDATE SET op_id = excluded.op_id, kind = excluded.kind,
                    op = excluded.op, hash = excluded.hash",
            )?
            .execute(params![bucket, tbl, key, op_id as i64, kind, bytes, hash as i64])?;
        Ok(op_id)
    }

    fn adjust_bucket(
        &mut self,
        bucket: &str,
        add: Option<u64>,
        sub: Option<u64>,
        count_delta: i64,
        op_id: u64,
    ) -> Result<(), StoreError> {
        let current: Option<(i64, i64)> = self
            .conn
            .prepare_cached("SELECT checksum, count FROM buckets WHERE bucket = ?1")?
            .query_row([bucket], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let (mut checksum, count) = current.map(|(c, n)| (c as u64, n)).unwrap_or((0, 0));
        if let Some(h) = sub {
            checksum = bucket_checksum_sub(checksum, h);
        }
        if let Some(h) = add {
            checksum = bucket_checksum_add(checksum, h);
        }
        self.conn
            .prepare_cached(
                "INSERT INTO buckets (bucket, checksum, count, last_op_id, horizon) VALUES (?1, ?2, ?3, ?4, 0)
                 ON CONFLICT (bucket) DO UPDATE SET checksum = excluded.checksum, count = excluded.count,
                    last_op_id = excluded.last_op_id",
            )?
            .execute(params![bucket, checksum as i64, count + count_delta, op_id as i64])?;
        Ok(())
    }

    /// Puts a row version into a bucket (insert, or replace its previous op).
    pub fn bucket_put(
        &mut self,
        bucket: &str,
        tbl: &str,
        key: &str,
        op: &RowOp,
        hash: u64,
    ) -> Result<(), StoreError> {
        let previous = self.previous_op(bucket, tbl, key)?;
        let (sub, delta) = match previous {
            Some((KIND_PUT, old)) => (Some(old), 0),
            _ => (None, 1),
        };
        let op_id = self.write_op(bucket, tbl, key, KIND_PUT, op, hash)?;
        self.adjust_bucket(bucket, Some(hash), sub, delta, op_id)
    }

    /// Removes a row from a bucket, leaving a tombstone for resuming clients.
    pub fn bucket_remove(
        &mut self,
        bucket: &str,
        tbl: &str,
        key: &str,
        op: &RowOp,
    ) -> Result<(), StoreError> {
        let Some((KIND_PUT, old)) = self.previous_op(bucket, tbl, key)? else {
            return Ok(());
        };
        let op_id = self.write_op(bucket, tbl, key, KIND_REMOVE, op, 0)?;
        self.adjust_bucket(bucket, None, Some(old), -1, op_id)
    }

    /// Drops tombstones at or below `horizon` op id and records the horizon on
    /// every bucket that lost one, so older cursors get a reset.
    pub fn compact_tombstones(&mut self, horizon: u64) -> Result<usize, StoreError> {
        self.begin()?;
        self.conn
            .prepare_cached(
                "UPDATE buckets SET horizon = ?1 WHERE bucket IN
                 (SELECT DISTINCT bucket FROM bucket_ops WHERE kind = ?2 AND op_id <= ?1)",
            )?
            .execute(params![horizon as i64, KIND_REMOVE])?;
        let n = self
            .conn
            .prepare_cached("DELETE FROM bucket_ops WHERE kind = ?1 AND op_id <= ?2")?
            .execute(params![KIND_REMOVE, horizon as i64])?;
        Ok(n)
    }

    /// What was changed since the last call (call it after a commit).
    pub fn take_touched(&mut self) -> Touched {
        std::mem::take(&mut self.touched)
    }

    /// Records that the entries of `(membership, user_key)` changed.
    pub(super) fn touched_member(&mut self, membership: usize, user_key: &str) {
        self.touched
            .members
            .insert((membership, user_key.to_string()));
    }

    /// Rolls back the open store transaction, if any, and restores the state
    /// from what is committed.
    pub fn rollback(&mut self) -> Result<(), StoreError> {
        self.touched = Touched::default();
        if self.in_txn {
            self.conn.execute_batch("ROLLBACK")?;
            self.in_txn = false;
        }
        // Op ids already handed out are never reused.
        self.state = committed_state(&self.conn, self.state.last_op_id)?;
        Ok(())
    }
}

fn split_buckets(s: &str) -> Vec<String> {
    if s.is_empty() {
        Vec::new()
    } else {
        s.split('\n').map(str::to_string).collect()
    }
}
