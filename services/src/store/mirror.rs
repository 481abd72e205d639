//! The mirror side of the writer: each synced row's current version, where
//! it is placed (the buckets holding its PUT op, with the op's id) and the
//! hash of that version.
//!
//! `placed` is stored as text, one `{op id} {bucket}` line per bucket, in
//! the order the caller gave (bucket names never hold a line break: key
//! strings escape control characters).
//!
//! Rows are keyed by table, the key string's length, then the key string:
//! integer keys (`[9]`, `[10]`) then sort as their numbers do, so rows
//! arriving in key order (a snapshot, a bulk insert) are appended to the
//! b-tree instead of splitting pages all over it.

use super::{StoreError, StoreWriter, TextRow};
use rusqlite::params;

/// A bucket a row is in and the id of the row's PUT op there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub bucket: String,
    pub op_id: u64,
}

/// A mirrored row: its value, where it is placed, and the hash of the PUT
/// ops it has there (all of one version).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorRow {
    pub row: TextRow,
    pub placed: Vec<Placed>,
    pub hash: u64,
}

impl MirrorRow {
    /// The row's PUT op in `bucket` (its id and hash), if it is there.
    pub fn placed_in(&self, bucket: &str) -> Option<(u64, u64)> {
        self.placed
            .iter()
            .find(|p| p.bucket == bucket)
            .map(|p| (p.op_id, self.hash))
    }
}

/// Writes a mirror row, replacing the one of the same key.
const UPSERT: &str = "INSERT INTO mirror (tbl, klen, key, row, placed, hash)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
     ON CONFLICT (tbl, klen, key) DO UPDATE SET row = excluded.row,
        placed = excluded.placed, hash = excluded.hash";
/// Writes a mirror row unless one of the same key is there.
const INSERT_NEW: &str = "INSERT INTO mirror (tbl, klen, key, row, placed, hash)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (tbl, klen, key) DO NOTHING";

/// The `klen` column of a key.
fn key_len(key: &str) -> i64 {
    i64::try_from(key.len()).unwrap_or(i64::MAX)
}

fn encode_placed(placed: impl Iterator<Item = (u64, impl AsRef<str>)>) -> String {
    let mut out = String::new();
    for (op_id, bucket) in placed {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&op_id.to_string());
        out.push(' ');
        out.push_str(bucket.as_ref());
    }
    out
}

fn decode_placed(tbl: &str, key: &str, text: &str) -> Result<Vec<Placed>, StoreError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split('\n')
        .map(|line| {
            line.split_once(' ')
                .and_then(|(id, bucket)| {
                    Some(Placed {
                        bucket: bucket.to_string(),
                        op_id: id.parse().ok()?,
                    })
                })
                .ok_or_else(|| StoreError::Mirror {
                    tbl: tbl.to_string(),
                    key: key.to_string(),
                })
        })
        .collect()
}

impl StoreWriter {
    /// The mirrored row, where it is placed and its hash.
    pub fn mirror_get(&mut self, tbl: &str, key: &str) -> Result<Option<MirrorRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT row, placed, hash FROM mirror WHERE tbl = ?1 AND klen = ?2 AND key = ?3",
        )?;
        let mut rows = stmt.query(params![tbl, key_len(key), key])?;
        let Some(r) = rows.next()? else {
            return Ok(None);
        };
        let row = TextRow::decode(r.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?)?;
        let placed = r.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
        let placed = decode_placed(tbl, key, placed)?;
        let hash = r.get::<_, i64>(2)? as u64;
        Ok(Some(MirrorRow { row, placed, hash }))
    }

    /// Stores a row version, where it is now placed and its hash.
    pub fn mirror_put(
        &mut self,
        tbl: &str,
        key: &str,
        row: &TextRow,
        placed: &[Placed],
        hash: u64,
    ) -> Result<(), StoreError> {
        let placed = encode_placed(placed.iter().map(|p| (p.op_id, &p.bucket)));
        self.mirror_insert(UPSERT, tbl, key, row, &placed, hash)?;
        Ok(())
    }

    /// Runs [`UPSERT`] or [`INSERT_NEW`]; returns how many rows it wrote.
    fn mirror_insert(
        &mut self,
        sql: &str,
        tbl: &str,
        key: &str,
        row: &TextRow,
        placed: &str,
        hash: u64,
    ) -> Result<usize, StoreError> {
        Ok(self.conn.prepare_cached(sql)?.execute(params![
            tbl,
            key_len(key),
            key,
            row.encode(),
            placed,
            hash as i64
        ])?)
    }

    /// Stores a row the mirror does not hold and puts it (encoded `RowOp`,
    /// hash `hash`) into `buckets`. Returns false, having written nothing,
    /// when the mirror already holds the key.
    pub fn insert_new_row(
        &mut self,
        tbl: &str,
        key: &str,
        row: &TextRow,
        hash: u64,
        buckets: &[String],
        op: &[u8],
    ) -> Result<bool, StoreError> {
        let first = self.state().last_op_id + 1;
        let placed = encode_placed((first..).zip(buckets));
        let inserted = self.mirror_insert(INSERT_NEW, tbl, key, row, &placed, hash)?;
        if inserted == 0 {
            return Ok(false);
        }
        let first = self.reserve_op_ids(buckets.len() as u64);
        for (op_id, bucket) in (first..).zip(buckets) {
            self.put_op(bucket, tbl, key, op, hash, None, op_id)?;
        }
        Ok(true)
    }

    pub fn mirror_delete(&mut self, tbl: &str, key: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM mirror WHERE tbl = ?1 AND klen = ?2 AND key = ?3")?
            .execute(params![tbl, key_len(key), key])?;
        Ok(())
    }

    /// The keys of every mirrored row of a table.
    pub fn mirror_keys(&mut self, tbl: &str) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key FROM mirror WHERE tbl = ?1")?;
        let rows = stmt.query_map([tbl], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
