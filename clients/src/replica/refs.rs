//! Which bucket holds which row: `_outpost_row_refs`, with buckets and
//! tables named by small integer ids (`_outpost_bucket_ids`,
//! `_outpost_table_ids`) and rows by the binary key of [`super::key`]. The
//! `_outpost_rows` view shows the same with names, for people and tools.
//!
//! ```text
//! _outpost_row_refs  (bucket id, table id, key) → hash
//!                    + index (table id, key) once more than ROW_INDEX_BUCKETS buckets
//! ```
//!
//! Whether a row is still held by some bucket is asked when a bucket lets go
//! of it. With few buckets the answer is a primary key probe per bucket id,
//! which costs less than keeping a second b-tree for every row; past
//! [`ROW_INDEX_BUCKETS`] bucket ids the index on (table id, key) is created
//! (in the transaction that adds the bucket) and kept.
//!
//! Invariants:
//! - [`Ids`] mirrors the id tables of the committed state plus the ids the
//!   open transaction created; it is reloaded whenever the transaction is
//!   rolled back, so it never names an id the file does not hold;
//! - a bucket id is deleted together with the last of its references (when
//!   the bucket is dropped), so an id that is used again starts empty;
//! - a replica written before these tables existed has its `_outpost_rows`
//!   table moved into them when it is opened, in the opening transaction.

use super::key::{encode_key, parse_key};
use crate::ClientError;
use rusqlite::{Connection, OptionalExtension};
use std::collections::HashMap;

/// The bookkeeping tables and the view over them.
pub(super) const TABLES: &str = "
CREATE TABLE IF NOT EXISTS _outpost_bucket_ids (
    id INTEGER PRIMARY KEY,
    bucket TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS _outpost_table_ids (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS _outpost_row_refs (
    bucket INTEGER NOT NULL,
    tbl INTEGER NOT NULL,
    key BLOB NOT NULL,
    hash INTEGER NOT NULL,
    PRIMARY KEY (bucket, tbl, key)
) WITHOUT ROWID;
";

/// Past this many bucket ids, `_outpost_row_refs` gets its index by row.
pub(super) const ROW_INDEX_BUCKETS: usize = 32;

const ROW_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS _outpost_row_refs_by_row ON _outpost_row_refs (tbl, key)";

/// `_outpost_rows` as it was: one row per bucket and row, by name.
const VIEW: &str = "
CREATE VIEW IF NOT EXISTS _outpost_rows (bucket, tbl, key, hash) AS
    SELECT b.bucket, t.name, r.key, r.hash FROM _outpost_row_refs r
    JOIN _outpost_bucket_ids b ON b.id = r.bucket
    JOIN _outpost_table_ids t ON t.id = r.tbl;
";

pub(super) const INSERT: &str = "INSERT INTO _outpost_row_refs (bucket, tbl, key, hash) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING";
pub(super) const SELECT: &str =
    "SELECT hash FROM _outpost_row_refs WHERE bucket = ?1 AND tbl = ?2 AND key = ?3";
pub(super) const UPDATE: &str =
    "UPDATE _outpost_row_refs SET hash = ?4 WHERE bucket = ?1 AND tbl = ?2 AND key = ?3";
pub(super) const DELETE: &str =
    "DELETE FROM _outpost_row_refs WHERE bucket = ?1 AND tbl = ?2 AND key = ?3 RETURNING hash";
/// Whether any bucket holds a row, through the index by row.
const HELD_INDEXED: &str = "SELECT 1 FROM _outpost_row_refs INDEXED BY _outpost_row_refs_by_row
     WHERE tbl = ?1 AND key = ?2 LIMIT 1";
/// Whether any bucket holds a row, with a primary key probe per bucket id.
const HELD_PROBED: &str = "SELECT 1 FROM _outpost_row_refs
     WHERE bucket IN (SELECT id FROM _outpost_bucket_ids) AND tbl = ?1 AND key = ?2 LIMIT 1";
pub(super) const DROP_BUCKET: &str =
    "DELETE FROM _outpost_row_refs WHERE bucket = ?1 RETURNING tbl, key";

/// `INSERT` of `rows` references of one bucket and table at once, without
/// a conflict clause: it fails as a whole if any of them is held already.
/// Parameters: ?1 bucket id, ?2 table id, then key and hash per row.
pub(super) fn insert_many_sql(rows: usize) -> String {
    let mut sql = String::from("INSERT INTO _outpost_row_refs (bucket, tbl, key, hash) VALUES ");
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(&format!("(?1, ?2, ?{}, ?{})", 3 + 2 * i, 4 + 2 * i));
    }
    sql
}

/// The integer ids of bucket and table names.
#[derive(Debug, Default)]
pub(super) struct Ids {
    buckets: HashMap<String, i64>,
    tables: HashMap<String, i64>,
    table_names: HashMap<i64, String>,
    /// Whether `_outpost_row_refs_by_row` exists.
    row_index: bool,
}

impl Ids {
    /// Reads the ids of a replica; empty if its file predates them (only a
    /// read-only view can see such a file).
    pub(super) fn load(conn: &Connection) -> Result<Self, ClientError> {
        let mut ids = Ids::default();
        let exists: bool = conn.query_row(
            "SELECT count(*) = 2 FROM sqlite_master WHERE type = 'table'
             AND name IN ('_outpost_bucket_ids', '_outpost_table_ids')",
            [],
            |r| r.get(0),
        )?;
        if !exists {
            return Ok(ids);
        }
        ids.row_index = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'index'
             AND name = '_outpost_row_refs_by_row')",
            [],
            |r| r.get(0),
        )?;
        let mut stmt = conn.prepare("SELECT id, bucket FROM _outpost_bucket_ids")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))? {
            let (id, name) = row?;
            ids.buckets.insert(name, id);
        }
        let mut stmt = conn.prepare("SELECT id, name FROM _outpost_table_ids")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))? {
            let (id, name) = row?;
            ids.tables.insert(name.clone(), id);
            ids.table_names.insert(id, name);
        }
        Ok(ids)
    }

    /// The id of a bucket that holds or held rows, if it has one.
    pub(super) fn bucket(&self, name: &str) -> Option<i64> {
        self.buckets.get(name).copied()
    }

    /// The id of a bucket, created in the open transaction if it has none.
    pub(super) fn bucket_or_create(
        &mut self,
        conn: &Connection,
        name: &str,
    ) -> Result<i64, ClientError> {
        if let Some(id) = self.buckets.get(name) {
            return Ok(*id);
        }
        let id: i64 = conn
            .prepare_cached("INSERT INTO _outpost_bucket_ids (bucket) VALUES (?1) RETURNING id")?
            .query_row([name], |r| r.get(0))?;
        self.buckets.insert(name.to_string(), id);
        self.index_if_many(conn)?;
        Ok(id)
    }

    /// Creates the index by row once there are many buckets.
    fn index_if_many(&mut self, conn: &Connection) -> Result<(), ClientError> {
        if !self.row_index && self.buckets.len() > ROW_INDEX_BUCKETS {
            conn.execute_batch(ROW_INDEX)?;
            self.row_index = true;
        }
        Ok(())
    }

    /// Whether any bucket holds a row.
    pub(super) fn held(
        &self,
        conn: &Connection,
        tbl: i64,
        key: &[u8],
    ) -> Result<bool, ClientError> {
        let sql = if self.row_index {
            HELD_INDEXED
        } else {
            HELD_PROBED
        };
        Ok(conn
            .prepare_cached(sql)?
            .query_row((tbl, key), |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Deletes a bucket's id (its references must be gone).
    pub(super) fn forget_bucket(
        &mut self,
        conn: &Connection,
        name: &str,
    ) -> Result<(), ClientError> {
        if let Some(id) = self.buckets.remove(name) {
            conn.prepare_cached("DELETE FROM _outpost_bucket_ids WHERE id = ?1")?
                .execute([id])?;
        }
        Ok(())
    }

    /// The id of a table, created in the open transaction if it has none.
    pub(super) fn table_or_create(
        &mut self,
        conn: &Connection,
        name: &str,
    ) -> Result<i64, ClientError> {
        if let Some(id) = self.tables.get(name) {
            return Ok(*id);
        }
        let id: i64 = conn
            .prepare_cached("INSERT INTO _outpost_table_ids (name) VALUES (?1) RETURNING id")?
            .query_row([name], |r| r.get(0))?;
        self.tables.insert(name.to_string(), id);
        self.table_names.insert(id, name.to_string());
        Ok(id)
    }

    /// The table an id names.
    pub(super) fn table_name(&self, id: i64) -> Option<&str> {
        self.table_names.get(&id).map(String::as_str)
    }
}

/// Creates the bookkeeping tables, moving the rows of an `_outpost_rows`
/// table (the earlier form) into them. Runs inside the caller's transaction.
pub(super) fn ensure(conn: &Connection) -> Result<(), ClientError> {
    conn.execute_batch(TABLES)?;
    let old_table: bool = conn
        .query_row(
            "SELECT type = 'table' FROM sqlite_master WHERE name = '_outpost_rows'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(false);
    if old_table {
        migrate(conn)?;
    }
    conn.execute_batch(VIEW)?;
    Ok(())
}

/// Moves the rows of the `_outpost_rows` table into `_outpost_row_refs`.
fn migrate(conn: &Connection) -> Result<(), ClientError> {
    let mut ids = Ids::load(conn)?;
    let rows: Vec<(String, String, String, i64)> = {
        let mut stmt = conn.prepare("SELECT bucket, tbl, key, hash FROM _outpost_rows")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut insert = conn.prepare(INSERT)?;
    let mut key = Vec::new();
    for (bucket, tbl, key_str, hash) in &rows {
        let values = parse_key(key_str).ok_or_else(|| {
            ClientError::CorruptReplica(format!(
                "_outpost_rows holds an unreadable key {key_str:?} for table {tbl:?}"
            ))
        })?;
        key.clear();
        encode_key(&mut key, &values);
        let bucket = ids.bucket_or_create(conn, bucket)?;
        let tbl = ids.table_or_create(conn, tbl)?;
        insert.execute((bucket, tbl, &key, hash))?;
    }
    conn.execute_batch("DROP TABLE _outpost_rows")?;
    ids.index_if_many(conn)?;
    tracing::info!(
        rows = rows.len(),
        "moved the replica's row references to _outpost_row_refs"
    );
    Ok(())
}
