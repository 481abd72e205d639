//! Applying the sync stream to the replica: schema, row operations, bucket
//! resets and checkpoints, all inside one transaction per checkpoint.
//!
//! Invariants kept here:
//! - the first row operation or reset after a checkpoint opens the
//!   transaction (`BEGIN IMMEDIATE`); only [`Replica::apply_checkpoint`]
//!   commits it, and only when every listed bucket's checksum and count match
//!   what the service sent (a `Schema` between checkpoints commits on its own:
//!   it only creates tables and adds columns);
//! - a mismatch rolls everything back, then drops the mismatched buckets
//!   (rows, checksum, cursor) in a transaction of their own, so the service
//!   sends them again from zero on the next connection;
//! - bucket checksums are maintained incrementally from the `_outpost_rows`
//!   hashes: a PUT subtracts the row's previous hash (if the bucket held it) and
//!   adds the new one; a REMOVE subtracts it. Nothing else is re-read;
//! - data for a row with local changes updates its kept server values; before
//!   the commit such rows are rebuilt (server values, then the pending ops), so
//!   no reader ever sees a local change disappear and come back. A checkpoint
//!   resolves the applied groups whose commit LSN it reached.

use super::key::parse_key;
use super::local::{shadow_gone, shadow_put};
use super::schema::TableDef;
use super::values::Sql;
use super::{BucketAcc, CheckpointState, Pending, Replica, WriteOutcome};
use crate::ClientError;
use outpost_proto::v1::{
    BucketReset, Checkpoint, DataBatch, GroupResult, Schema, Value, row_op, value::Kind,
};
use outpost_proto::{bucket_checksum_add, bucket_checksum_sub, key_string, row_hash};
use rusqlite::{Connection, OptionalExtension};
use std::collections::HashMap;

/// How a checkpoint ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CheckpointOutcome {
    /// Committed: the replica now is this checkpoint's state.
    Applied {
        state: CheckpointState,
        /// Row operations applied since the previous checkpoint.
        rows: u64,
    },
    /// Rolled back; the listed buckets were dropped and must be downloaded again.
    Mismatch(Vec<BucketMismatch>),
}

/// A bucket whose state after applying did not match the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BucketMismatch {
    pub(crate) bucket: String,
    pub(crate) expected_checksum: u64,
    pub(crate) expected_count: u64,
    pub(crate) checksum: u64,
    pub(crate) count: u64,
}

/// Whether two wire values are the same value (reals compared bit for bit,
/// so that NaN equals itself as it does in row hashes).
fn same_value(a: &Value, b: &Value) -> bool {
    match (&a.kind, &b.kind) {
        (None | Some(Kind::Null(_)), None | Some(Kind::Null(_))) => true,
        (Some(Kind::Real(x)), Some(Kind::Real(y))) => x.to_bits() == y.to_bits(),
        (x, y) => x == y,
    }
}

const INSERT_ROW: &str = "INSERT INTO _outpost_rows (bucket, tbl, key, hash) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING";
const SELECT_ROW: &str =
    "SELECT hash FROM _outpost_rows WHERE bucket = ?1 AND tbl = ?2 AND key = ?3";
const UPDATE_ROW: &str =
    "UPDATE _outpost_rows SET hash = ?4 WHERE bucket = ?1 AND tbl = ?2 AND key = ?3";
const DELETE_ROW: &str =
    "DELETE FROM _outpost_rows WHERE bucket = ?1 AND tbl = ?2 AND key = ?3 RETURNING hash";
const HELD: &str = "SELECT 1 FROM _outpost_rows WHERE tbl = ?1 AND key = ?2 LIMIT 1";

/// Deletes a typed row by key unless some bucket still holds it (the server
/// no longer gives the row to this user).
fn release_row(
    conn: &Connection,
    pending: &mut Pending,
    table: &TableDef,
    key_str: &str,
    key: &[Value],
) -> Result<(), ClientError> {
    let held = conn
        .prepare_cached(HELD)?
        .query_row((&table.name, key_str), |_| Ok(()))
        .optional()?
        .is_some();
    if !held {
        let mut delete = conn.prepare_cached(&table.delete_sql)?;
        for (i, v) in key.iter().enumerate() {
            delete.raw_bind_parameter(i + 1, Sql(v))?;
        }
        delete.raw_execute()?;
        shadow_gone(conn, pending, &table.name, key_str)?;
    }
    Ok(())
}

impl Replica {
    /// Opens the transaction if none is open.
    pub(super) fn begin(&mut self) -> Result<(), ClientError> {
        if self.pending.is_none() {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            let shadow = self
                .conn
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM _outpost_shadow)")?
                .query_row([], |r| r.get(0))
                .inspect_err(|_| {
                    let _ = self.conn.execute_batch("ROLLBACK");
                })?;
            self.pending = Some(Pending {
                shadow,
                ..Pending::default()
            });
        }
        Ok(())
    }

    pub(super) fn pending_mut(&mut self) -> &mut Pending {
        self.pending.get_or_insert_with(Pending::default)
    }

    /// Creates or migrates the typed tables of a `Schema` message. Between
    /// checkpoints the change commits at once (empty tables and new NULL
    /// columns are states readers may see, and no write lock is held while the
    /// service prepares data); inside a pending transaction it joins it.
    pub(crate) fn apply_schema(&mut self, schema: &Schema) -> Result<(), ClientError> {
        let defs = schema
            .tables
            .iter()
            .map(TableDef::from_proto)
            .collect::<Result<Vec<_>, _>>()?;
        let own_transaction = self.pending.is_none();
        self.begin()?;
        for def in defs {
            def.ensure(&self.conn)?;
            self.tables.insert(def.name.clone(), def);
        }
        self.conn.execute(
            "INSERT OR REPLACE INTO _outpost_state (key, value) VALUES ('schema_version', ?1)",
            [&schema.version],
        )?;
        // Statements prepared before an ALTER TABLE name fewer columns.
        self.conn.flush_prepared_statement_cache();
        if own_transaction {
            self.commit()?;
        }
        Ok(())
    }

    /// Applies the row operations of one batch; returns how many.
    pub(crate) fn apply_data(&mut self, batch: &DataBatch) -> Result<u64, ClientError> {
        self.begin()?;
        let Replica {
            conn,
            tables,
            buckets,
            pending,
            ..
        } = self;
        let pending = pending.get_or_insert_with(Pending::default);
        let bucket = batch.bucket.as_str();
        let mut acc = buckets.get(bucket).copied().unwrap_or_default();
        let mut insert_row = conn.prepare_cached(INSERT_ROW)?;
        let mut upserts: HashMap<&str, rusqlite::CachedStatement<'_>> = HashMap::new();
        let mut applied = 0u64;
        // Apply, then record the bucket state even if an op failed midway: the
        // caller rolls the transaction back and reloads on any error.
        let result = (|| -> Result<(), ClientError> {
            for op in &batch.ops {
                let table = tables.get(&op.table).ok_or_else(|| {
                    ClientError::Protocol(format!(
                        "bucket {bucket:?} has a row of table {:?}, which the schema does not define",
                        op.table
                    ))
                })?;
                if op.key.len() != table.primary_key.len() {
                    return Err(ClientError::Protocol(format!(
                        "a row of table {:?} has {} key values, the primary key has {} columns",
                        op.table,
                        op.key.len(),
                        table.primary_key.len()
                    )));
                }
                let key = key_string(&op.key);
                match row_op::Kind::try_from(op.kind) {
                    Ok(row_op::Kind::Put) => {
                        if op.values.len() != table.columns.len() {
                            return Err(ClientError::Protocol(format!(
                                "a row of table {:?} has {} values, the table has {} columns",
                                op.table,
                                op.values.len(),
                                table.columns.len()
                            )));
                        }
                        let key_matches = table
                            .primary_key
                            .iter()
                            .zip(&op.key)
                            .all(|(&i, k)| same_value(&op.values[i], k));
                        if !key_matches {
                            return Err(ClientError::Protocol(format!(
                                "a row of table {:?} has key {key} but different primary key values",
                                op.table
                            )));
                        }
                        let upsert = match upserts.entry(table.name.as_str()) {
                            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                            std::collections::hash_map::Entry::Vacant(e) => {
                                e.insert(conn.prepare_cached(&table.upsert_sql)?)
                            }
                        };
                        for (i, v) in op.values.iter().enumerate() {
                            upsert.raw_bind_parameter(i + 1, Sql(v))?;
                        }
                        upsert.raw_execute()?;
                        let hash = row_hash(&op.table, &op.key, &op.values);
                        let inserted =
                            insert_row.execute((bucket, &op.table, &key, hash as i64))?;
                        if inserted == 1 {
                            acc.count += 1;
                        } else {
                            let old: i64 = conn
                                .prepare_cached(SELECT_ROW)?
                                .query_row((bucket, &op.table, &key), |r| r.get(0))?;
                            acc.checksum = bucket_checksum_sub(acc.checksum, old as u64);
                            conn.prepare_cached(UPDATE_ROW)?.execute((
                                bucket,
                                &op.table,
                                &key,
                                hash as i64,
                            ))?;
                        }
                        acc.checksum = bucket_checksum_add(acc.checksum, hash);
                        shadow_put(conn, pending, table, &key, &op.values)?;
                    }
                    Ok(row_op::Kind::Remove) => {
                        let old: Option<i64> = conn
                            .prepare_cached(DELETE_ROW)?
                            .query_row((bucket, &op.table, &key), |r| r.get(0))
                            .optional()?;
                        if let Some(old) = old {
                            acc.checksum = bucket_checksum_sub(acc.checksum, old as u64);
                            acc.count = acc.count.saturating_sub(1);
                            release_row(conn, pending, table, &key, &op.key)?;
                        }
                    }
                    _ => {
                        return Err(ClientError::Protocol(format!(
                            "a row of table {:?} has unknown operation kind {}",
                            op.table, op.kind
                        )));
                    }
                }
                applied += 1;
            }
            Ok(())
        })();
        buckets.insert(bucket.to_string(), acc);
        pending.dirty.insert(bucket.to_string());
        pending.rows += applied;
        result.map(|()| applied)
    }

    /// Drops everything held for a bucket.
    pub(crate) fn apply_reset(&mut self, reset: &BucketReset) -> Result<(), ClientError> {
        self.begin()?;
        self.drop_bucket(&reset.bucket)
    }

    /// Removes a bucket's rows (and the typed rows no other bucket holds), its
    /// checksum and its cursor, inside the open transaction.
    fn drop_bucket(&mut self, bucket: &str) -> Result<(), ClientError> {
        let removed: Vec<(String, String)> = {
            let mut stmt = self
                .conn
                .prepare_cached("DELETE FROM _outpost_rows WHERE bucket = ?1 RETURNING tbl, key")?;
            let rows = stmt.query_map([bucket], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        for (tbl, key_str) in &removed {
            let Some(table) = self.tables.get(tbl) else {
                tracing::warn!(table = %tbl, "the replica holds rows of a table it has no definition for");
                continue;
            };
            let key = parse_key(key_str).ok_or_else(|| {
                ClientError::CorruptReplica(format!(
                    "_outpost_rows holds an unreadable key {key_str:?} for table {tbl:?}"
                ))
            })?;
            let pending = self.pending.get_or_insert_with(Pending::default);
            release_row(&self.conn, pending, table, key_str, &key)?;
        }
        self.buckets.remove(bucket);
        let pending = self.pending_mut();
        pending.dirty.remove(bucket);
        pending.dropped.insert(bucket.to_string());
        tracing::debug!(bucket, rows = removed.len(), "dropped bucket");
        Ok(())
    }

    /// Verifies a checkpoint and commits everything pending, or rolls back.
    #[cfg(test)]
    pub(crate) fn apply_checkpoint(
        &mut self,
        checkpoint: &Checkpoint,
    ) -> Result<CheckpointOutcome, ClientError> {
        self.apply_checkpoint_with(checkpoint, &[])
            .map(|(outcome, _)| outcome)
    }

    /// Verifies a checkpoint and commits everything pending with it, or rolls
    /// back; `answers` (the service's answers to uploaded groups that arrived
    /// meanwhile) are recorded in the same transaction, or in one of their
    /// own after a mismatch.
    pub(crate) fn apply_checkpoint_with(
        &mut self,
        checkpoint: &Checkpoint,
        answers: &[GroupResult],
    ) -> Result<(CheckpointOutcome, Vec<WriteOutcome>), ClientError> {
        let mismatches: Vec<BucketMismatch> = checkpoint
            .buckets
            .iter()
            .filter_map(|b| {
                let acc = self.buckets.get(&b.bucket).copied().unwrap_or_default();
                (acc.checksum != b.checksum || acc.count != b.count).then(|| BucketMismatch {
                    bucket: b.bucket.clone(),
                    expected_checksum: b.checksum,
                    expected_count: b.count,
                    checksum: acc.checksum,
                    count: acc.count,
                })
            })
            .collect();
        if !mismatches.is_empty() {
            self.rollback()?;
            self.begin()?;
            for m in &mismatches {
                self.drop_bucket(&m.bucket)?;
            }
            self.commit()?;
            let outcomes = self.record_results(answers)?;
            return Ok((CheckpointOutcome::Mismatch(mismatches), outcomes));
        }
        self.begin()?;
        for b in &checkpoint.buckets {
            let acc = self.buckets.entry(b.bucket.clone()).or_default();
            acc.op_id = checkpoint.op_id;
            let bucket = b.bucket.clone();
            self.pending_mut().dirty.insert(bucket);
        }
        self.conn.execute(
            "INSERT OR REPLACE INTO _outpost_state (key, value) VALUES
             ('epoch', ?1), ('op_id', ?2), ('lsn', ?3)",
            (
                &checkpoint.epoch,
                checkpoint.op_id as i64,
                checkpoint.lsn as i64,
            ),
        )?;
        let outcomes = self.record_results(answers)?;
        // Groups the service applied at or before this state are in it now.
        let resolved: Vec<(String, String)> = {
            let mut stmt = self.conn.prepare_cached(
                "DELETE FROM _outpost_pending WHERE commit_lsn <= ?1 RETURNING tbl, key",
            )?;
            let rows = stmt.query_map([checkpoint.lsn as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let pending = self.pending_mut();
        pending.touched.extend(resolved);
        let rows = pending.rows;
        self.commit()?;
        let outcome = CheckpointOutcome::Applied {
            state: CheckpointState {
                op_id: checkpoint.op_id,
                lsn: checkpoint.lsn,
                epoch: checkpoint.epoch.clone(),
            },
            rows,
        };
        Ok((outcome, outcomes))
    }

    /// Writes the changed bucket states and commits the open transaction.
    pub(super) fn commit(&mut self) -> Result<(), ClientError> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        let written = (|| -> Result<(), ClientError> {
            for (tbl, key) in &pending.touched {
                self.rebuild_row(tbl, key)?;
            }
            let mut delete = self
                .conn
                .prepare_cached("DELETE FROM _outpost_buckets WHERE bucket = ?1")?;
            for bucket in &pending.dropped {
                delete.execute([bucket])?;
            }
            let mut upsert = self.conn.prepare_cached(
                "INSERT OR REPLACE INTO _outpost_buckets (bucket, op_id, checksum, count)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for bucket in &pending.dirty {
                let acc: BucketAcc = self.buckets.get(bucket).copied().unwrap_or_default();
                upsert.execute((
                    bucket,
                    acc.op_id as i64,
                    acc.checksum as i64,
                    acc.count as i64,
                ))?;
            }
            self.conn.execute_batch("COMMIT")?;
            Ok(())
        })();
        if let Err(e) = written {
            self.pending = Some(pending);
            self.rollback()?;
            return Err(e);
        }
        Ok(())
    }

    /// Discards everything since the last checkpoint and reloads the
    /// committed state.
    pub(crate) fn rollback(&mut self) -> Result<(), ClientError> {
        if self.pending.take().is_some() && !self.conn.is_autocommit() {
            self.conn.execute_batch("ROLLBACK")?;
        }
        self.reload()
    }
}
