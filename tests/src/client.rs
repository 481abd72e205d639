//! Client sessions for tests: one-shot syncs and long-running sessions.
//!
//! Invariant: a [`BackgroundClient`] is aborted when it drops, so no session
//! outlives its test; aborting is safe for the replica (the client rolls back
//! whatever it had not committed at a checkpoint).

use outpost_client::{ClientError, SyncEvent, SyncOptions, SyncSummary};
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::task::JoinHandle;

/// Options for a test client: quick reconnects, every default shape.
pub(crate) fn options(server: &str, token: &str, db: &Path, once: bool) -> SyncOptions {
    let mut opts = SyncOptions::new(server, token, db);
    opts.once = once;
    opts.backoff_initial = Duration::from_millis(100);
    opts.backoff_max = Duration::from_secs(1);
    opts.connect_timeout = Duration::from_secs(5);
    opts
}

/// Syncs `db` once (until the first checkpoint), giving up after `timeout`.
pub async fn sync_once(
    server: &str,
    token: &str,
    db: &Path,
    timeout: Duration,
) -> anyhow::Result<Result<SyncSummary, ClientError>> {
    let opts = options(server, token, db, true);
    match tokio::time::timeout(timeout, outpost_client::sync(opts)).await {
        Ok(result) => Ok(result),
        Err(_) => anyhow::bail!(
            "a one-shot sync of {} did not finish within {timeout:?}",
            db.display()
        ),
    }
}

/// A long-running client session syncing one replica file.
pub struct BackgroundClient {
    task: Option<JoinHandle<Result<SyncSummary, ClientError>>>,
    events: UnboundedReceiver<SyncEvent>,
    seen: Vec<SyncEvent>,
}

impl BackgroundClient {
    /// Starts syncing `db` from `server` with `token`, forever.
    pub fn start(server: &str, token: &str, db: &Path) -> BackgroundClient {
        let opts = options(server, token, db, false);
        let (tx, events) = unbounded_channel();
        let task = tokio::spawn(outpost_client::sync_with_events(opts, tx));
        BackgroundClient {
            task: Some(task),
            events,
            seen: Vec::new(),
        }
    }

    /// Every event so far.
    pub fn events(&mut self) -> &[SyncEvent] {
        while let Ok(event) = self.events.try_recv() {
            self.seen.push(event);
        }
        &self.seen
    }

    /// Whether the session ended (it only ends on a definite error).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Fails when the session ended, with its result.
    pub async fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(task) = self.task.take_if(|t| t.is_finished()) {
            let result = task.await;
            anyhow::bail!("the client session ended: {result:?}");
        }
        Ok(())
    }

    /// A summary of the events, for failure messages.
    pub fn describe(&mut self) -> String {
        let events = self.events();
        let checkpoints = events
            .iter()
            .filter(|e| matches!(e, SyncEvent::Checkpoint { .. }))
            .count();
        let last: Vec<String> = events
            .iter()
            .filter(|e| !matches!(e, SyncEvent::Progress { .. }))
            .rev()
            .take(8)
            .map(|e| format!("{e:?}"))
            .collect();
        format!(
            "{checkpoints} checkpoints; latest events (newest first): {}",
            last.join("; ")
        )
    }

    /// Stops the session and waits until it is gone.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for BackgroundClient {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
