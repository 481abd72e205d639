//! Local writes and their bookkeeping, for end-to-end tests of the write
//! path: writing a replica the way an app does, reading what its outbox,
//! pending list and rejections hold, reading the service's ledger in
//! Postgres, and waiting until a replica has settled.
//!
//! ```text
//! write_local ──▶ LocalDb (capturing) ──▶ _outpost_outbox ──Write──▶ outpost.applied_groups
//!                                          outbox_groups()            ledger()
//!                  pending_groups(), rejections() ◀── answers, checkpoints
//! ```
//!
//! Invariants:
//! - [`write_local`] writes through [`outpost_client::LocalDb`] only, so
//!   every write a test makes is captured exactly as an app's would be: one
//!   op group per call;
//! - the readers open the replica read-only and never change it;
//! - [`wait_settled`] decides on the replica's state only (nothing pending,
//!   checkpoint at or past the WAL position, rows equal to the oracle),
//!   never on timing; its timeout only bounds a broken pipeline.

use crate::client::options;
use crate::oracle::{Oracle, ShapeQuery};
use crate::wait::{Advance, wait_for_replica};
use anyhow::Context;
use outpost_client::{LocalDb, PendingGroup, Rejection, Replica};
use std::path::Path;
use std::time::{Duration, Instant};

/// Runs `sql` (one or more statements) as one local transaction on the
/// replica at `path`: one op group. Returns the rows its statements changed.
pub fn write_local(path: &Path, sql: &str) -> anyhow::Result<u64> {
    let mut db =
        LocalDb::open(path).with_context(|| format!("opening {} to write", path.display()))?;
    db.execute_group(sql)
        .with_context(|| format!("local write on {}: {sql}", path.display()))
}

/// [`write_local`] from async code, on a blocking thread.
pub async fn write_local_async(path: &Path, sql: &str) -> anyhow::Result<u64> {
    let (path, sql) = (path.to_path_buf(), sql.to_string());
    tokio::task::spawn_blocking(move || write_local(&path, &sql))
        .await
        .context("the local write panicked")?
}

/// One op group waiting in a replica's outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxGroup {
    /// The group's sequence number (its first outbox id).
    pub seq: u64,
    /// The clocks of its ops, in op order.
    pub hlcs: Vec<u64>,
}

/// The groups waiting in the outbox of the replica at `path`, oldest first.
pub fn outbox_groups(path: &Path) -> anyhow::Result<Vec<OutboxGroup>> {
    let replica = open(path)?;
    let mut stmt = replica.connection().prepare(
        "SELECT txid, min(id) AS seq, json_group_array(hlc) FROM
           (SELECT txid, id, hlc FROM _outpost_outbox ORDER BY id)
         GROUP BY txid ORDER BY seq",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(1)?, r.get::<_, String>(2)?)))?;
    let mut groups = Vec::new();
    for row in rows {
        let (seq, hlcs) = row?;
        let hlcs: Vec<i64> = serde_json::from_str(&hlcs)
            .with_context(|| format!("the clocks of outbox group {seq}: {hlcs}"))?;
        groups.push(OutboxGroup {
            seq: seq as u64,
            hlcs: hlcs.into_iter().map(|h| h as u64).collect(),
        });
    }
    Ok(groups)
}

/// The local groups of the replica at `path` not confirmed yet (in the
/// outbox, or applied and waiting for their checkpoint).
pub fn pending_groups(path: &Path) -> anyhow::Result<Vec<PendingGroup>> {
    Ok(open(path)?.pending()?)
}

/// Every op of every group the service refused, oldest first.
pub fn rejections(path: &Path) -> anyhow::Result<Vec<Rejection>> {
    Ok(open(path)?.rejections()?)
}

/// The client id of the replica at `path`.
pub fn client_id(path: &Path) -> anyhow::Result<String> {
    Ok(open(path)?.client_id().to_string())
}

fn open(path: &Path) -> anyhow::Result<Replica> {
    Replica::open_read_only(path).with_context(|| format!("opening replica {}", path.display()))
}

/// One row of `outpost.applied_groups`: what the service recorded for a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    /// The group's sequence number.
    pub seq: i64,
    /// `applied` or `rejected`.
    pub status: String,
    /// The reason code of a rejection.
    pub reason_code: Option<String>,
    /// The message of a rejection.
    pub message: Option<String>,
    /// The index of the refused op.
    pub op_index: Option<i32>,
}

/// What the service recorded for the groups of `client_id`, by seq.
pub async fn ledger(
    pg: &tokio_postgres::Client,
    client_id: &str,
) -> anyhow::Result<Vec<LedgerEntry>> {
    let rows = pg
        .query(
            "SELECT seq, status, reason_code, message, op_index FROM outpost.applied_groups \
             WHERE client_id = $1 ORDER BY seq",
            &[&client_id],
        )
        .await
        .context("reading outpost.applied_groups")?;
    rows.iter()
        .map(|r| {
            Ok(LedgerEntry {
                seq: r.try_get(0)?,
                status: r.try_get(1)?,
                reason_code: r.try_get(2)?,
                message: r.try_get(3)?,
                op_index: r.try_get(4)?,
            })
        })
        .collect()
}

/// How many groups of `client_id` the service recorded (0 before the
/// service created its ledger).
pub async fn ledger_count(pg: &tokio_postgres::Client, client_id: &str) -> anyhow::Result<i64> {
    let row = pg
        .query_one(
            "SELECT CASE WHEN to_regclass('outpost.applied_groups') IS NULL THEN 0::bigint \
             ELSE (SELECT count(*) FROM outpost.applied_groups WHERE client_id = $1) END",
            &[&client_id],
        )
        .await
        .context("counting outpost.applied_groups")?;
    Ok(row.try_get(0)?)
}

/// Waits until the replica at `path` has settled: no local group in its
/// outbox or waiting for a checkpoint, a checkpoint at or past the WAL
/// position, and every shape's rows equal to its oracle; then checks again
/// that nothing is pending. With [`Advance::Once`], one-shot syncs (which
/// also upload) move it forward.
pub async fn wait_settled(
    oracle: &Oracle,
    shapes: &[ShapeQuery],
    path: &Path,
    advance: &Advance<'_>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        if let Advance::Once { server, token } = advance {
            let left = deadline.saturating_duration_since(Instant::now());
            let opts = options(server, token, path, true);
            match tokio::time::timeout(left, outpost_client::sync(opts)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => last_error = Some(e.to_string()),
                Err(_) => last_error = Some("the one-shot sync timed out".into()),
            }
        }
        let pending = pending_groups(path)?;
        if pending.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "replica {} still has {} unconfirmed local groups after {timeout:?} \
                 (last sync error: {}): {pending:?}",
                path.display(),
                pending.len(),
                last_error.as_deref().unwrap_or("none")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for shape in shapes {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(5));
        let step = match advance {
            Advance::Background => Advance::Background,
            Advance::Once { server, token } => Advance::Once { server, token },
        };
        wait_for_replica(oracle, shape, path, step, left).await?;
    }
    let pending = pending_groups(path)?;
    anyhow::ensure!(
        pending.is_empty(),
        "replica {} equals its oracle but has unconfirmed local groups again: {pending:?}",
        path.display()
    );
    Ok(())
}
