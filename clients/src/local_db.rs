//! The app's connection to its replica: plain SQL reads and writes on the
//! synced tables, with every write captured for upload.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let db = outpost_client::LocalDb::open("app.db")?;
//! // One SQLite transaction = one op group, applied all-or-nothing.
//! db.execute("UPDATE todos SET done = 1 WHERE id = ?1", [7])?;
//! # Ok(())
//! # }
//! ```
//!
//! The triggers on the synced tables call SQL functions that only connections
//! opened here (or given to [`LocalDb::attach`]) have: a connection opened
//! any other way can read the replica, but writing a synced table fails with
//! "no such function: outpost_capture". Invariant: every connection this
//! module hands out records its writes, one op group per transaction, and
//! fires the delete triggers of `INSERT OR REPLACE` (`recursive_triggers`).

use crate::ClientError;
use crate::replica::{open_file, register_functions};
use rusqlite::Connection;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::time::Duration;

/// How long a write waits for the replica's write lock (held by the sync
/// writer while it applies a checkpoint) before failing with "database is
/// locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// A capturing SQLite connection to a replica. Dereferences to
/// [`rusqlite::Connection`]; [`LocalDb::into_inner`] hands the connection
/// over (it keeps capturing).
///
/// Don't replace the connection's commit hook: it delimits op groups.
pub struct LocalDb {
    conn: Connection,
}

impl std::fmt::Debug for LocalDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalDb")
            .field("path", &self.conn.path())
            .finish_non_exhaustive()
    }
}

impl LocalDb {
    /// Opens the replica at `path` (creating the file and the replica's own
    /// tables if needed; the synced tables appear with the first sync).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let (conn, _) = open_file(path.as_ref(), true, BUSY_TIMEOUT)?;
        conn.execute_batch("PRAGMA recursive_triggers = ON")?;
        Ok(LocalDb { conn })
    }

    /// Makes an existing connection to a replica capture its writes: registers
    /// the capture functions and the commit hook, and turns on
    /// `recursive_triggers`.
    pub fn attach(conn: &mut Connection) -> Result<(), ClientError> {
        register_functions(conn, true)?;
        conn.execute_batch("PRAGMA recursive_triggers = ON")?;
        Ok(())
    }

    /// The connection, still capturing.
    pub fn into_inner(self) -> Connection {
        self.conn
    }

    /// Runs `sql` (one or more statements) in one transaction, so its writes
    /// form one op group; returns how many rows its INSERT, UPDATE and DELETE
    /// statements changed (not counting what triggers wrote). Rows a
    /// statement returns are discarded. On error nothing is written. The SQL
    /// must not end the transaction itself (BEGIN, COMMIT, ROLLBACK).
    pub fn execute_group(&mut self, sql: &str) -> Result<u64, ClientError> {
        use rusqlite::fallible_iterator::FallibleIterator;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut changed = 0u64;
        {
            let mut batch = rusqlite::Batch::new(&tx, sql);
            while let Some(mut stmt) = batch.next()? {
                let writes = !stmt.readonly();
                let mut rows = stmt.raw_query();
                while rows.next()?.is_some() {}
                drop(rows);
                if tx.is_autocommit() {
                    return Err(ClientError::InvalidStatement(
                        "the SQL ended the transaction itself; leave out BEGIN, COMMIT and \
                         ROLLBACK (the statements before it were committed)"
                            .into(),
                    ));
                }
                if writes {
                    changed += tx.changes();
                }
            }
        }
        tx.commit()?;
        Ok(changed)
    }
}

impl Deref for LocalDb {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl DerefMut for LocalDb {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}
