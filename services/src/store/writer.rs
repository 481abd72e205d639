//! The single writer of the store: applies row changes to the mirror and the
//! bucket logs inside one SQLite transaction, which it commits only at a
//! replicated transaction boundary (possibly several replicated transactions
//! at once: group commit).
//!
//! The caller tells the writer what a row's previous op in a bucket is: the
//! mirror records, for each bucket a row is in, the id of its PUT op there,
//! and the hash of that version (one hash: every bucket holds the same
//! version), so no op is read back to replace it or to keep the checksums.
//! Tombstones are found through the `tombstones` table, which is only looked
//! at when it may hold something. Bucket summaries are kept in memory
//! ([`super::sums`]) and written once per commit.

use super::sums::BucketSums;
use super::{KIND_PUT, KIND_REMOVE, StoreError, open_connection};
use crate::lsn::Lsn;
use outpost_proto::{bucket_checksum_add, bucket_checksum_sub};
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
    /// Bucket summaries including the open transaction's ops.
    sums: BucketSums,
    /// False only when the `tombstones` table is known to be empty: a row
    /// entering a bucket then has no tombstone there to replace.
    tombstones_maybe: bool,
    /// Checkpoints the log beside the commits. Declared after `conn`, so
    /// dropped after it.
    _checkpointer: super::checkpointer::Checkpointer,
}

/// Whether the `tombstones` table holds anything.
fn tombstones_exist(conn: &rusqlite::Connection) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM tombstones)")?
        .query_row([], |r| r.get(0))?)
}

/// The most op bytes a run of store writes keeps in memory for
/// [`Touched`]; past it the ops are dropped (`ops_dropped`) and streams read
/// the store instead.
const TOUCHED_OP_BYTES: usize = 8 << 20;

/// What a run of store writes (one store commit) changed: the buckets, with
/// the ops written to each and its summary after them, and the membership
/// keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// By bucket name (foldhash, seeded per process: it is looked up for
    /// every op written and by every stream it reaches).
    pub buckets: std::collections::HashMap<String, BucketChange, foldhash::fast::RandomState>,
    /// `(membership, user key)` pairs whose membership entries changed.
    pub members: std::collections::HashSet<(usize, String)>,
    /// The commit wrote more than [`TOUCHED_OP_BYTES`] of ops: every
    /// `BucketChange::ops` is empty, and only the bucket names (and
    /// summaries) say what changed.
    pub ops_dropped: bool,
    /// Bytes of the ops held.
    op_bytes: usize,
    /// About how much memory all of it takes (ops, bucket names, keys).
    bytes: usize,
}

/// One bucket's part of a store commit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BucketChange {
    /// The ops written, in op id order (empty when `Touched::ops_dropped`).
    /// An op replaced later in the same commit is still listed: applying
    /// them in order gives the bucket's state after the commit.
    pub ops: Vec<ChangedOp>,
    /// The bucket's checksum and row count after the commit.
    pub checksum: u64,
    pub count: u64,
}

/// An op as the store holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangedOp {
    pub op_id: u64,
    /// A REMOVE op (else a PUT).
    pub remove: bool,
    /// The encoded `RowOp`, with `op_id` 0.
    pub op: Vec<u8>,
}

#[cfg(test)]
impl Touched {
    /// A commit that touched `buckets` (without ops) and `members`.
    pub(crate) fn of(buckets: &[&str], members: &[(usize, &str)]) -> Touched {
        Touched {
            buckets: buckets
                .iter()
                .map(|b| (b.to_string(), BucketChange::default()))
                .collect(),
            members: members.iter().map(|(m, k)| (*m, k.to_string())).collect(),
            ..Touched::default()
        }
    }
}

/// What an entry of a map or a held op costs besides its own bytes, about.
const ENTRY_OVERHEAD: usize = 64;

impl Touched {
    /// About how much memory this takes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn record_op(&mut self, bucket: &str, op_id: u64, remove: bool, op: &[u8]) {
        if !self.buckets.contains_key(bucket) {
            self.bytes += bucket.len() + ENTRY_OVERHEAD;
            self.buckets
                .insert(bucket.to_string(), BucketChange::default());
        }
        if self.ops_dropped {
            return;
        }
        let cost = op.len() + ENTRY_OVERHEAD;
        self.op_bytes += cost;
        self.bytes += cost;
        if self.op_bytes > TOUCHED_OP_BYTES {
            self.ops_dropped = true;
            self.bytes -= self.op_bytes;
            self.op_bytes = 0;
            for change in self.buckets.values_mut() {
                change.ops = Vec::new();
            }
            return;
        }
        if let Some(change) = self.buckets.get_mut(bucket) {
            change.ops.push(ChangedOp {
                op_id,
                remove,
                op: op.to_vec(),
            });
        }
    }
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
        let mut conn = open_connection(path, false)?;
        let checkpointer = super::checkpointer::Checkpointer::start(&mut conn, path)?;
        let last_op_id = match meta_get(&conn, "last_op_id")? {
            None => 0,
            Some(v) => v.parse().map_err(|_| StoreError::Meta {
                key: "last_op_id",
                value: v,
            })?,
        };
        let state = committed_state(&conn, last_op_id)?;
        let tombstones_maybe = tombstones_exist(&conn)?;
        let mut sums = BucketSums::default();
        sums.preload(&conn)?;
        Ok(StoreWriter {
            conn,
            state,
            in_txn: false,
            touched: Touched::default(),
            sums,
            tombstones_maybe,
            _checkpointer: checkpointer,
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
        self.sums.clear();
        self.conn.execute_batch(
            "DELETE FROM mirror; DELETE FROM ops; DELETE FROM tombstones; DELETE FROM buckets;
             DELETE FROM bucket_sums;
             DELETE FROM meta WHERE key <> 'format';
             DELETE FROM members; DELETE FROM member_versions; DELETE FROM links;",
        )?;
        self.tombstones_maybe = false;
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
        // Every bucket the transaction wrote to has its summary in memory
        // (entries are only dropped between transactions).
        for (bucket, change) in self.touched.buckets.iter_mut() {
            if let Some(sum) = self.sums.get(bucket) {
                change.checksum = sum.summary.checksum;
                change.count = sum.summary.count.max(0) as u64;
            }
        }
        self.sums.flush(&self.conn)?;
        self.sums.trim();
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

    /// Copies the write-ahead log into the database file and empties it.
    /// After a snapshot load the log holds the whole content: readers would
    /// look every page up in it, and the next commits would copy it back
    /// while streams read. Readers that hold a snapshot keep what they
    /// need; the log is then emptied later, as usual.
    pub fn truncate_wal(&mut self) -> Result<(), StoreError> {
        // Readers are not waited for: what they still need stays.
        self.conn.busy_timeout(std::time::Duration::ZERO)?;
        let busy = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            });
        self.conn.busy_timeout(super::BUSY_TIMEOUT)?;
        if busy? != 0 {
            tracing::debug!("readers kept the store's log from being emptied");
        }
        Ok(())
    }

    pub(super) fn next_op_id(&mut self) -> u64 {
        self.state.last_op_id += 1;
        self.state.last_op_id
    }

    /// Takes `n` consecutive op ids; returns the first.
    pub(super) fn reserve_op_ids(&mut self, n: u64) -> u64 {
        let first = self.state.last_op_id + 1;
        self.state.last_op_id += n;
        first
    }

    /// Stores an op (encoded `RowOp` with `op_id` 0: the reader sets the id
    /// when it reads the op back) under id `op_id`, in the bucket with id
    /// `bucket_id`.
    fn insert_op(
        &mut self,
        bucket: &str,
        bucket_id: i64,
        kind: i64,
        op: &[u8],
        op_id: u64,
    ) -> Result<(), StoreError> {
        self.touched
            .record_op(bucket, op_id, kind == KIND_REMOVE, op);
        self.conn
            .prepare_cached("INSERT INTO ops (op_id, bucket, kind, op) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![op_id as i64, bucket_id, kind, op])?;
        Ok(())
    }

    fn delete_op(&mut self, op_id: u64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM ops WHERE op_id = ?1")?
            .execute([op_id as i64])?;
        Ok(())
    }

    /// Drops the tombstone of a row in a bucket, if it has one.
    fn drop_tombstone(&mut self, bucket: &str, tbl: &str, key: &str) -> Result<(), StoreError> {
        if !self.tombstones_maybe {
            return Ok(());
        }
        let found: Option<i64> = self
            .conn
            .prepare_cached(
                "DELETE FROM tombstones WHERE bucket = ?1 AND tbl = ?2 AND key = ?3 RETURNING op_id",
            )?
            .query_row([bucket, tbl, key], |r| r.get(0))
            .optional()?;
        if let Some(op_id) = found {
            self.delete_op(op_id as u64)?;
        }
        Ok(())
    }

    /// Puts a row version (encoded `RowOp`, hash `hash`) into a bucket under
    /// op id `op_id`. `replaces` is the row's PUT op in that bucket (its id
    /// and hash) when the row is in it (the mirror lists the bucket), None
    /// when it is not: then a tombstone it left there is replaced.
    #[allow(clippy::too_many_arguments)] // one op's fields, passed through from ingest
    pub(super) fn put_op(
        &mut self,
        bucket: &str,
        tbl: &str,
        key: &str,
        op: &[u8],
        hash: u64,
        replaces: Option<(u64, u64)>,
        op_id: u64,
    ) -> Result<(), StoreError> {
        match replaces {
            Some((old_id, _)) => self.delete_op(old_id)?,
            None => self.drop_tombstone(bucket, tbl, key)?,
        }
        let bucket_id = self.sums.update(&self.conn, bucket, |sum| {
            match replaces {
                Some((_, old)) => sum.checksum = bucket_checksum_sub(sum.checksum, old),
                None => sum.count += 1,
            }
            sum.checksum = bucket_checksum_add(sum.checksum, hash);
            sum.last_op_id = sum.last_op_id.max(op_id);
        })?;
        self.insert_op(bucket, bucket_id, KIND_PUT, op, op_id)
    }

    /// As [`StoreWriter::put_op`], under a new op id, which it returns.
    pub fn bucket_put(
        &mut self,
        bucket: &str,
        tbl: &str,
        key: &str,
        op: &[u8],
        hash: u64,
        replaces: Option<(u64, u64)>,
    ) -> Result<u64, StoreError> {
        let op_id = self.next_op_id();
        self.put_op(bucket, tbl, key, op, hash, replaces, op_id)?;
        Ok(op_id)
    }

    /// Removes a row from a bucket it is in (`placed`: the id and hash of its
    /// PUT op there), leaving a tombstone (encoded `RowOp`) for resuming
    /// clients.
    pub fn bucket_remove(
        &mut self,
        bucket: &str,
        tbl: &str,
        key: &str,
        op: &[u8],
        placed: (u64, u64),
    ) -> Result<(), StoreError> {
        let (put_id, hash) = placed;
        self.delete_op(put_id)?;
        let op_id = self.next_op_id();
        let bucket_id = self.sums.update(&self.conn, bucket, |sum| {
            sum.checksum = bucket_checksum_sub(sum.checksum, hash);
            sum.count -= 1;
            sum.last_op_id = sum.last_op_id.max(op_id);
        })?;
        self.insert_op(bucket, bucket_id, KIND_REMOVE, op, op_id)?;
        self.conn
            .prepare_cached(
                "INSERT INTO tombstones (bucket, tbl, key, op_id) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (bucket, tbl, key) DO UPDATE SET op_id = excluded.op_id",
            )?
            .execute(params![bucket, tbl, key, op_id as i64])?;
        self.tombstones_maybe = true;
        Ok(())
    }

    /// Drops tombstones at or below `horizon` op id and records the horizon on
    /// every bucket that lost one, so older cursors get a reset.
    pub fn compact_tombstones(&mut self, horizon: u64) -> Result<usize, StoreError> {
        self.begin()?;
        self.sums.flush(&self.conn)?;
        let h = horizon as i64;
        self.conn
            .prepare_cached(
                "UPDATE buckets SET horizon = ?1 WHERE bucket IN
                 (SELECT DISTINCT bucket FROM tombstones WHERE op_id <= ?1)",
            )?
            .execute([h])?;
        self.conn
            .prepare_cached(
                "DELETE FROM ops WHERE op_id IN (SELECT op_id FROM tombstones WHERE op_id <= ?1)",
            )?
            .execute([h])?;
        let n = self
            .conn
            .prepare_cached("DELETE FROM tombstones WHERE op_id <= ?1")?
            .execute([h])?;
        self.tombstones_maybe = tombstones_exist(&self.conn)?;
        Ok(n)
    }

    /// What was changed since the last call (call it after a commit).
    pub fn take_touched(&mut self) -> Touched {
        std::mem::take(&mut self.touched)
    }

    /// Records that the entries of `(membership, user_key)` changed.
    pub(super) fn touched_member(&mut self, membership: usize, user_key: &str) {
        if self
            .touched
            .members
            .insert((membership, user_key.to_string()))
        {
            self.touched.bytes += user_key.len() + ENTRY_OVERHEAD;
        }
    }

    /// Rolls back the open store transaction, if any, and restores the state
    /// from what is committed.
    pub fn rollback(&mut self) -> Result<(), StoreError> {
        self.touched = Touched::default();
        self.sums.clear();
        if self.in_txn {
            self.conn.execute_batch("ROLLBACK")?;
            self.in_txn = false;
            // Op ids already handed out are never reused, not even after a
            // restart: they are published with the progress that follows.
            meta_set(&self.conn, "last_op_id", &self.state.last_op_id.to_string())?;
        }
        self.state = committed_state(&self.conn, self.state.last_op_id)?;
        self.tombstones_maybe = tombstones_exist(&self.conn)?;
        Ok(())
    }
}
