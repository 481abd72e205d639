//! Applying row operations: checking them against the table definitions,
//! writing the typed rows and `_outpost_row_refs`, and keeping each bucket's
//! checksum and count (see [`super::apply`] for the transaction around them).
//!
//! What does not need the replica (each op's binary key and row hash) is
//! computed by [`PreparedBatch::new`] on the thread that reads the stream, so
//! the thread that owns the replica only writes.
//!
//! Invariants:
//! - an op is checked (table known, key and value counts, key values equal
//!   to the key columns) before anything of it is written;
//! - a PUT adds its row hash to the bucket checksum after subtracting the
//!   hash the bucket held for the row, if any; a REMOVE subtracts the held
//!   hash, and deletes the typed row once no bucket holds it;
//! - a run of `bulk_rows` PUTs of one table is written with one statement
//!   for the references and one for the typed rows. The reference insert has
//!   no conflict clause: if the bucket holds any of the rows already it fails
//!   as a whole, writing nothing, and the run (and the rest of the bucket's
//!   rows in the transaction) goes one op at a time.

use super::key::encode_key;
use super::local::{shadow_gone, shadow_put};
use super::refs;
use super::schema::TableDef;
use super::values::Sql;
use super::{Pending, Replica};
use crate::ClientError;
use outpost_proto::v1::{DataBatch, RowOp, Value, row_op, value::Kind};
use outpost_proto::{bucket_checksum_add, bucket_checksum_sub, key_string, row_hash};
use rusqlite::{Connection, ErrorCode, OptionalExtension};
use std::collections::HashMap;
use std::collections::hash_map::Entry;

/// A data batch with each op's binary key and (for a PUT) row hash.
#[derive(Debug)]
pub(crate) struct PreparedBatch {
    batch: DataBatch,
    /// The binary keys of the ops, one after the other.
    keys: Vec<u8>,
    /// Where each op's key ends in `keys`.
    key_ends: Vec<usize>,
    /// Each op's row hash (0 for a REMOVE).
    hashes: Vec<u64>,
}

impl PreparedBatch {
    pub(crate) fn new(batch: DataBatch) -> Self {
        let mut keys = Vec::with_capacity(batch.ops.len() * 10);
        let mut key_ends = Vec::with_capacity(batch.ops.len());
        let mut hashes = Vec::with_capacity(batch.ops.len());
        for op in &batch.ops {
            encode_key(&mut keys, &op.key);
            key_ends.push(keys.len());
            hashes.push(if op.kind == row_op::Kind::Put as i32 {
                row_hash(&op.table, &op.key, &op.values)
            } else {
                0
            });
        }
        PreparedBatch {
            batch,
            keys,
            key_ends,
            hashes,
        }
    }

    /// The binary key of op `i`.
    fn key(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.key_ends[i - 1] };
        &self.keys[start..self.key_ends[i]]
    }
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

/// Whether an error is a row that is held already (a primary key conflict).
fn is_held_already(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == ErrorCode::ConstraintViolation
            && f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

/// Checks a row operation against its table before anything is written.
fn check_op(table: &TableDef, op: &RowOp) -> Result<row_op::Kind, ClientError> {
    if op.key.len() != table.primary_key.len() {
        return Err(ClientError::Protocol(format!(
            "a row of table {:?} has {} key values, the primary key has {} columns",
            op.table,
            op.key.len(),
            table.primary_key.len()
        )));
    }
    let kind = match row_op::Kind::try_from(op.kind) {
        Ok(kind @ (row_op::Kind::Put | row_op::Kind::Remove)) => kind,
        _ => {
            return Err(ClientError::Protocol(format!(
                "a row of table {:?} has unknown operation kind {}",
                op.table, op.kind
            )));
        }
    };
    if kind == row_op::Kind::Put {
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
                "a row of table {:?} has key {} but different primary key values",
                op.table,
                key_string(&op.key)
            )));
        }
    }
    Ok(kind)
}

/// Deletes a typed row by key unless some bucket still holds it (the server
/// no longer gives the row to this user).
pub(super) fn release_row(
    conn: &Connection,
    ids: &refs::Ids,
    pending: &mut Pending,
    table: &TableDef,
    tbl_id: i64,
    key_bytes: &[u8],
    key: &[Value],
) -> Result<(), ClientError> {
    if !ids.held(conn, tbl_id, key_bytes)? {
        let mut delete = conn.prepare_cached(&table.delete_sql)?;
        for (i, v) in key.iter().enumerate() {
            delete.raw_bind_parameter(i + 1, Sql(v))?;
        }
        delete.raw_execute()?;
        if pending.shadow {
            shadow_gone(conn, pending, &table.name, &key_string(key))?;
        }
    }
    Ok(())
}

/// Applies a run of PUTs of rows no bucket of `bucket_id` holds yet, with
/// one statement for their references and one for their typed rows; `false`
/// (and nothing written) if the bucket holds one of them already. The ops
/// are checked, and there are exactly `table.bulk_rows` of them.
fn put_new_rows(
    conn: &Connection,
    table: &TableDef,
    bucket_id: i64,
    tbl_id: i64,
    batch: &PreparedBatch,
    run: std::ops::Range<usize>,
) -> Result<bool, ClientError> {
    let ops = &batch.batch.ops[run.clone()];
    let mut insert = conn.prepare_cached(&table.refs_many_sql)?;
    insert.raw_bind_parameter(1, bucket_id)?;
    insert.raw_bind_parameter(2, tbl_id)?;
    for (j, i) in run.enumerate() {
        insert.raw_bind_parameter(3 + 2 * j, batch.key(i))?;
        insert.raw_bind_parameter(4 + 2 * j, batch.hashes[i] as i64)?;
    }
    match insert.raw_execute() {
        Ok(_) => {}
        Err(e) if is_held_already(&e) => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    let mut upsert = conn.prepare_cached(&table.upsert_many_sql)?;
    let width = table.columns.len();
    for (j, op) in ops.iter().enumerate() {
        for (c, v) in op.values.iter().enumerate() {
            upsert.raw_bind_parameter(j * width + c + 1, Sql(v))?;
        }
    }
    upsert.raw_execute()?;
    Ok(true)
}

impl Replica {
    /// Applies the row operations of one batch; returns how many.
    ///
    /// A run of `bulk_rows` PUTs of one table is written with one statement
    /// per table touched when the bucket holds none of its rows yet (the
    /// common case of a bucket sent from zero); once a run finds a row held
    /// already, the bucket's rows go one by one for the rest of the
    /// transaction.
    pub(crate) fn apply_data(&mut self, batch: &PreparedBatch) -> Result<u64, ClientError> {
        self.begin()?;
        let Replica {
            conn,
            tables,
            buckets,
            ids,
            pending,
            ..
        } = self;
        let pending = pending.get_or_insert_with(Pending::default);
        let bucket = batch.batch.bucket.as_str();
        let mut acc = buckets.get(bucket).copied().unwrap_or_default();
        let mut applied = 0u64;
        // Apply, then record the bucket state even if an op failed midway: the
        // caller rolls the transaction back and reloads on any error.
        let result = (|| -> Result<(), ClientError> {
            let bucket_id = ids.bucket_or_create(conn, bucket)?;
            let mut insert_ref = conn.prepare_cached(refs::INSERT)?;
            let mut upserts: HashMap<&str, rusqlite::CachedStatement<'_>> = HashMap::new();
            let mut table_ids: HashMap<&str, i64> = HashMap::new();
            let mut bulk = !pending.no_bulk.contains(bucket);
            let ops = &batch.batch.ops;
            let mut i = 0;
            while i < ops.len() {
                let op = &ops[i];
                let table = tables.get(&op.table).ok_or_else(|| {
                    ClientError::Protocol(format!(
                        "bucket {bucket:?} has a row of table {:?}, which the schema does not define",
                        op.table
                    ))
                })?;
                let kind = check_op(table, op)?;
                let tbl_id = match table_ids.entry(table.name.as_str()) {
                    Entry::Occupied(e) => *e.get(),
                    Entry::Vacant(e) => *e.insert(ids.table_or_create(conn, &table.name)?),
                };
                if kind == row_op::Kind::Put && bulk && ops.len() - i >= table.bulk_rows {
                    let run = &ops[i..i + table.bulk_rows];
                    let range = i..i + run.len();
                    let mut same = true;
                    for next in &run[1..] {
                        same =
                            next.table == op.table && check_op(table, next)? == row_op::Kind::Put;
                        if !same {
                            break;
                        }
                    }
                    if same {
                        if put_new_rows(conn, table, bucket_id, tbl_id, batch, range.clone())? {
                            for (op, &hash) in run.iter().zip(&batch.hashes[range]) {
                                acc.checksum = bucket_checksum_add(acc.checksum, hash);
                                if pending.shadow {
                                    shadow_put(
                                        conn,
                                        pending,
                                        table,
                                        &key_string(&op.key),
                                        &op.values,
                                    )?;
                                }
                            }
                            acc.count += run.len() as u64;
                            applied += run.len() as u64;
                            i += run.len();
                            continue;
                        }
                        bulk = false;
                        pending.no_bulk.insert(bucket.to_string());
                    }
                }
                let key = batch.key(i);
                if kind == row_op::Kind::Put {
                    let upsert = match upserts.entry(table.name.as_str()) {
                        Entry::Occupied(e) => e.into_mut(),
                        Entry::Vacant(e) => e.insert(conn.prepare_cached(&table.upsert_sql)?),
                    };
                    for (c, v) in op.values.iter().enumerate() {
                        upsert.raw_bind_parameter(c + 1, Sql(v))?;
                    }
                    upsert.raw_execute()?;
                    let hash = batch.hashes[i];
                    let inserted = insert_ref.execute((bucket_id, tbl_id, key, hash as i64))?;
                    if inserted == 1 {
                        acc.count += 1;
                    } else {
                        let old: i64 = conn
                            .prepare_cached(refs::SELECT)?
                            .query_row((bucket_id, tbl_id, key), |r| r.get(0))?;
                        acc.checksum = bucket_checksum_sub(acc.checksum, old as u64);
                        conn.prepare_cached(refs::UPDATE)?.execute((
                            bucket_id,
                            tbl_id,
                            key,
                            hash as i64,
                        ))?;
                    }
                    acc.checksum = bucket_checksum_add(acc.checksum, hash);
                    if pending.shadow {
                        shadow_put(conn, pending, table, &key_string(&op.key), &op.values)?;
                    }
                } else {
                    let old: Option<i64> = conn
                        .prepare_cached(refs::DELETE)?
                        .query_row((bucket_id, tbl_id, key), |r| r.get(0))
                        .optional()?;
                    if let Some(old) = old {
                        acc.checksum = bucket_checksum_sub(acc.checksum, old as u64);
                        acc.count = acc.count.saturating_sub(1);
                        release_row(conn, ids, pending, table, tbl_id, key, &op.key)?;
                    }
                }
                applied += 1;
                i += 1;
            }
            Ok(())
        })();
        buckets.insert(bucket.to_string(), acc);
        pending.dirty.insert(bucket.to_string());
        pending.rows += applied;
        result.map(|()| applied)
    }

    /// Applies the row operations of one batch (preparing it here).
    #[cfg(test)]
    pub(crate) fn apply_batch(&mut self, batch: &DataBatch) -> Result<u64, ClientError> {
        self.apply_data(&PreparedBatch::new(batch.clone()))
    }
}
