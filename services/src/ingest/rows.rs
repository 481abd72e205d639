//! Row-level apply: one replicated change at a time, against the store's open
//! transaction. See the module above for the invariants.

mod graph;

use crate::lsn::Lsn;
use crate::pgtypes::{self, ConvertError};
use crate::replication::{PgOutput, Relation, Tuple, TupleValue};
use crate::schema::CompiledSchema;
use crate::store::{StoreError, StoreWriter, TextRow};
use outpost_proto::v1::{RowOp, Value, row_op::Kind};
use outpost_proto::{key_string, row_hash};
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
                self.put_row(store, table, None, decoded)?;
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
                self.put_row(store, table, old_key, decoded)?;
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

    fn op(&self, table: usize, kind: Kind, key: Vec<Value>, values: Vec<Value>) -> RowOp {
        RowOp {
            op_id: 0,
            kind: kind as i32,
            table: self.schema.tables[table].client_name.clone(),
            key,
            values,
        }
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
            DecodedTuple {
                row,
                unchanged: Vec::new(),
            },
        )
    }

    /// Inserts or updates a row. `old_key` is the key of the old version when
    /// the change carried one (the key may have changed).
    fn put_row(
        &mut self,
        store: &mut StoreWriter,
        table: usize,
        old_key: Option<String>,
        mut new: DecodedTuple,
    ) -> Result<(), IngestError> {
        let schema = Arc::clone(&self.schema);
        let tbl = schema.tables[table].client_name.as_str();
        // Without unchanged TOAST values the new version is complete: convert
        // it once and look the old version up under its key.
        let (lookup_key, old, wire) = if new.unchanged.is_empty() {
            let wire = self.wire_row(table, &new.row)?;
            let lookup_key = old_key.unwrap_or_else(|| wire.key_string.clone());
            let old = store.mirror_get(tbl, &lookup_key)?;
            (lookup_key, old, wire)
        } else {
            let lookup_key = match old_key {
                Some(key) => key,
                None => self.wire_key(table, &new.row)?.1,
            };
            let old = store.mirror_get(tbl, &lookup_key)?;
            let Some((old_row, _)) = &old else {
                return Err(IngestError::MissingRow {
                    table: tbl.to_string(),
                    key: lookup_key,
                });
            };
            for &col in &new.unchanged {
                new.row.0[col] = old_row.0[col].clone();
            }
            (lookup_key, old, self.wire_row(table, &new.row)?)
        };
        let mut route = std::mem::take(&mut self.route_buf);
        route.clear();
        self.route(store, table, &new.row, &mut route)?;

        let key_changed = lookup_key != wire.key_string;
        let mut old_buckets: &[String] = &[];
        let mut same_values = false;
        if let Some((old_row, buckets)) = &old {
            same_values = !key_changed && self.wire_row(table, old_row)?.hash == wire.hash;
            if key_changed {
                let (old_key_values, _) = self.wire_key(table, old_row)?;
                let op = self.op(table, Kind::Remove, old_key_values, Vec::new());
                for b in buckets {
                    store.bucket_remove(b, tbl, &lookup_key, &op)?;
                    self.ops_written += 1;
                }
                store.mirror_delete(tbl, &lookup_key)?;
            } else {
                let mut op = None;
                for b in buckets.iter().filter(|b| route.binary_search(b).is_err()) {
                    let op = op.get_or_insert_with(|| {
                        self.op(table, Kind::Remove, wire.key.clone(), Vec::new())
                    });
                    store.bucket_remove(b, tbl, &lookup_key, op)?;
                    self.ops_written += 1;
                }
            }
            old_buckets = buckets;
        }
        let op = self.op(table, Kind::Put, wire.key, wire.values);
        for b in &route {
            if same_values && old_buckets.contains(b) {
                continue;
            }
            store.bucket_put(b, tbl, &wire.key_string, &op, wire.hash)?;
            self.ops_written += 1;
        }
        store.mirror_put(tbl, &wire.key_string, &new.row, &route)?;
        self.route_buf = route;
        let old_row = old.map(|(row, _)| (lookup_key, row));
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
        let Some((old_row, buckets)) = store.mirror_get(tbl, key)? else {
            tracing::warn!(table = %tbl, key, "delete of a row the mirror does not hold");
            return Ok(());
        };
        let (key_values, _) = self.wire_key(table, &old_row)?;
        let op = self.op(table, Kind::Remove, key_values, Vec::new());
        for b in &buckets {
            store.bucket_remove(b, tbl, key, &op)?;
            self.ops_written += 1;
        }
        store.mirror_delete(tbl, key)?;
        self.index_row(store, table, Some((key, &old_row)), None)
    }

    fn truncate(&mut self, store: &mut StoreWriter, table: usize) -> Result<(), IngestError> {
        let tbl = self.schema.tables[table].client_name.clone();
        for (key, _) in store.mirror_keys(&tbl)? {
            self.delete_row(store, table, &key)?;
        }
        Ok(())
    }
}
