//! Copying the store's write-ahead log into its database file (an SQLite
//! WAL checkpoint) on a thread of its own, so that the writer's commits do
//! not wait for it.
//!
//! ```text
//! writer: COMMIT ─▶ WAL hook: log grew by WAL_PAGES frames? ─▶ wake (coalesced)
//! thread: wake ─▶ PRAGMA wal_checkpoint(PASSIVE) on its own connection
//! ```
//!
//! SQLite's automatic checkpoint runs inside the commit that crossed its
//! threshold, on the thread that ingests the replication stream; a large
//! transaction then paid for copying itself once more before the next one
//! was read.
//!
//! Invariants: the writer's connection has no automatic checkpoint (its WAL
//! hook replaces it; readers never write, so never checkpoint); checkpoints
//! here are PASSIVE: they never block the writer or a reader, and copy what
//! no reader still needs; the thread runs until the [`Checkpointer`] is
//! dropped, which the [`StoreWriter`](super::StoreWriter) does after
//! closing its own connection, so that the thread's connection closes last
//! and SQLite's checkpoint on close leaves the store without a log.

use super::{BUSY_TIMEOUT, StoreError};
use rusqlite::Connection;
use rusqlite::wal::CheckpointMode;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Log frames after which a commit wakes the thread (SQLite's own default
/// for its automatic checkpoint).
const WAL_PAGES: i32 = 1000;

/// The thread that checkpoints the store.
pub(super) struct Checkpointer {
    /// The thread runs while this is held: the hook's own sender goes away
    /// while the writer's connection closes, and the two connections
    /// closing at once would each leave the log to the other.
    wake: Option<mpsc::SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens a second connection on `path` for the thread, and hooks the
    /// writer's commits to it.
    pub(super) fn start(writer: &mut Connection, path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // Reading the header puts the connection in WAL mode: until then a
        // checkpoint through it does nothing.
        conn.query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))
            .map_err(open_err)?;
        let (wake, woken) = mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("outpost-walcopy".into())
            .spawn(move || run(&conn, &woken))
            .map_err(StoreError::Thread)?;
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
            Ok((log, copied)) => tracing::trace!(log, copied, "store log checkpointed"),
            // Another checkpoint was running (the one after a snapshot
            // load): the next commit past the threshold wakes this again.
            Err(e) => tracing::debug!(error = %e, "store log checkpoint did not run"),
        }
    }
}
