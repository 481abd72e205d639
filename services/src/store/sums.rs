//! The writer's running summary of each bucket it changes (checksum, row
//! count, last op id), kept in memory and written to the `buckets` table
//! once per store commit instead of being read and written for every op,
//! with the bucket's integer id, which the op index names it by.
//!
//! Invariants:
//! - An entry, once loaded, is the bucket's summary including every op of
//!   the open store transaction; the `buckets` table catches up when
//!   [`BucketSums::flush`] runs, which the writer does before every commit
//!   and before any statement that reads `buckets`.
//! - After a rollback or a rebuild the entries are dropped ([`BucketSums::clear`]):
//!   they would describe writes that no longer exist.
//! - Flushing never touches a bucket's compaction horizon.
//! - Every entry has its `buckets` row: a bucket the store has not seen
//!   gets one (and its id) when it is first loaded, in the open
//!   transaction, so a rollback forgets both.
//! - Entries are dropped for memory only between transactions
//!   ([`BucketSums::trim`]), so every bucket the open transaction wrote to
//!   has its entry until it commits.

use super::StoreError;
use rusqlite::{OptionalExtension, params};
use std::collections::HashMap;

/// Entries kept across commits; past this, they are dropped at a commit so
/// that memory stays bounded however many buckets exist.
const MAX_KEPT: usize = 65_536;

/// One bucket's summary.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Sum {
    /// The bucket's id in `buckets` (and in the op index).
    pub id: i64,
    pub checksum: u64,
    pub count: i64,
    pub last_op_id: u64,
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

impl BucketSums {
    /// Changes the summary of `bucket` with `f`, loading it from the store
    /// on first use (creating its row when the store has none); returns the
    /// bucket's id. Call it inside a store transaction.
    pub fn update(
        &mut self,
        conn: &rusqlite::Connection,
        bucket: &str,
        f: impl FnOnce(&mut Sum),
    ) -> Result<i64, StoreError> {
        let slot = match self.by_name.get(bucket) {
            Some(&slot) => slot,
            None => self.load(conn, bucket)?,
        };
        let sum = &mut self.slots[slot];
        f(sum);
        if !sum.dirty {
            sum.dirty = true;
            self.dirty.push(slot);
        }
        Ok(sum.id)
    }

    /// Loads the summary of `bucket` into a new slot (creating its row
    /// when the store has none); returns the slot.
    fn load(&mut self, conn: &rusqlite::Connection, bucket: &str) -> Result<usize, StoreError> {
        let stored: Option<(i64, i64, i64, i64)> = conn
            .prepare_cached(
                "SELECT id, checksum, count, last_op_id FROM buckets WHERE bucket = ?1",
            )?
            .query_row([bucket], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        let sum = match stored {
            Some((id, c, n, op)) => Sum {
                id,
                checksum: c as u64,
                count: n,
                last_op_id: op as u64,
                dirty: false,
            },
            None => Sum {
                id: conn
                    .prepare_cached(
                        "INSERT INTO buckets (bucket, checksum, count, last_op_id, horizon)
                         VALUES (?1, 0, 0, 0, 0) RETURNING id",
                    )?
                    .query_row([bucket], |r| r.get(0))?,
                ..Sum::default()
            },
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
        let mut stmt =
            conn.prepare("SELECT id, bucket, checksum, count, last_op_id FROM buckets")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let sum = Sum {
                id: r.get(0)?,
                checksum: r.get::<_, i64>(2)? as u64,
                count: r.get(3)?,
                last_op_id: r.get::<_, i64>(4)? as u64,
                dirty: false,
            };
            self.by_name.insert(r.get(1)?, self.slots.len());
            self.slots.push(sum);
        }
        Ok(())
    }

    /// The summary of `bucket`, if it is loaded.
    pub fn get(&self, bucket: &str) -> Option<Sum> {
        self.by_name.get(bucket).map(|&slot| self.slots[slot])
    }

    /// Writes every changed summary to the `buckets` table.
    pub fn flush(&mut self, conn: &rusqlite::Connection) -> Result<(), StoreError> {
        let mut stmt = conn.prepare_cached(
            "UPDATE buckets SET checksum = ?2, count = ?3, last_op_id = ?4 WHERE id = ?1",
        )?;
        let dirty = std::mem::take(&mut self.dirty);
        for (i, &slot) in dirty.iter().enumerate() {
            let sum = &mut self.slots[slot];
            let written = stmt.execute(params![
                sum.id,
                sum.checksum as i64,
                sum.count,
                sum.last_op_id as i64
            ]);
            if let Err(e) = written {
                // What is not written stays dirty, for the next flush.
                self.dirty.extend_from_slice(&dirty[i..]);
                return Err(e.into());
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
            .prepare("SELECT bucket, count FROM buckets ORDER BY bucket")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
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
            assert_eq!(
                (was.id, was.checksum, was.count, was.last_op_id),
                (is.id, is.checksum, is.count, is.last_op_id)
            );
        }
        assert!(again.dirty.is_empty());
        // Changing a preloaded bucket builds on its stored summary.
        let id = again.update(&conn, "a", |s| s.count += 1).unwrap();
        assert_eq!(
            (id, again.get("a").unwrap().count),
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
        conn.execute("UPDATE buckets SET count = 99", []).unwrap();
        sums.flush(&conn).unwrap();
        assert_eq!(stored(&conn), [("a".into(), 99), ("b".into(), 99)]);
        // …and only the bucket changed since is.
        sums.update(&conn, "b", |s| s.count += 1).unwrap();
        sums.flush(&conn).unwrap();
        assert_eq!(stored(&conn), [("a".into(), 99), ("b".into(), 2)]);
    }
}
