//! Row-level apply: one replicated change at a time, against the store's open
//! transaction. See the module above for the invariants.

mod graph;

use crate::lsn::Lsn;
use crate::pgtypes::{self, ConvertError};
use crate::replication::{PgOutput, Relation, Tuple, TupleValue};
use crate::schema::{CompiledSchema, RouteMemo};
use crate::store::{MirrorRow, Placed, StoreError, StoreWriter, TextRow};
use outpost_proto::v1::{RowOp, Value, row_op::Kind};
use outpost_proto::{key_string, row_hash};
use prost::Message;
use std::collections::HashMap;
use std::sync::Arc;

/// Errors while applying changes. All are definite: the same input would fail
/// the same way, so the service stops instead of skipping data.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("table {table}: {source}")]
    Convert {
        table: String,
        #[source]
        source: ConvertError,
    },
    #[error(
        "table {table}: a change arrived for a row that is not in the mirror (key {key}); the store is out of step with Postgres, delete the data directory to rebuild it"
    )]
    MissingRow { table: String, key: String },
    #[error(
        "table {table}: column {column} arrived in binary form; only text pgoutput is supported"
    )]
    Binary { table: String, column: String },
    #[error("table {table}: column {column} is not valid UTF-8")]
    Utf8 { table: String, column: String },
    #[error("a change for relation {0} arrived before its Relation message")]
    UnknownRelation(u32),
    #[error("the store writer thread panicked")]
    WriterPanicked,
}

/// How a replicated relation maps onto a synced table.
struct RelationMap {
    /// Index into `CompiledSchema::tables`.
    table: usize,
    /// For each pgoutput column, its index in the synced table's columns.
    columns: Vec<Option<usize>>,
}

/// A new row version decoded from a tuple: values plus which columns were
/// unchanged TOAST values to be filled from the old version.
struct DecodedTuple {
    row: TextRow,
    unchanged: Vec<usize>,
}

/// Applies replicated changes to the store through a [`StoreWriter`].
pub struct RowChanges {
    schema: Arc<CompiledSchema>,
    relations: HashMap<u32, Option<RelationMap>>,
    /// True between Begin and Commit of a replayed transaction.
    skipping: bool,
    /// Scratch buffer for routing.
    route_buf: Vec<String>,
    /// Recent bucket names of the schema's definitions.
    route_memo: RouteMemo,
    /// Ops written since the counter was last taken, for group commit sizing.
    ops_written: u64,
}

/// A row version in wire form.
struct WireRow {
    key: Vec<Value>,
    key_string: String,
    values: Vec<Value>,
    hash: u64,
}

impl RowChanges {
    pub fn new(schema: Arc<CompiledSchema>) -> Self {
        RowChanges {
            schema,
            relations: HashMap::new(),
            skipping: false,
            route_buf: Vec::new(),
            route_memo: RouteMemo::default(),
            ops_written: 0,
        }
    }

    pub fn schema(&self) -> &Arc<CompiledSchema> {
        &self.schema
    }

    /// Ops written since the last call.
    pub fn take_ops_written(&mut self) -> u64 {
        std::mem::take(&mut self.ops_written)
    }

    /// Forgets per-connection state (relation ids), after a reconnect.
    pub fn reset_connection(&mut self) {
        self.relations.clear();
        self.skipping = false;
    }

    /// Applies one pgoutput message. Returns `Some((commit_lsn, end_lsn))`
    /// when the message closed a transaction that was applied.
    pub fn apply(
        &mut self,
        store: &mut StoreWriter,
        msg: PgOutput,
    ) -> Result<Option<(Lsn, Lsn)>, IngestError> {
        match msg {
            PgOutput::Begin(b) => {
                self.skipping =
                    store.state().last_commit_lsn >= b.final_lsn && b.final_lsn != Lsn::ZERO;
                if self.skipping {
                    tracing::debug!(lsn = %b.final_lsn, "skipping replayed transaction");
                } else {
                    store.begin()?;
                }
            }
            PgOutput::Commit(c) => {
                if std::mem::take(&mut self.skipping) {
                    return Ok(None);
                }
                store.mark_commit(c.commit_lsn, c.end_lsn);
                return Ok(Some((c.commit_lsn, c.end_lsn)));
            }
            PgOutput::Relation(r) => self.add_relation(r),
            PgOutput::Insert(i) if !self.skipping => {
                let Some((table, decoded)) = self.decode(i.relation_id, &i.new)? else {
                    return Ok(None);
                };
                self.put_row(store, table, None, true, decoded)?;
            }
            PgOutput::Update(u) if !self.skipping => {
                let Some((table, decoded)) = self.decode(u.relation_id, &u.new)? else {
                    return Ok(None);
                };
                let old_key = match u.key.as_ref().or(u.old.as_ref()) {
                    Some(old) => match self.decode(u.relation_id, old)? {
                        Some((_, old)) => Some(self.wire_key(table, &old.row)?.1),
                        None => None,
                    },
                    None => None,
                };
                self.put_row(store, table, old_key, false, decoded)?;
            }
            PgOutput::Delete(d) if !self.skipping => {
                let Some(old) = d.key.as_ref().or(d.old.as_ref()) else {
                    return Ok(None);
                };
                let Some((table, old)) = self.decode(d.relation_id, old)? else {
                    return Ok(None);
                };
                let (_, key) = self.wire_key(table, &old.row)?;
                self.delete_row(store, table, &key)?;
            }
            PgOutput::Truncate(t) if !self.skipping => {
                for rel in t.relation_ids {
                    match self.relations.get(&rel) {
                        Some(Some(map)) => {
                            let table = map.table;
                            self.truncate(store, table)?;
                        }
                        Some(None) => {}
                        None => return Err(IngestError::UnknownRelation(rel)),
                    }
                }
            }
            _ => {}
        }
        Ok(None)
    }

    fn add_relation(&mut self, r: Relation) {
        let map = self.schema.table_index(&r.namespace, &r.name).map(|table| {
            let synced = &self.schema.tables[table];
            let columns: Vec<Option<usize>> =
                r.columns.iter().map(|c| synced.columns.iter().position(|col| col.name == c.name)).collect();
            let missing: Vec<&str> = synced
                .columns
                .iter()
                .enumerate()
                .filter(|(i, _)| !columns.contains(&Some(*i)))
                .map(|(_, c)| c.name.as_str())
                .collect();
            if !missing.is_empty() {
                tracing::warn!(table = %r.name, ?missing, "replicated relation lacks columns the schema was compiled with; they read as NULL until the service restarts");
            }
            RelationMap { table, columns }
        });
        self.relations.insert(r.id, map);
    }

    /// Decodes a tuple of a synced relation into the table's column order.
    fn decode(
        &self,
        relation_id: u32,
        tuple: &Tuple,
    ) -> Result<Option<(usize, DecodedTuple)>, IngestError> {
        let map = match self.relations.get(&relation_id) {
            Some(Some(map)) => map,
            Some(None) => return Ok(None),
            None => return Err(IngestError::UnknownRelation(relation_id)),
        };
        let table = &self.schema.tables[map.table];
        let mut values = vec![None; table.columns.len()];
        let mut unchanged = Vec::new();
        for (pos, value) in tuple.0.iter().enumerate() {
            let Some(Some(col)) = map.columns.get(pos) else {
                continue;
            };
            match value {
                TupleValue::Null => {}
                TupleValue::UnchangedToast => unchanged.push(*col),
                TupleValue::Text(bytes) => {
                    let s = std::str::from_utf8(bytes).map_err(|_| IngestError::Utf8 {
                        table: table.name.clone(),
                        column: table.columns[*col].name.clone(),
                    })?;
                    values[*col] = Some(s.to_string());
                }
                TupleValue::Binary(_) => {
                    return Err(IngestError::Binary {
                        table: table.name.clone(),
                        column: table.columns[*col].name.clone(),
                    });
                }
            }
        }
        Ok(Some((
            map.table,
            DecodedTuple {
                row: TextRow(values),
                unchanged,
            },
        )))
    }

    fn convert(&self, table: usize, col: usize, text: Option<&str>) -> Result<Value, IngestError> {
        let t = &self.schema.tables[table];
        match (text, &t.columns[col].kind) {
            (None, _) => Ok(pgtypes::null_value()),
            (Some(text), Some(kind)) => {
                pgtypes::to_value(kind, text).map_err(|source| IngestError::Convert {
                    table: t.name.clone(),
                    source,
                })
            }
            (Some(text), None) => Ok(Value {
                kind: Some(outpost_proto::v1::value::Kind::Text(text.to_string())),
            }),
        }
    }

    fn wire_key(&self, table: usize, row: &TextRow) -> Result<(Vec<Value>, String), IngestError> {
        let t = &self.schema.tables[table];
        let mut key = Vec::with_capacity(t.primary_key.len());
        for &col in &t.primary_key {
            key.push(self.convert(table, col, row.0[col].as_deref())?);
        }
        let s = key_string(&key);
        Ok((key, s))
    }

    fn wire_row(&self, table: usize, row: &TextRow) -> Result<WireRow, IngestError> {
        let t = &self.schema.tables[table];
        let (key, key_string) = self.wire_key(table, row)?;
        let mut values = Vec::with_capacity(t.synced.len());
        for &col in &t.synced {
            values.push(self.convert(table, col, row.0[col].as_deref())?);
        }
        let hash = row_hash(&t.client_name, &key, &values);
        Ok(WireRow {
            key,
            key_string,
            values,
            hash,
        })
    }

    /// An op as stored: the encoded `RowOp` with `op_id` 0 (the store sets
    /// the id when it reads the op back). One encoding serves every bucket.
    /// `key` and `values` are lent to the message and given back.
    fn op(
        &self,
        table: usize,
        kind: Kind,
        key: &mut Vec<Value>,
        values: &mut Vec<Value>,
    ) -> Vec<u8> {
        let mut msg = RowOp {
            op_id: 0,
            kind: kind as i32,
            table: self.schema.tables[table].client_name.clone(),
            key: std::mem::take(key),
            values: std::mem::take(values),
        };
        let bytes = msg.encode_to_vec();
        *key = std::mem::take(&mut msg.key);
        *values = std::mem::take(&mut msg.values);
        bytes
    }

    /// Loads one row of the initial snapshot.
    pub fn snapshot_row(
        &mut self,
        store: &mut StoreWriter,
        table: usize,
        row: TextRow,
    ) -> Result<(), IngestError> {
        self.put_row(
            store,
            table,
            None,
            true,
            DecodedTuple {
                row,
                unchanged: Vec::new(),
            },
        )
    }

    /// Inserts or updates a row. `old_key` is the key of the old version when
    /// the change carried one (the key may have changed); `maybe_new` says
    /// the row is most likely not mirrored yet (an insert), so it is first
    /// stored as new, and only looked up when that finds its key taken.
    fn put_row(
        &mut self,
        store: &mut StoreWriter,
        table: usize,
        old_key: Option<String>,
        maybe_new: bool,
        mut new: DecodedTuple,
    ) -> Result<(), IngestError> {
        let schema = Arc::clone(&self.schema);
        let tbl = schema.tables[table].client_name.as_str();
        // Unchanged TOAST values come from the old version: look it up first.
        // Otherwise the new version is complete: convert it once.
        let mut old = None;
        let (lookup_key, mut wire) = if new.unchanged.is_empty() {
            let wire = self.wire_row(table, &new.row)?;
            (old_key.unwrap_or_else(|| wire.key_string.clone()), wire)
        } else {
            let lookup_key = match old_key {
                Some(key) => key,
                None => self.wire_key(table, &new.row)?.1,
            };
            let Some(found) = store.mirror_get(tbl, &lookup_key)? else {
                return Err(IngestError::MissingRow {
                    table: tbl.to_string(),
                    key: lookup_key,
                });
            };
            for &col in &new.unchanged {
                new.row.0[col] = found.row.0[col].clone();
            }
            old = Some(found);
            (lookup_key, self.wire_row(table, &new.row)?)
        };
        let mut route = std::mem::take(&mut self.route_buf);
        route.clear();
        self.route(store, table, &new.row, &mut route)?;
        let put = self.op(table, Kind::Put, &mut wire.key, &mut wire.values);
        let key_changed = lookup_key != wire.key_string;
        if old.is_none() {
            if maybe_new
                && !key_changed
                && store.insert_new_row(tbl, &wire.key_string, &new.row, wire.hash, &route, &put)?
            {
                self.ops_written += route.len() as u64;
                self.route_buf = route;
                return self.index_row(store, table, None, Some((&wire.key_string, &new.row)));
            }
            old = store.mirror_get(tbl, &lookup_key)?;
        }

        if let Some(old) = &old {
            if key_changed {
                // The old key leaves every bucket.
                let (mut old_key_values, _) = self.wire_key(table, &old.row)?;
                let op = self.op(table, Kind::Remove, &mut old_key_values, &mut Vec::new());
                for p in &old.placed {
                    store.bucket_remove(&p.bucket, tbl, &lookup_key, &op, (p.op_id, old.hash))?;
                    self.ops_written += 1;
                }
                store.mirror_delete(tbl, &lookup_key)?;
            } else {
                let mut op = None;
                for p in old
                    .placed
                    .iter()
                    .filter(|p| route.binary_search(&p.bucket).is_err())
                {
                    let op = op.get_or_insert_with(|| {
                        self.op(table, Kind::Remove, &mut wire.key, &mut Vec::new())
                    });
                    store.bucket_remove(&p.bucket, tbl, &lookup_key, op, (p.op_id, old.hash))?;
                    self.ops_written += 1;
                }
            }
        }
        let mut placed = Vec::with_capacity(route.len());
        for b in &route {
            let replaces = old
                .as_ref()
                .filter(|_| !key_changed)
                .and_then(|o| o.placed_in(b));
            let op_id = match replaces {
                // The row is there with the same values: its op stands.
                Some((op_id, hash)) if hash == wire.hash => op_id,
                _ => {
                    self.ops_written += 1;
                    store.bucket_put(b, tbl, &wire.key_string, &put, wire.hash, replaces)?
                }
            };
            placed.push(Placed {
                bucket: b.clone(),
                op_id,
            });
        }
        store.mirror_put(tbl, &wire.key_string, &new.row, &placed, wire.hash)?;
        self.route_buf = route;
        let old_row = old.map(|o| (lookup_key, o.row));
        self.index_row(
            store,
            table,
            old_row.as_ref().map(|(k, r)| (k.as_str(), r)),
            Some((wire.key_string.as_str(), &new.row)),
        )
    }

    fn delete_row(
        &mut self,
        store: &mut StoreWriter,
        table: usize,
        key: &str,
    ) -> Result<(), IngestError> {
        let schema = Arc::clone(&self.schema);
        let tbl = schema.tables[table].client_name.as_str();
        let Some(MirrorRow { row, placed, hash }) = store.mirror_get(tbl, key)? else {
            tracing::warn!(table = %tbl, key, "delete of a row the mirror does not hold");
            return Ok(());
        };
        let (mut key_values, _) = self.wire_key(table, &row)?;
        let op = self.op(table, Kind::Remove, &mut key_values, &mut Vec::new());
        for p in &placed {
            store.bucket_remove(&p.bucket, tbl, key, &op, (p.op_id, hash))?;
            self.ops_written += 1;
        }
        store.mirror_delete(tbl, key)?;
        self.index_row(store, table, Some((key, &row)), None)
    }

    fn truncate(&mut self, store: &mut StoreWriter, table: usize) -> Result<(), IngestError> {
        let tbl = self.schema.tables[table].client_name.clone();
        for key in store.mirror_keys(&tbl)? {
            self.delete_row(store, table, &key)?;
        }
        Ok(())
    }
}
