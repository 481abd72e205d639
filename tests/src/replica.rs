//! Reading a replica file the way an app does: plain SQL on its typed tables,
//! values read as SQLite stores them and mapped onto wire values.
//!
//! Invariant: [`read_replica`] reads the checkpoint and the rows inside one
//! SQLite read transaction, so the rows are exactly the state at that
//! checkpoint even while a client is writing the file.

use crate::oracle::{Rows, ShapeQuery, quote_ident};
use anyhow::Context;
use outpost_client::{CheckpointState, ClientError, Replica};
use outpost_proto::v1::Value;
use outpost_proto::v1::value::Kind;
use rusqlite::types::Value as SqlValue;
use std::path::Path;

/// A replica's committed state: its checkpoint and one shape's rows.
#[derive(Clone, Debug)]
pub struct ReplicaState {
    /// The last applied checkpoint (`None` before the first).
    pub checkpoint: Option<CheckpointState>,
    /// The rows of the shape's table.
    pub rows: Rows,
}

impl ReplicaState {
    /// The checkpoint's LSN, 0 before the first checkpoint.
    pub fn lsn(&self) -> u64 {
        self.checkpoint.as_ref().map_or(0, |c| c.lsn)
    }

    /// Reads the checkpoint and several shapes' rows of the replica at `path`
    /// in one read transaction (one state of the replica). A missing file or
    /// table reads as "no checkpoint" / no rows.
    pub fn read_tables(
        path: &Path,
        shapes: &[ShapeQuery],
    ) -> anyhow::Result<(Option<CheckpointState>, Vec<Rows>)> {
        let replica = match Replica::open_read_only(path) {
            Ok(r) => r,
            Err(ClientError::NotAReplica { .. }) => {
                let empty = shapes
                    .iter()
                    .map(|s| s.rows_from(Vec::new()))
                    .collect::<anyhow::Result<_>>()?;
                return Ok((None, empty));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("opening replica {}", path.display()));
            }
        };
        let conn = replica.connection();
        conn.execute_batch("BEGIN")?;
        let result = (|| -> anyhow::Result<(Option<CheckpointState>, Vec<Rows>)> {
            let checkpoint = replica.checkpoint()?;
            let mut all = Vec::with_capacity(shapes.len());
            for shape in shapes {
                all.push(shape.rows_from(table_rows(conn, shape)?)?);
            }
            Ok((checkpoint, all))
        })();
        let _ = conn.execute_batch("COMMIT");
        result
    }
}

/// Maps a SQLite value onto the wire value it stores.
fn wire_value(value: SqlValue) -> Value {
    let kind = match value {
        SqlValue::Null => Kind::Null(true),
        SqlValue::Integer(i) => Kind::Integer(i),
        SqlValue::Real(f) => Kind::Real(f),
        SqlValue::Text(t) => Kind::Text(t),
        SqlValue::Blob(b) => Kind::Blob(b),
    };
    Value { kind: Some(kind) }
}

/// Reads the checkpoint and the shape's rows of the replica at `path` in one
/// read transaction. A missing file, a file without replica tables and a
/// missing typed table all read as "no checkpoint / no rows".
pub fn read_replica(path: &Path, shape: &ShapeQuery) -> anyhow::Result<ReplicaState> {
    let empty = || -> anyhow::Result<ReplicaState> {
        Ok(ReplicaState {
            checkpoint: None,
            rows: shape.rows_from(Vec::new())?,
        })
    };
    let replica = match Replica::open_read_only(path) {
        Ok(r) => r,
        Err(ClientError::NotAReplica { .. }) => return empty(),
        Err(e) => {
            return Err(e).with_context(|| format!("opening replica {}", path.display()));
        }
    };
    let conn = replica.connection();
    conn.execute_batch("BEGIN")?;
    let result = (|| -> anyhow::Result<ReplicaState> {
        let checkpoint = replica.checkpoint()?;
        let rows = table_rows(conn, shape)?;
        Ok(ReplicaState {
            checkpoint,
            rows: shape.rows_from(rows)?,
        })
    })();
    let _ = conn.execute_batch("COMMIT");
    result
}

/// The shape's rows in the replica at `path` (empty when there is none yet).
pub fn replica_rows(path: &Path, shape: &ShapeQuery) -> anyhow::Result<Rows> {
    Ok(read_replica(path, shape)?.rows)
}

fn table_rows(conn: &rusqlite::Connection, shape: &ShapeQuery) -> anyhow::Result<Vec<Vec<Value>>> {
    let exists: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [&shape.table],
        |r| r.get(0),
    )?;
    if exists == 0 {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {} FROM {}",
        shape.select_list(),
        quote_ident(&shape.table)
    );
    let mut statement = conn
        .prepare(&sql)
        .with_context(|| format!("reading the replica: {sql}"))?;
    let n = shape.columns.len();
    let rows = statement.query_map([], |row| {
        (0..n)
            .map(|i| row.get::<_, SqlValue>(i).map(wire_value))
            .collect::<rusqlite::Result<Vec<Value>>>()
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}
