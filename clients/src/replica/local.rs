//! Rows with local changes: keeping their server values and rebuilding what
//! the app sees from them.
//!
//! A row the app changed is shown as its server values (`_outpost_shadow`)
//! with every pending op on it applied on top, in outbox id order: the ops
//! the service applied but no checkpoint has brought back yet
//! (`_outpost_pending`), then the ops not answered yet (`_outpost_outbox`).
//! Re-applying an op means: INSERT writes its values over the row, DELETE
//! removes it, UPDATE writes the changed columns, except that a `counter`
//! column moves by the op's delta (new − before) from the value it has now.
//!
//! Invariants:
//! - a row is rebuilt whenever its server values or its pending ops change,
//!   inside the transaction that changed them, so readers only see rows with
//!   every pending op applied;
//! - a rebuild that finds no pending op left drops the shadow entry: the row
//!   then simply is its server values.

use super::key::parse_key;
use super::schema::{TableDef, quote_ident};
use super::values::{
    Sql, counter_add, counter_delta, decode_columns, encode_columns, from_sql, null,
};
use super::{Pending, Replica};
use crate::ClientError;
use outpost_proto::v1::Value;
use rusqlite::{Connection, OptionalExtension};

/// One stored local op, decoded.
#[derive(Debug, Clone)]
pub(crate) struct StoredOp {
    /// INSERT, UPDATE or DELETE.
    pub(crate) kind: String,
    /// INSERT: every column; UPDATE: the changed columns, new values.
    pub(crate) columns: Vec<(String, Value)>,
    /// UPDATE: the changed columns' old values; DELETE: the whole old row.
    pub(crate) before: Vec<(String, Value)>,
}

impl StoredOp {
    /// Decodes the `kind`, `columns` and `before` columns of an outbox row.
    pub(crate) fn decode(
        kind: String,
        columns: Option<String>,
        before: Option<String>,
    ) -> Result<Self, ClientError> {
        let decode = |json: Option<String>| -> Result<Vec<(String, Value)>, ClientError> {
            match json {
                None => Ok(Vec::new()),
                Some(j) => decode_columns(&j).ok_or_else(|| {
                    ClientError::CorruptReplica(format!("unreadable column values {j:?}"))
                }),
            }
        };
        if !matches!(kind.as_str(), "INSERT" | "UPDATE" | "DELETE") {
            return Err(ClientError::CorruptReplica(format!(
                "a local op has kind {kind:?}"
            )));
        }
        Ok(StoredOp {
            kind,
            columns: decode(columns)?,
            before: decode(before)?,
        })
    }

    /// The old value of a changed column.
    pub(crate) fn before(&self, name: &str) -> Option<&Value> {
        self.before.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

fn key_row(row: (&str, &str)) -> (String, String) {
    (row.0.to_string(), row.1.to_string())
}

/// Records new server values for a row with local changes (PUT).
pub(super) fn shadow_put(
    conn: &Connection,
    pending: &mut Pending,
    table: &TableDef,
    key: &str,
    values: &[Value],
) -> Result<(), ClientError> {
    if !pending.shadow {
        return Ok(());
    }
    let kept = conn
        .prepare_cached("SELECT 1 FROM _outpost_shadow WHERE tbl = ?1 AND key = ?2")?
        .query_row((&table.name, key), |_| Ok(()))
        .optional()?
        .is_some();
    if kept {
        let data = encode_columns(
            table
                .columns
                .iter()
                .zip(values)
                .map(|(c, v)| (c.name.as_str(), v)),
        );
        conn.prepare_cached("UPDATE _outpost_shadow SET data = ?3 WHERE tbl = ?1 AND key = ?2")?
            .execute((&table.name, key, data))?;
        pending.touched.insert(key_row((&table.name, key)));
    }
    Ok(())
}

/// Records that the server no longer gives the user a row with local changes.
pub(super) fn shadow_gone(
    conn: &Connection,
    pending: &mut Pending,
    tbl: &str,
    key: &str,
) -> Result<(), ClientError> {
    if !pending.shadow {
        return Ok(());
    }
    let changed = conn
        .prepare_cached("UPDATE _outpost_shadow SET data = NULL WHERE tbl = ?1 AND key = ?2")?
        .execute((tbl, key))?;
    if changed > 0 {
        pending.touched.insert(key_row((tbl, key)));
    }
    Ok(())
}

/// `"a" = ?n AND "b" = ?n+1 …` over the primary key.
fn key_condition(table: &TableDef, first: usize) -> String {
    table
        .primary_key
        .iter()
        .enumerate()
        .map(|(i, &c)| format!("{} = ?{}", quote_ident(&table.columns[c].name), first + i))
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn delete_row(conn: &Connection, table: &TableDef, key: &[Value]) -> Result<(), ClientError> {
    let mut delete = conn.prepare_cached(&table.delete_sql)?;
    for (i, v) in key.iter().enumerate() {
        delete.raw_bind_parameter(i + 1, Sql(v))?;
    }
    delete.raw_execute()?;
    Ok(())
}

/// Writes a whole row: the named values, NULL for columns not named, the key
/// columns from `key`.
fn upsert_row(
    conn: &Connection,
    table: &TableDef,
    key: &[Value],
    columns: &[(String, Value)],
) -> Result<(), ClientError> {
    let mut row = vec![null(); table.columns.len()];
    for (name, value) in columns {
        if let Some((i, _)) = table.column(name) {
            row[i] = value.clone();
        }
    }
    for (k, &i) in table.primary_key.iter().enumerate() {
        if let Some(v) = key.get(k) {
            row[i] = v.clone();
        }
    }
    let mut upsert = conn.prepare_cached(&table.upsert_sql)?;
    for (i, v) in row.iter().enumerate() {
        upsert.raw_bind_parameter(i + 1, Sql(v))?;
    }
    upsert.raw_execute()?;
    Ok(())
}

/// The current value of one column of a row; `None` if the row is absent.
fn current_value(
    conn: &Connection,
    table: &TableDef,
    key: &[Value],
    column: &str,
) -> Result<Option<Value>, ClientError> {
    let sql = format!(
        "SELECT {} FROM {} WHERE {}",
        quote_ident(column),
        quote_ident(&table.name),
        key_condition(table, 1)
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    for (i, v) in key.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, Sql(v))?;
    }
    let mut rows = stmt.raw_query();
    Ok(match rows.next()? {
        Some(row) => Some(from_sql(row.get_ref(0)?)),
        None => None,
    })
}

/// Applies one local op to the typed row again.
fn reapply(
    conn: &Connection,
    table: &TableDef,
    key: &[Value],
    op: &StoredOp,
) -> Result<(), ClientError> {
    match op.kind.as_str() {
        "INSERT" => upsert_row(conn, table, key, &op.columns),
        "DELETE" => delete_row(conn, table, key),
        _ => {
            let mut sets = Vec::new();
            let mut params: Vec<Value> = Vec::new();
            for (name, new) in &op.columns {
                let Some((i, column)) = table.column(name) else {
                    continue;
                };
                if table.primary_key.contains(&i) {
                    continue;
                }
                let value = if column.is_counter() {
                    let Some(current) = current_value(conn, table, key, name)? else {
                        return Ok(());
                    };
                    counter_delta(new, op.before(name))
                        .and_then(|delta| counter_add(&current, &delta))
                        .unwrap_or_else(|| new.clone())
                } else {
                    new.clone()
                };
                params.push(value);
                sets.push(format!("{} = ?{}", quote_ident(name), params.len()));
            }
            if sets.is_empty() {
                return Ok(());
            }
            let sql = format!(
                "UPDATE {} SET {} WHERE {}",
                quote_ident(&table.name),
                sets.join(", "),
                key_condition(table, params.len() + 1)
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            for (i, v) in params.iter().chain(key).enumerate() {
                stmt.raw_bind_parameter(i + 1, Sql(v))?;
            }
            stmt.raw_execute()?;
            Ok(())
        }
    }
}

impl Replica {
    /// The pending ops of a row, in the order they were made.
    pub(super) fn pending_ops(&self, tbl: &str, key: &str) -> Result<Vec<StoredOp>, ClientError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, kind, columns, before FROM _outpost_pending WHERE tbl = ?1 AND key = ?2
             UNION ALL
             SELECT id, kind, columns, before FROM _outpost_outbox WHERE tbl = ?1 AND key = ?2
             ORDER BY 1",
        )?;
        let rows = stmt.query_map((tbl, key), |r| Ok((r.get(1)?, r.get(2)?, r.get(3)?)))?;
        let mut ops = Vec::new();
        for row in rows {
            let (kind, columns, before) = row?;
            ops.push(StoredOp::decode(kind, columns, before)?);
        }
        Ok(ops)
    }

    /// Rebuilds a row with local changes from its server values and its
    /// pending ops; forgets its server values once no op is pending. Does
    /// nothing for a row without local changes.
    pub(super) fn rebuild_row(&self, tbl: &str, key_str: &str) -> Result<(), ClientError> {
        let server: Option<Option<String>> = self
            .conn
            .prepare_cached("SELECT data FROM _outpost_shadow WHERE tbl = ?1 AND key = ?2")?
            .query_row((tbl, key_str), |r| r.get(0))
            .optional()?;
        let Some(server) = server else {
            return Ok(());
        };
        let ops = self.pending_ops(tbl, key_str)?;
        if let Some(table) = self.tables.get(tbl) {
            let key = parse_key(key_str).ok_or_else(|| {
                ClientError::CorruptReplica(format!(
                    "a local change of table {tbl:?} has an unreadable key {key_str:?}"
                ))
            })?;
            match server {
                None => delete_row(&self.conn, table, &key)?,
                Some(json) => {
                    let columns = decode_columns(&json).ok_or_else(|| {
                        ClientError::CorruptReplica(format!(
                            "the server values of {tbl} {key_str} are unreadable"
                        ))
                    })?;
                    upsert_row(&self.conn, table, &key, &columns)?;
                }
            }
            for op in &ops {
                reapply(&self.conn, table, &key, op)?;
            }
        } else {
            tracing::warn!(table = %tbl, "a local change names a table the replica does not define");
        }
        if ops.is_empty() {
            self.conn
                .prepare_cached("DELETE FROM _outpost_shadow WHERE tbl = ?1 AND key = ?2")?
                .execute((tbl, key_str))?;
        }
        Ok(())
    }
}
