//! Copying the replica's write-ahead log back into the database file (an
//! SQLite WAL checkpoint, not a sync checkpoint) on a thread of its own, so
//! that the sync writer's commits do not wait for it.
//!
//! ```text
//! sync writer: COMMIT ─▶ WAL hook: log grew by WAL_PAGES frames? ─▶ wake (coalesced)
//! wal thread:  wake ─▶ PRAGMA wal_checkpoint(PASSIVE) on its own connection
//! ```
//!
//! SQLite's own automatic checkpoint runs inside the commit that crossed the
//! threshold: after a large sync, the commit that makes the rows visible
//! also copied them all once more. Here the rows are readable as soon as
//! they are in the log, and the copy happens beside the next batches.
//!
//! Invariants: the writer's connection has no automatic checkpoint (its WAL
//! hook replaces it), every other connection keeps its own; a checkpoint
//! here is PASSIVE, so it never blocks a writer or a reader and never waits
//! for one; the thread runs until the [`Checkpointer`] is dropped, which
//! the [`Replica`](super::Replica) does after closing the writer's
//! connection, so that the last connection to close is this one and
//! SQLite's checkpoint on close leaves the file without a log.

use crate::ClientError;
use rusqlite::Connection;
use rusqlite::wal::CheckpointMode;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Log frames after which a commit wakes the thread (SQLite's own default
/// for its automatic checkpoint).
const WAL_PAGES: i32 = 1000;

/// The thread that checkpoints one replica file.
#[derive(Debug)]
pub(super) struct Checkpointer {
    /// Keeps the thread running until this is dropped, whatever becomes of
    /// the hook's sender: the writer's connection drops it while it closes,
    /// and the two connections closing at once would each leave the log to
    /// the other.
    wake: Option<mpsc::SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens a second connection on `path` for the thread, and hooks the
    /// writer's commits (`writer`) to it.
    pub(super) fn start(writer: &mut Connection, path: &Path) -> Result<Self, ClientError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        // Reading the file's header puts the connection in WAL mode: until
        // then a checkpoint through it does nothing.
        conn.query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))?;
        let (wake, woken) = mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("outpost-walcopy".into())
            .spawn(move || run(&conn, &woken))
            .map_err(|e| ClientError::Writer(format!("cannot start the WAL thread: {e}")))?;
        let hook = wake.clone();
        // The log's length when the thread was last woken: a checkpoint
        // does not shorten the log, the next transaction that finds it all
        // copied starts it over, so the thread is woken again only once the
        // log grew by another WAL_PAGES frames (or started over and did).
        let mut woken_at = 0;
        writer.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: i32| {
            if pages < woken_at {
                woken_at = 0;
            }
            if pages >= woken_at + WAL_PAGES {
                woken_at = pages;
                // Full: a wake-up is already queued, which is enough.
                let _ = hook.try_send(());
            }
            Ok(())
        }))?;
        Ok(Checkpointer {
            wake: Some(wake),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.wake = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(conn: &Connection, woken: &mpsc::Receiver<()>) {
    while woken.recv().is_ok() {
        match conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
            Ok((log, copied)) => tracing::trace!(log, copied, "replica log checkpointed"),
            // Another connection's checkpoint was running: the next commit
            // past the threshold wakes this one again.
            Err(e) => tracing::debug!(error = %e, "replica log checkpoint did not run"),
        }
    }
}
