//! The membership index and the link index: writes (inside the writer's
//! store transaction) and reads (inside a reader's snapshot). See the
//! module above for what they hold.

use super::{ReadTxn, StoreError, StoreWriter};
use rusqlite::{OptionalExtension, params};

fn index(i: usize) -> i64 {
    i64::try_from(i).unwrap_or(i64::MAX)
}

impl StoreWriter {
    /// Records a new op id as the last change of `(membership, user_key)`.
    fn touch_member(&mut self, membership: usize, user_key: &str) -> Result<(), StoreError> {
        let op_id = self.next_op_id();
        self.touched_member(membership, user_key);
        self.conn
            .prepare_cached(
                "INSERT INTO member_versions (membership, user_key, op_id) VALUES (?1, ?2, ?3)
                 ON CONFLICT (membership, user_key) DO UPDATE SET op_id = excluded.op_id",
            )?
            .execute(params![index(membership), user_key, op_id as i64])?;
        Ok(())
    }

    /// Adds a membership index entry from source row `src`.
    pub fn member_add(
        &mut self,
        membership: usize,
        user_key: &str,
        key: &str,
        src: &str,
    ) -> Result<(), StoreError> {
        let added = self
            .conn
            .prepare_cached(
                "INSERT INTO members (membership, user_key, key, src) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![index(membership), user_key, key, src])?;
        if added > 0 {
            self.touch_member(membership, user_key)?;
        }
        Ok(())
    }

    /// Removes a membership index entry of source row `src`.
    pub fn member_remove(
        &mut self,
        membership: usize,
        user_key: &str,
        key: &str,
        src: &str,
    ) -> Result<(), StoreError> {
        let removed = self
            .conn
            .prepare_cached(
                "DELETE FROM members WHERE membership = ?1 AND user_key = ?2 AND key = ?3 AND src = ?4",
            )?
            .execute(params![index(membership), user_key, key, src])?;
        if removed > 0 {
            self.touch_member(membership, user_key)?;
        }
        Ok(())
    }

    /// Records that child row `child` reaches parent `parent` through hop
    /// source `source`.
    pub fn link_add(&mut self, source: usize, parent: &str, child: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO links (source, parent, child) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            )?
            .execute(params![index(source), parent, child])?;
        Ok(())
    }

    pub fn link_remove(
        &mut self,
        source: usize,
        parent: &str,
        child: &str,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM links WHERE source = ?1 AND parent = ?2 AND child = ?3")?
            .execute(params![index(source), parent, child])?;
        Ok(())
    }

    /// The mirror keys of the rows that reach `parent` through `source`.
    pub fn link_children(
        &mut self,
        source: usize,
        parent: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT child FROM links WHERE source = ?1 AND parent = ?2")?;
        let rows = stmt.query_map(params![index(source), parent], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl ReadTxn<'_> {
    /// The key elements membership `membership` gives `user_key`, sorted.
    pub fn member_keys(
        &self,
        membership: usize,
        user_key: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT DISTINCT key FROM members WHERE membership = ?1 AND user_key = ?2 ORDER BY key",
        )?;
        let rows = stmt.query_map(params![index(membership), user_key], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The op id of the last change of `(membership, user_key)`'s entries (0:
    /// none since the store was built).
    pub fn member_version(&self, membership: usize, user_key: &str) -> Result<u64, StoreError> {
        let v: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT op_id FROM member_versions WHERE membership = ?1 AND user_key = ?2",
            )?
            .query_row(params![index(membership), user_key], |r| r.get(0))
            .optional()?;
        Ok(v.map_or(0, |v| v as u64))
    }
}
