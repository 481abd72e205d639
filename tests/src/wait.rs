//! Waiting for a replica to catch up with Postgres.
//!
//! [`wait_for_replica`] reads `pg_current_wal_lsn()` once (the target), then
//! repeatedly advances the replica (a one-shot sync, or nothing when a
//! long-running client is syncing it) and compares it with the oracle. It
//! succeeds when the replica's checkpoint LSN is at or past the target AND its
//! rows equal the oracle's, and fails after the timeout with a diff.
//!
//! Invariant: success is never decided on timing, only on the LSN and the
//! rows; the timeout only bounds how long a broken pipeline can hang a test.

use crate::client::options;
use crate::oracle::{Oracle, Rows, ShapeQuery, diff_rows};
use crate::replica::{ReplicaState, read_replica};
use outpost_client::{ClientError, format_lsn};
use std::path::Path;
use std::time::{Duration, Instant};

/// How the replica moves forward while waiting.
pub enum Advance<'a> {
    /// A long-running client is syncing the file; just poll it.
    Background,
    /// Run one-shot syncs (new sessions that resume from the replica's
    /// cursors) against `server` with `token`.
    Once { server: &'a str, token: &'a str },
}

/// What a successful wait saw.
#[derive(Clone, Debug)]
pub struct Synced {
    /// The replica's checkpoint LSN.
    pub lsn: u64,
    /// The target: `pg_current_wal_lsn()` when the wait began.
    pub target: u64,
    /// The replica's rows (equal to the oracle's).
    pub rows: Rows,
    /// Rows received by the one-shot syncs of this wait.
    pub rows_received: u64,
    /// One-shot syncs run.
    pub syncs: u64,
}

/// Waits until the replica at `db` holds a checkpoint at or past the current
/// WAL position and equals the oracle for `shape`. See the module docs.
pub async fn wait_for_replica(
    oracle: &Oracle,
    shape: &ShapeQuery,
    db: &Path,
    advance: Advance<'_>,
    timeout: Duration,
) -> anyhow::Result<Synced> {
    let target = oracle.current_lsn().await?;
    let deadline = Instant::now() + timeout;
    let mut rows_received = 0u64;
    let mut syncs = 0u64;
    let mut last_sync_error: Option<String> = None;
    let (state, expected): (ReplicaState, Rows) = loop {
        if let Advance::Once { server, token } = &advance {
            let left = deadline.saturating_duration_since(Instant::now());
            let opts = options(server, token, db, true);
            match tokio::time::timeout(left, outpost_client::sync(opts)).await {
                Ok(Ok(summary)) => {
                    syncs += 1;
                    rows_received += summary.rows_received;
                }
                Ok(Err(e @ (ClientError::Unauthenticated(_) | ClientError::InvalidRequest(_)))) => {
                    anyhow::bail!("syncing {} failed for good: {e}", db.display());
                }
                Ok(Err(e)) => last_sync_error = Some(e.to_string()),
                Err(_) => last_sync_error = Some("the one-shot sync timed out".into()),
            }
        }
        let state = read_replica(db, shape)?;
        let expected = oracle.rows(shape).await?;
        if state.lsn() >= target && state.rows == expected {
            return Ok(Synced {
                lsn: state.lsn(),
                target,
                rows: state.rows,
                rows_received,
                syncs,
            });
        }
        if Instant::now() >= deadline {
            break (state, expected);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    };
    let diff = diff_rows(&expected, &state.rows);
    anyhow::bail!(
        "replica {} did not catch up within {timeout:?}: its checkpoint is {:?} (LSN {}), the target LSN is {}; \
         {syncs} one-shot syncs, last sync error: {}\n{}",
        db.display(),
        state.checkpoint,
        format_lsn(state.lsn()),
        format_lsn(target),
        last_sync_error.as_deref().unwrap_or("none"),
        if diff.is_empty() {
            "the rows are equal".to_string()
        } else {
            format!("rows differ from the oracle ({}):\n{diff}", shape.table)
        }
    )
}
