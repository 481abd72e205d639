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
//! - bucket checksums are maintained incrementally from the
//!   `_outpost_row_refs` hashes: a PUT subtracts the row's previous hash (if
//!   the bucket held it) and adds the new one; a REMOVE subtracts it. Nothing
//!   else is re-read. Runs of PUTs written with one statement keep this too:
//!   their reference insert fails as a whole (and writes nothing) if the
//!   bucket holds any of their rows already, and they then go one by one;
//! - data for a row with local changes updates its kept server values; before
//!   the commit such rows are rebuilt (server values, then the pending ops), so
//!   no reader ever sees a local change disappear and come back. A checkpoint
//!   resolves the applied groups whose commit LSN it reached.

use super::data::release_row;
use super::key::decode_key;
use super::refs;
use super::schema::TableDef;
use super::{BucketAcc, CheckpointState, Pending, Replica, WriteOutcome};
use crate::ClientError;
use outpost_proto::v1::{BucketReset, Checkpoint, GroupResult, Schema};

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

impl Replica {
    /// Opens the transaction if none is open.
    pub(super) fn begin(&mut self) -> Result<(), ClientError> {
        if self.pending.is_none() {
            self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
            let opened = self.transaction_state();
            let shadow = match opened {
                Ok(shadow) => shadow,
                Err(e) => {
                    let _ = self.conn.execute_batch("ROLLBACK");
                    return Err(e);
                }
            };
            self.pending = Some(Pending {
                shadow,
                ..Pending::default()
            });
        }
        Ok(())
    }

    /// Inside a fresh transaction: turns triggers on for this connection
    /// exactly when the file has triggers besides the capture triggers (which
    /// do nothing here), and says whether any row has local changes.
    fn transaction_state(&mut self) -> Result<bool, ClientError> {
        let app_triggers: bool = self
            .conn
            .prepare_cached(
                r"SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'trigger'
                  AND name NOT LIKE '\_outpost\_%' ESCAPE '\')",
            )?
            .query_row([], |r| r.get(0))?;
        if app_triggers != self.triggers {
            self.conn.set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER,
                app_triggers,
            )?;
            // Statements compiled before still hold (or lack) the triggers.
            self.conn.flush_prepared_statement_cache();
            self.triggers = app_triggers;
        }
        Ok(self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM _outpost_shadow)")?
            .query_row([], |r| r.get(0))?)
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

    /// Drops everything held for a bucket.
    pub(crate) fn apply_reset(&mut self, reset: &BucketReset) -> Result<(), ClientError> {
        self.begin()?;
        self.drop_bucket(&reset.bucket)
    }

    /// Removes a bucket's rows (and the typed rows no other bucket holds), its
    /// checksum and its cursor, inside the open transaction.
    fn drop_bucket(&mut self, bucket: &str) -> Result<(), ClientError> {
        let removed: Vec<(i64, Vec<u8>)> = match self.ids.bucket(bucket) {
            None => Vec::new(),
            Some(id) => {
                let mut stmt = self.conn.prepare_cached(refs::DROP_BUCKET)?;
                let rows = stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<Result<_, _>>()?
            }
        };
        for (tbl_id, key_bytes) in &removed {
            let table = self
                .ids
                .table_name(*tbl_id)
                .and_then(|name| self.tables.get(name));
            let Some(table) = table else {
                tracing::warn!(
                    table = tbl_id,
                    "the replica holds rows of a table it has no definition for"
                );
                continue;
            };
            let key = decode_key(key_bytes).ok_or_else(|| {
                ClientError::CorruptReplica(format!(
                    "_outpost_row_refs holds an unreadable key {key_bytes:?} for table {:?}",
                    table.name
                ))
            })?;
            let pending = self.pending.get_or_insert_with(Pending::default);
            release_row(
                &self.conn, &self.ids, pending, table, *tbl_id, key_bytes, &key,
            )?;
        }
        self.ids.forget_bucket(&self.conn, bucket)?;
        self.buckets.remove(bucket);
        let pending = self.pending_mut();
        pending.dirty.remove(bucket);
        pending.dropped.insert(bucket.to_string());
        pending.no_bulk.remove(bucket);
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
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO _outpost_state (key, value) VALUES
             ('epoch', ?1), ('op_id', ?2), ('lsn', ?3)",
            )?
            .execute((
                &checkpoint.epoch,
                checkpoint.op_id as i64,
                checkpoint.lsn as i64,
            ))?;
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
            self.conn.prepare_cached("COMMIT")?.execute([])?;
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
