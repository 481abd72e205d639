//! One client's stream: the schema, then catch-up from the client's cursors,
//! then live changes, each run of data closed by a checkpoint.
//!
//! Invariants:
//! - Data and the checkpoint that closes it come from one store read
//!   snapshot, so the client's state after applying it is one Postgres had.
//! - A cursor from another store epoch, or older than a bucket's compaction
//!   horizon, is never caught up from: the bucket is reset and sent whole.
//! - A bucket the client holds that is no longer in the user's set is reset
//!   with `removed`, so its rows leave the replica.

use super::sync::SyncContext;
use crate::store::{ReadTxn, StoreError};
use outpost_proto::v1::sync_response::Message;
use outpost_proto::v1::{
    BucketChecksum, BucketReset, Checkpoint, ColumnSchema, DataBatch, Keepalive, RowOp, Schema,
    SyncRequest, SyncResponse, TableSchema,
};
use prost::Message as _;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::Status;

/// Byte budget of one `DataBatch` (the encoded ops).
const BATCH_BYTES: usize = 1 << 20;

pub(super) struct SessionStart {
    pub buckets: Vec<String>,
    /// Indexes of the tables the user's shapes read.
    pub tables: Vec<usize>,
    pub request: SyncRequest,
}

pub(super) struct Session {
    ctx: Arc<SyncContext>,
    start: SessionStart,
    tx: mpsc::Sender<Result<SyncResponse, Status>>,
}

/// The client went away: stop quietly.
struct Gone;

impl From<StoreError> for Gone {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store read failed; closing the stream");
        Gone
    }
}

fn msg(m: Message) -> Result<SyncResponse, Status> {
    Ok(SyncResponse { message: Some(m) })
}

impl Session {
    pub(super) fn new(
        ctx: Arc<SyncContext>,
        start: SessionStart,
        tx: mpsc::Sender<Result<SyncResponse, Status>>,
    ) -> Self {
        Session { ctx, start, tx }
    }

    pub(super) async fn run(self) {
        let client_id = self.start.request.client_id.clone();
        match self.stream().await {
            Ok(()) | Err(Gone) => tracing::info!(%client_id, "sync stream closed"),
        }
    }

    async fn stream(self) -> Result<(), Gone> {
        let Session { ctx, start, tx } = self;
        let schema_msg = Message::Schema(schema_message(&ctx, &start.tables));
        tx.send(msg(schema_msg)).await.map_err(|_| Gone)?;

        let mut progress = ctx.progress.clone();
        // A store still loading its first snapshot has nothing to offer yet.
        let store_epoch = tokio::select! {
            ready = progress.wait_for(|p| !p.epoch.is_empty()) => match ready {
                Ok(p) => p.epoch.clone(),
                Err(_) => return Err(Gone),
            },
            _ = tx.closed() => return Err(Gone),
        };
        let mine: HashSet<String> = start.buckets.iter().cloned().collect();
        let mut cursors: HashMap<String, u64> = HashMap::new();
        let mut resets: Vec<BucketReset> = Vec::new();
        let same_epoch = !start.request.epoch.is_empty() && start.request.epoch == store_epoch;
        for c in &start.request.cursors {
            let removed = !mine.contains(&c.bucket);
            if removed || !same_epoch {
                resets.push(BucketReset {
                    bucket: c.bucket.clone(),
                    reason: if removed {
                        "the bucket is no longer in your shapes"
                    } else {
                        "the service's store was rebuilt"
                    }
                    .into(),
                    removed,
                });
            } else {
                cursors.insert(c.bucket.clone(), c.op_id);
            }
        }
        for b in &start.buckets {
            cursors.entry(b.clone()).or_insert(0);
        }
        let mut first = true;
        let mut last_sent_op = 0u64;
        let mut last_sent_lsn = 0u64;
        let mut keepalive = tokio::time::interval(ctx.keepalive);
        keepalive.reset();
        loop {
            let (target, epoch, durable) = {
                let p = progress.borrow_and_update();
                (p.op_id, p.epoch.clone(), p.durable_lsn.0)
            };
            if epoch != store_epoch {
                // The store was rebuilt under this stream: the client must
                // reconnect and have its buckets reset.
                let _ = tx
                    .send(Err(Status::unavailable(
                        "the service rebuilt its store; reconnect",
                    )))
                    .await;
                return Err(Gone);
            }
            if first || target > last_sent_op {
                let ctx2 = ctx.clone();
                let tx2 = tx.clone();
                let request = CatchUp {
                    buckets: start.buckets.clone(),
                    cursors: cursors.clone(),
                    resets: std::mem::take(&mut resets),
                    full: first,
                    last_lsn: last_sent_lsn,
                };
                let result = tokio::task::spawn_blocking(move || {
                    ctx2.readers
                        .read(|txn| Ok(catch_up(txn, &ctx2, request, &tx2)))
                })
                .await
                .map_err(|_| Gone)??;
                let (op_id, lsn, new_cursors) = result?;
                cursors = new_cursors;
                last_sent_op = op_id.max(target);
                last_sent_lsn = lsn;
                first = false;
            } else if durable > last_sent_lsn {
                // No new ops anywhere, but the store caught up further in the
                // WAL: tell the client its state is current up to there.
                let checkpoint = Checkpoint {
                    op_id: last_sent_op,
                    lsn: durable,
                    epoch: epoch.clone(),
                    buckets: Vec::new(),
                };
                tx.send(msg(Message::Checkpoint(checkpoint)))
                    .await
                    .map_err(|_| Gone)?;
                last_sent_lsn = durable;
            }
            tokio::select! {
                changed = progress.changed() => {
                    if changed.is_err() {
                        return Err(Gone);
                    }
                }
                _ = keepalive.tick() => {
                    let lsn = ctx.progress.borrow().durable_lsn.0;
                    tx.send(msg(Message::Keepalive(Keepalive { lsn }))).await.map_err(|_| Gone)?;
                }
                _ = tx.closed() => return Err(Gone),
            }
        }
    }
}

/// Sends everything new for the session's buckets from one read snapshot,
/// closed by a checkpoint. Returns the checkpoint op id and the new cursors.
/// What one catch-up starts from.
struct CatchUp {
    buckets: Vec<String>,
    cursors: HashMap<String, u64>,
    /// Resets to send before any data.
    resets: Vec<BucketReset>,
    /// List every bucket in the checkpoint (the stream's first).
    full: bool,
    /// The LSN of the last checkpoint sent.
    last_lsn: u64,
}

fn catch_up(
    txn: &ReadTxn<'_>,
    ctx: &SyncContext,
    request: CatchUp,
    tx: &mpsc::Sender<Result<SyncResponse, Status>>,
) -> Result<(u64, u64, HashMap<String, u64>), Gone> {
    let CatchUp {
        buckets,
        mut cursors,
        resets,
        full,
        last_lsn,
    } = request;
    let send = |m: Message| tx.blocking_send(msg(m)).map_err(|_| Gone);
    let checkpoint = txn.checkpoint()?;
    for r in resets {
        send(Message::Reset(r))?;
    }
    let mut listed = Vec::new();
    for bucket in &buckets {
        let info = txn.bucket(bucket)?;
        let cursor = cursors.get(bucket).copied().unwrap_or(0);
        let mut from = cursor;
        if cursor > 0 && cursor < info.horizon {
            send(Message::Reset(BucketReset {
                bucket: bucket.clone(),
                reason:
                    "your cursor is older than what the service keeps; the bucket is sent again"
                        .into(),
                removed: false,
            }))?;
            from = 0;
        }
        let changed = info.last_op_id > from;
        if changed {
            let mut batch: Vec<RowOp> = Vec::new();
            let mut bytes = 0usize;
            let mut failed = false;
            txn.ops_since(bucket, from, |op| {
                bytes += op.encoded_len();
                batch.push(op);
                if batch.len() >= ctx.batch_ops || bytes >= BATCH_BYTES {
                    let ops = std::mem::take(&mut batch);
                    bytes = 0;
                    if send(Message::Data(DataBatch {
                        bucket: bucket.clone(),
                        ops,
                    }))
                    .is_err()
                    {
                        failed = true;
                        return false;
                    }
                }
                true
            })?;
            if failed {
                return Err(Gone);
            }
            if !batch.is_empty() {
                send(Message::Data(DataBatch {
                    bucket: bucket.clone(),
                    ops: batch,
                }))?;
            }
        }
        if full || changed || from != cursor {
            listed.push(BucketChecksum {
                bucket: bucket.clone(),
                checksum: info.checksum,
                count: info.count,
            });
        }
        cursors.insert(bucket.clone(), checkpoint.op_id);
    }
    if full || !listed.is_empty() || checkpoint.lsn.0 > last_lsn {
        send(Message::Checkpoint(Checkpoint {
            op_id: checkpoint.op_id,
            lsn: checkpoint.lsn.0,
            epoch: checkpoint.epoch.clone(),
            buckets: listed,
        }))?;
    }
    Ok((checkpoint.op_id, checkpoint.lsn.0, cursors))
}

/// The schema message for the tables a session reads.
fn schema_message(ctx: &SyncContext, table_indexes: &[usize]) -> Schema {
    let schema = &ctx.schema;
    let tables = table_indexes
        .iter()
        .map(|&i| {
            let t = &schema.tables[i];
            TableSchema {
                name: t.client_name.clone(),
                columns: t
                    .synced
                    .iter()
                    .map(|&c| {
                        let col = &t.columns[c];
                        ColumnSchema {
                            name: col.name.clone(),
                            pg_type: col.type_name.clone(),
                            sqlite_type: col
                                .kind
                                .as_ref()
                                .map_or("TEXT", |k| k.sqlite_type())
                                .to_string(),
                            nullable: col.nullable,
                            merge: "lww".into(),
                        }
                    })
                    .collect(),
                primary_key: t
                    .primary_key
                    .iter()
                    .filter_map(|pk| t.synced.iter().position(|c| c == pk).map(|p| p as u32))
                    .collect(),
            }
        })
        .collect();
    Schema {
        version: schema.version.clone(),
        tables,
    }
}
