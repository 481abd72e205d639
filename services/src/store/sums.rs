//! The writer's running summary of each bucket it changes (checksum, row
//! count, last op id), kept in memory and written to the `bucket_sums`
//! table once per store commit instead of being read and written for every op,
//! with the bucket's integer id, which the op index names it by.
//!
//! A summary is stored as a [`Summary::BYTES`]-byte blob, in a table of
//! its own, and written in place through SQLite's incremental blob I/O: a
//! commit whose ops reach thousands of buckets writes thousands of
//! summaries, and an `UPDATE` statement each (decoding and encoding the
//! whole row) cost as much as the ops themselves; rows that hold only the
//! summary are many to a page, so such a commit dirties fewer pages.
//!
//! Invariants:
//! - An entry, once loaded, is the bucket's summary including every op of
//!   the open store transaction; `bucket_sums` catches up when
//!   [`BucketSums::flush`] runs, which the writer does before every commit
//!   and before any statement that reads `bucket_sums`.
//! - After a rollback or a rebuild the entries are dropped ([`BucketSums::clear`]):
//!   they would describe writes that no longer exist.
//! - Flushing never touches a bucket's compaction horizon.
//! - Every entry has its `buckets` and `bucket_sums` rows: a bucket the
//!   store has not seen gets them (and its id) when it is first loaded, in the open
//!   transaction, so a rollback forgets both.
//! - Entries are dropped for memory only between transactions
//!   ([`BucketSums::trim`]), so every bucket the open transaction wrote to
//!   has its entry until it commits.

use super::StoreError;
use rusqlite::{MAIN_DB, OptionalExtension};
use std::collections::HashMap;

/// A bucket's summary as `bucket_sums` stores it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Summary {
    pub checksum: u64,
    pub count: i64,
    pub last_op_id: u64,
}

impl Summary {
    /// The size of a stored summary: three little-endian 64-bit integers.
    pub const BYTES: usize = 24;

    pub fn encode(&self) -> [u8; Self::BYTES] {
        let mut bytes = [0; Self::BYTES];
        bytes[..8].copy_from_slice(&self.checksum.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.count.to_le_bytes());
        bytes[16..].copy_from_slice(&self.last_op_id.to_le_bytes());
        bytes
    }

    /// The summary in a column's `value`; `None` when it holds none.
    pub fn read(value: rusqlite::types::ValueRef<'_>) -> Option<Summary> {
        match value {
            rusqlite::types::ValueRef::Blob(bytes) => Summary::decode(bytes),
            _ => None,
        }
    }

    /// `None` when `bytes` is not a stored summary.
    pub fn decode(bytes: &[u8]) -> Option<Summary> {
        let bytes: &[u8; Self::BYTES] = bytes.try_into().ok()?;
        let word = |i: usize| {
            let mut w = [0; 8];
            w.copy_from_slice(&bytes[i..i + 8]);
            w
        };
        Some(Summary {
            checksum: u64::from_le_bytes(word(0)),
            count: i64::from_le_bytes(word(8)),
            last_op_id: u64::from_le_bytes(word(16)),
        })
    }
}

/// Entries kept across commits; past this, they are dropped at a commit so
/// that memory stays bounded however many buckets exist.
const MAX_KEPT: usize = 65_536;

/// One bucket's summary.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Sum {
    /// The bucket's id in `buckets` (and in the op index).
    pub id: i64,
    pub summary: Summary,
    /// Changed since it was loaded or last flushed.
    dirty: bool,
}

/// The summaries of the buckets the writer has touched: each in a slot,
/// found by the bucket's name (with foldhash, seeded per process: a
/// fraction of SipHash's cost on every op, and names built from row
/// values still cannot be chosen to collide).
#[derive(Default)]
pub(super) struct BucketSums {
    slots: Vec<Sum>,
    by_name: HashMap<String, usize, foldhash::fast::RandomState>,
    /// The slots marked dirty, each once: a flush writes these without
    /// looking at the others (a commit costs what it changed, not how many
    /// buckets are loaded).
    dirty: Vec<usize>,
}

/// The stored summary of bucket `id` (named `bucket`).
///
/// Looked up by id on its own rather than joined to the lookup by name: a
/// join with a bound name made SQLite prepare the statement again at
/// every run (callgrind: 60k instructions each).
pub(super) fn read_summary(
    conn: &rusqlite::Connection,
    id: i64,
    bucket: &str,
) -> Result<Summary, StoreError> {
    conn.prepare_cached("SELECT summary FROM bucket_sums WHERE id = ?1")?
        .query_row([id], |r| Ok(Summary::read(r.get_ref(0)?)))
        .optional()?
        .flatten()
        .ok_or_else(|| StoreError::Summary(bucket.into()))
}

/// Overwrites the summary of bucket `id` through `blob`, opened on the
/// first write and moved to each next row (a handle must not outlive the
/// flush: an open one keeps the transaction from committing).
fn write_summary<'c>(
    conn: &'c rusqlite::Connection,
    blob: &mut Option<rusqlite::blob::Blob<'c>>,
    id: i64,
    summary: &Summary,
) -> Result<(), StoreError> {
    let b = match blob {
        Some(b) => {
            b.reopen(id)?;
            b
        }
        None => blob.insert(conn.blob_open(MAIN_DB, c"bucket_sums", c"summary", id, false)?),
    };
    b.write_all_at(&summary.encode(), 0)?;
    Ok(())
}

impl BucketSums {
    /// Changes the summary of `bucket` with `f`, loading it from the store
    /// on first use (creating its row when the store has none); returns the
    /// bucket's id. Call it inside a store transaction.
    pub fn update(
        &mut self,
        conn: &rusqlite::Connection,
        bucket: &str,
        f: impl FnOnce(&mut Summary),
    ) -> Result<i64, StoreError> {
        let slot = match self.by_name.get(bucket) {
            Some(&slot) => slot,
            None => self.load(conn, bucket)?,
        };
        let sum = &mut self.slots[slot];
        f(&mut sum.summary);
        if !sum.dirty {
            sum.dirty = true;
            self.dirty.push(slot);
        }
        Ok(sum.id)
    }

    /// Loads the summary of `bucket` into a new slot (creating its row
    /// when the store has none); returns the slot.
    fn load(&mut self, conn: &rusqlite::Connection, bucket: &str) -> Result<usize, StoreError> {
        let stored: Option<i64> = conn
            .prepare_cached("SELECT id FROM buckets WHERE bucket = ?1")?
            .query_row([bucket], |r| r.get(0))
            .optional()?;
        let sum = match stored {
            Some(id) => Sum {
                id,
                summary: read_summary(conn, id, bucket)?,
                dirty: false,
            },
            None => {
                conn.prepare_cached("INSERT INTO buckets (bucket, horizon) VALUES (?1, 0)")?
                    .execute([bucket])?;
                let id = conn.last_insert_rowid();
                conn.prepare_cached("INSERT INTO bucket_sums (id, summary) VALUES (?1, ?2)")?
                    .execute(rusqlite::params![id, &Summary::default().encode()[..]])?;
                Sum {
                    id,
                    ..Sum::default()
                }
            }
        };
        let slot = self.slots.len();
        self.slots.push(sum);
        self.by_name.insert(bucket.to_string(), slot);
        Ok(slot)
    }

    /// Loads every bucket's summary when the store has at most
    /// [`MAX_KEPT`] buckets (call it with no entry loaded, outside a
    /// transaction): one scan instead of a lookup by name for each bucket
    /// the first time it changes, which after a restart is every bucket a
    /// backlog reaches. A larger store loads them one by one, as they
    /// change.
    pub fn preload(&mut self, conn: &rusqlite::Connection) -> Result<(), StoreError> {
        let buckets: i64 = conn.query_row("SELECT count(*) FROM buckets", [], |r| r.get(0))?;
        if buckets as usize > MAX_KEPT {
            return Ok(());
        }
        let mut stmt = conn.prepare(
            "SELECT b.id, b.bucket, s.summary FROM buckets b LEFT JOIN bucket_sums s ON s.id = b.id",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let bucket: String = r.get(1)?;
            let summary =
                Summary::read(r.get_ref(2)?).ok_or_else(|| StoreError::Summary(bucket.clone()))?;
            self.by_name.insert(bucket, self.slots.len());
            self.slots.push(Sum {
                id: r.get(0)?,
                summary,
                dirty: false,
            });
        }
        Ok(())
    }

    /// The summary of `bucket`, if it is loaded.
    pub fn get(&self, bucket: &str) -> Option<Sum> {
        self.by_name.get(bucket).map(|&slot| self.slots[slot])
    }

    /// Writes every changed summary to `bucket_sums`, in place.
    pub fn flush(&mut self, conn: &rusqlite::Connection) -> Result<(), StoreError> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut blob = None;
        for (i, &slot) in dirty.iter().enumerate() {
            let sum = &mut self.slots[slot];
            let written = write_summary(conn, &mut blob, sum.id, &sum.summary);
            if let Err(e) = written {
                // What is not written stays dirty, for the next flush.
                self.dirty.extend_from_slice(&dirty[i..]);
                return Err(e);
            }
            sum.dirty = false;
        }
        Ok(())
    }

    /// Drops every entry once there are too many (call it after a flush at
    /// a commit: inside a transaction the entries describe what it wrote).
    pub fn trim(&mut self) {
        if self.slots.len() > MAX_KEPT && self.dirty.is_empty() {
            self.clear();
        }
    }

    /// Forgets every summary (after a rollback or a rebuild).
    pub fn clear(&mut self) {
        self.slots.clear();
        self.by_name.clear();
        self.dirty.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(conn: &rusqlite::Connection) -> Vec<(String, i64)> {
        let mut stmt = conn
            .prepare(
                "SELECT bucket, summary FROM buckets JOIN bucket_sums USING (id) ORDER BY bucket",
            )
            .unwrap();
        stmt.query_map([], |r| {
            let summary = Summary::decode(r.get_ref(1)?.as_blob()?).expect("a summary");
            Ok((r.get(0)?, summary.count))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    #[test]
    fn preloaded_summaries_are_the_stored_ones() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(super::super::SCHEMA).unwrap();
        let mut sums = BucketSums::default();
        conn.execute_batch("BEGIN").unwrap();
        for bucket in ["a", "b", "a"] {
            sums.update(&conn, bucket, |s| {
                s.count += 1;
                s.checksum += 7;
                s.last_op_id += 3;
            })
            .unwrap();
        }
        sums.flush(&conn).unwrap();
        conn.execute_batch("COMMIT").unwrap();
        let mut again = BucketSums::default();
        again.preload(&conn).unwrap();
        for bucket in ["a", "b"] {
            let (was, is) = (sums.get(bucket).unwrap(), again.get(bucket).unwrap());
            assert_eq!((was.id, was.summary), (is.id, is.summary));
        }
        assert!(again.dirty.is_empty());
        // Changing a preloaded bucket builds on its stored summary.
        let id = again.update(&conn, "a", |s| s.count += 1).unwrap();
        assert_eq!(
            (id, again.get("a").unwrap().summary.count),
            (sums.get("a").unwrap().id, 3)
        );
    }

    #[test]
    fn a_flush_writes_each_changed_summary_once_and_nothing_else() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(super::super::SCHEMA).unwrap();
        let mut sums = BucketSums::default();
        for bucket in ["a", "b", "a", "a"] {
            sums.update(&conn, bucket, |s| s.count += 1).unwrap();
        }
        let dirty: Vec<i64> = sums.dirty.iter().map(|&s| sums.slots[s].id).collect();
        let ids = [sums.get("a").unwrap().id, sums.get("b").unwrap().id];
        assert_eq!(dirty, ids, "each bucket is listed once");
        sums.flush(&conn).unwrap();
        assert_eq!(stored(&conn), [("a".into(), 3), ("b".into(), 1)]);
        assert!(sums.dirty.is_empty());

        // Rows changed behind the summaries' back are not rewritten by a
        // flush that has nothing to write…
        let count_99 = Summary {
            count: 99,
            ..Summary::default()
        };
        conn.execute(
            "UPDATE bucket_sums SET summary = ?1",
            [&count_99.encode()[..]],
        )
        .unwrap();
        sums.flush(&conn).unwrap();
        assert_eq!(stored(&conn), [("a".into(), 99), ("b".into(), 99)]);
        // …and only the bucket changed since is.
        sums.update(&conn, "b", |s| s.count += 1).unwrap();
        sums.flush(&conn).unwrap();
        assert_eq!(stored(&conn), [("a".into(), 99), ("b".into(), 2)]);
    }

    #[test]
    fn summaries_round_trip_and_a_damaged_one_names_its_bucket() {
        let summary = Summary {
            checksum: u64::MAX - 1,
            count: 12_345,
            last_op_id: 1 << 40,
        };
        assert_eq!(Summary::decode(&summary.encode()), Some(summary));
        assert_eq!(Summary::decode(&summary.encode()[..23]), None);

        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(super::super::SCHEMA).unwrap();
        conn.execute_batch(
            "INSERT INTO buckets (id, bucket, horizon) VALUES (1, 'short', 0), (2, 'none', 0);
             INSERT INTO bucket_sums (id, summary) VALUES (1, x'0102');",
        )
        .unwrap();
        let mut sums = BucketSums::default();
        let e = sums.update(&conn, "short", |s| s.count += 1).unwrap_err();
        assert_eq!(e.to_string(), "the summary of bucket short is damaged");
        let e = sums.update(&conn, "none", |s| s.count += 1).unwrap_err();
        assert_eq!(e.to_string(), "the summary of bucket none is damaged");
        let e = BucketSums::default().preload(&conn).unwrap_err();
        assert!(
            matches!(&e, StoreError::Summary(b) if b == "short" || b == "none"),
            "{e}"
        );
    }
}
