//! The replication task: keeps one slot streaming into the store writer, from
//! a fresh snapshot when the store is new (or was built for another schema or
//! slot), and from the store's durable position otherwise.
//!
//! ```text
//! connect ─▶ publication ─▶ (store new? create slot + snapshot) ─▶ START_REPLICATION
//!    ▲                                                                  │
//!    └──── transient error (network, Postgres restart): back off ◀──────┘
//! ```
//!
//! Invariants:
//! - Standby status updates carry the writer's durable LSN, never a position
//!   the store has not committed: Postgres may discard WAL up to it.
//! - A keepalive's position is passed on as idle only between transactions,
//!   when every message before it has been handed to the writer.
//! - Errors are either transient (the connection, a restarting Postgres, a
//!   slot still held by a previous process: retried with backoff) or definite
//!   (bad credentials, a missing publication, a store failure: returned).

use crate::ingest::{Progress, WriterMsg};
use crate::lsn::Lsn;
use crate::replication::{PgOutput, ReplicationConn, ReplicationError, ReplicationEvent};
use crate::schema::CompiledSchema;
use crate::snapshot::{self, SnapshotError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How the service reaches its replication slot.
/// The most messages handed to the writer at once.
const MAX_BATCH: usize = 512;

#[derive(Clone, Debug)]
pub struct ReplicatorConfig {
    pub pg: tokio_postgres::Config,
    pub slot: String,
    pub publication: String,
    /// Create the publication when it does not exist.
    pub create_publication: bool,
    /// How often to send a standby status update when nothing else does.
    pub status_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicatorError {
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the store writer stopped")]
    WriterGone,
    #[error("Postgres ended the replication stream")]
    StreamEnded,
    #[error("the replication thread: {0}")]
    Thread(String),
}

impl ReplicatorError {
    /// Worth retrying after a pause.
    pub fn is_transient(&self) -> bool {
        match self {
            ReplicatorError::Replication(e) => e.is_transient(),
            ReplicatorError::Snapshot(SnapshotError::Postgres(e))
            | ReplicatorError::Postgres(e) => e.is_closed() || e.as_db_error().is_none(),
            ReplicatorError::StreamEnded => true,
            _ => false,
        }
    }
}

/// Runs until `shutdown` turns true or a definite error happens.
pub async fn run(
    cfg: ReplicatorConfig,
    schema: Arc<CompiledSchema>,
    writer: mpsc::Sender<WriterMsg>,
    mut progress: watch::Receiver<Progress>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ReplicatorError> {
    let mut backoff = Duration::from_millis(200);
    loop {
        let result = session(&cfg, &schema, &writer, &mut progress, &mut shutdown).await;
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "replication interrupted; reconnecting");
                writer
                    .send(WriterMsg::Reconnected)
                    .await
                    .map_err(|_| ReplicatorError::WriterGone)?;
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

async fn session(
    cfg: &ReplicatorConfig,
    schema: &CompiledSchema,
    writer: &mpsc::Sender<WriterMsg>,
    progress: &mut watch::Receiver<Progress>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), ReplicatorError> {
    let mut conn = ReplicationConn::connect(&cfg.pg).await?;
    let tables: Vec<(String, String)> = schema
        .tables
        .iter()
        .map(|t| (t.schema.clone(), t.name.clone()))
        .collect();
    conn.ensure_publication(&cfg.publication, &tables, cfg.create_publication)
        .await?;
    let slot = conn.slot_info(&cfg.slot).await?;
    let current = progress.borrow().clone();
    let fresh = current.epoch.is_empty()
        || current.schema_version != schema.version
        || current.slot != cfg.slot
        || slot.is_none();
    let start = if fresh {
        if slot.is_some() {
            tracing::info!(slot = %cfg.slot, "dropping the slot: the store must be rebuilt from a new snapshot");
            conn.drop_slot(&cfg.slot).await?;
        }
        initial_load(cfg, schema, &mut conn, writer, progress).await?
    } else {
        current.durable_lsn
    };
    tracing::info!(slot = %cfg.slot, from = %start, "streaming");
    let mut stream = conn
        .start_replication(&cfg.slot, start, &cfg.publication)
        .await?;
    let mut in_txn = false;
    let mut acked = Lsn::ZERO;
    // The furthest WAL position received. Reported as the *write* position
    // (never as flush): a Postgres shutting down waits for it.
    let mut received = start;
    let mut ticker = tokio::time::interval(cfg.status_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                let durable = progress.borrow().durable_lsn;
                let _ = stream.send_status(received.max(durable), durable, durable, false).await;
                return Ok(());
            }
            event = stream.next() => {
                // Everything this read brought in goes to the writer as one
                // batch: one wake-up of the writer thread per batch, not per
                // message.
                let mut batch = Vec::new();
                let mut event = event?;
                loop {
                    match event {
                        None => {
                            send_batch(writer, &mut batch).await?;
                            return Err(ReplicatorError::StreamEnded);
                        }
                        Some(ReplicationEvent::Message { message, wal_end, .. }) => {
                            received = received.max(wal_end);
                            match &message {
                                PgOutput::Begin(_) => in_txn = true,
                                PgOutput::Commit(_) => in_txn = false,
                                _ => {}
                            }
                            batch.push(message);
                        }
                        Some(ReplicationEvent::Keepalive { wal_end, reply_requested }) => {
                            received = received.max(wal_end);
                            if !in_txn {
                                send_batch(writer, &mut batch).await?;
                                writer.send(WriterMsg::Idle(wal_end)).await.map_err(|_| ReplicatorError::WriterGone)?;
                            }
                            if reply_requested {
                                let durable = progress.borrow().durable_lsn;
                                stream.send_status(received.max(durable), durable, durable, false).await?;
                                acked = durable;
                            }
                        }
                    }
                    if batch.len() >= MAX_BATCH {
                        break;
                    }
                    match stream.try_next()? {
                        Some(next) => event = Some(next),
                        None => break,
                    }
                }
                send_batch(writer, &mut batch).await?;
            }
            changed = progress.changed() => {
                if changed.is_err() {
                    return Err(ReplicatorError::WriterGone);
                }
                // Acknowledge promptly once the writer catches up after a
                // burst, so Postgres can recycle WAL and send keepalives.
                let durable = progress.borrow_and_update().durable_lsn;
                if durable > acked && !in_txn {
                    stream.send_status(received.max(durable), durable, durable, false).await?;
                    acked = durable;
                }
            }
            _ = ticker.tick() => {
                let durable = progress.borrow().durable_lsn;
                stream.send_status(received.max(durable), durable, durable, false).await?;
                acked = durable;
            }
        }
    }
}

/// Hands a batch of decoded messages to the writer (nothing when empty).
async fn send_batch(
    writer: &mpsc::Sender<WriterMsg>,
    batch: &mut Vec<PgOutput>,
) -> Result<(), ReplicatorError> {
    if batch.is_empty() {
        return Ok(());
    }
    writer
        .send(WriterMsg::Replicated(std::mem::take(batch)))
        .await
        .map_err(|_| ReplicatorError::WriterGone)
}

/// Creates the slot and loads its exported snapshot; returns the consistent
/// point to stream from, once the writer has committed the snapshot.
async fn initial_load(
    cfg: &ReplicatorConfig,
    schema: &CompiledSchema,
    conn: &mut ReplicationConn,
    writer: &mpsc::Sender<WriterMsg>,
    progress: &mut watch::Receiver<Progress>,
) -> Result<Lsn, ReplicatorError> {
    let created = conn.create_slot(&cfg.slot, false).await?;
    tracing::info!(slot = %cfg.slot, consistent_point = %created.consistent_point, "slot created; loading snapshot");
    let (client, connection) = cfg.pg.connect(tokio_postgres::NoTls).await?;
    let conn_task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "snapshot connection ended");
        }
    });
    let epoch = format!("{:016x}", rand::random::<u64>());
    writer
        .send(WriterMsg::SnapshotBegin {
            schema_version: schema.version.clone(),
            slot: cfg.slot.clone(),
            epoch: epoch.clone(),
        })
        .await
        .map_err(|_| ReplicatorError::WriterGone)?;
    let started = std::time::Instant::now();
    let rows = snapshot::load(&client, &created.snapshot_name, schema, writer).await;
    drop(client);
    conn_task.abort();
    let rows = rows?;
    writer
        .send(WriterMsg::SnapshotEnd {
            consistent_point: created.consistent_point,
        })
        .await
        .map_err(|_| ReplicatorError::WriterGone)?;
    loop {
        {
            let p = progress.borrow_and_update();
            if p.epoch == epoch && p.durable_lsn >= created.consistent_point {
                break;
            }
        }
        progress
            .changed()
            .await
            .map_err(|_| ReplicatorError::WriterGone)?;
    }
    tracing::info!(
        rows,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "snapshot loaded"
    );
    Ok(created.consistent_point)
}
