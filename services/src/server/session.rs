//! One client's stream: the schema, then catch-up from the client's cursors,
//! then live changes, each run of data closed by a checkpoint.
//!
//! The user's bucket set is not fixed for the stream: the token gives
//! *selectors* (see `CompiledSchema::user_buckets`), which resolve against
//! the store's membership index. Each catch-up reads, inside its own store
//! snapshot, whether the membership index changed for the user's keys since
//! the set was last resolved; if so it resolves the set again, resets the
//! buckets that left it (`removed`) and sends the buckets that entered it
//! whole, before the data and the checkpoint of that same snapshot.
//!
//! Live changes usually come from memory ([`live`]): the ops the store's
//! recent commits wrote to the stream's buckets, with the summaries after
//! them. The store is read (on a blocking thread, a bounded number at once)
//! for the first catch-up, when the user's memberships changed, and when
//! the recent commits no longer cover the stream's position.
//!
//! Invariants:
//! - Data, resets and the checkpoint that closes them come from one store
//!   read snapshot, or from consecutive recent commits, so the client's
//!   state after applying them is one Postgres had — including which buckets the user may hold: a client
//!   never holds, at a checkpoint, a bucket its memberships at that
//!   checkpoint do not grant.
//! - A cursor from another store epoch, or older than a bucket's compaction
//!   horizon, is never caught up from: the bucket is reset and sent whole.
//! - A bucket the client holds that is no longer in the user's set is reset
//!   with `removed`, so its rows leave the replica.
//! - A request naming more shapes than `max_shapes_per_request`, or whose
//!   set grows past `max_buckets_per_user`, ends the stream with an error
//!   saying so.

mod live;

use super::sync::SyncContext;
use crate::store::{ReadTxn, StoreError};
use outpost_proto::frame::{DataFrame, SyncFrame};
use outpost_proto::v1::sync_response::Message;
use outpost_proto::v1::{
    BucketChecksum, BucketCursor, BucketReset, Checkpoint, ColumnSchema, Keepalive, Schema,
    ShapeRequest, SyncRequest, SyncResponse, TableSchema,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::Status;

/// How long a catch-up from the store waits for a client to take a message.
const SLOW_CLIENT: std::time::Duration = std::time::Duration::from_secs(30);
/// Byte budget of one `DataBatch` (the encoded ops).
const BATCH_BYTES: usize = 1 << 20;

pub(super) struct SessionStart {
    /// The selectors of the user's buckets, resolved from the token.
    pub buckets: Vec<String>,
    /// Indexes of the tables the user's shapes read.
    pub tables: Vec<usize>,
    pub request: SyncRequest,
}

pub(super) struct Session {
    ctx: Arc<SyncContext>,
    start: SessionStart,
    tx: mpsc::Sender<Result<SyncFrame, Status>>,
}

/// The client went away (or was sent an error): stop quietly.
struct Gone;

impl From<StoreError> for Gone {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store read failed; closing the stream");
        Gone
    }
}

fn msg(m: Message) -> Result<SyncFrame, Status> {
    Ok(SyncFrame::message(&SyncResponse { message: Some(m) }))
}

/// Why a request cannot be served, before anything is sent.
fn refuse_request(ctx: &SyncContext, request: &SyncRequest) -> Option<Status> {
    let max = ctx.schema.limits.max_shapes_per_request;
    if request.shapes.len() > max {
        return Some(Status::invalid_argument(format!(
            "the request names {} shapes; at most {max} are allowed per stream \
             (max_shapes_per_request): ask for fewer shapes, or open several streams",
            request.shapes.len()
        )));
    }
    ctx.schema
        .narrow(Vec::new(), &request.shapes)
        .err()
        .map(|e| Status::invalid_argument(e.to_string()))
}

impl Session {
    pub(super) fn new(
        ctx: Arc<SyncContext>,
        start: SessionStart,
        tx: mpsc::Sender<Result<SyncFrame, Status>>,
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
        if let Some(status) = refuse_request(&ctx, &start.request) {
            tracing::info!(client_id = %start.request.client_id, %status, "sync request refused");
            let _ = tx.send(Err(status)).await;
            return Err(Gone);
        }
        let schema_msg = Message::Schema(schema_message(&ctx, &start.tables));
        tx.send(msg(schema_msg)).await.map_err(|_| Gone)?;

        let mut dispatched = ctx.fanout.subscribe();
        // A store still loading its first snapshot has nothing to offer yet.
        let store_epoch = tokio::select! {
            ready = dispatched.wait_for(|d| !d.epoch.is_empty() || d.closed) => match ready {
                Ok(d) if !d.closed => d.epoch.clone(),
                _ => return Err(Gone),
            },
            _ = tx.closed() => return Err(Gone),
        };
        let same_epoch = !start.request.epoch.is_empty() && start.request.epoch == store_epoch;
        // The membership keys of this user: a change to their entries can
        // change the bucket set.
        let member_keys = ctx.schema.selector_keys(&start.buckets);
        let registration = ctx
            .fanout
            .register(&start.request.client_id, member_keys.clone());
        let signal = registration.signal();
        let mut state = BucketSet {
            selectors: Arc::new(start.buckets),
            shapes: Arc::new(start.request.shapes),
            held: Vec::new(),
            resolved_at: None,
            cursors: HashMap::new(),
            client_cursors: Some((start.request.cursors, same_epoch)),
        };
        let mut last_sent_op = 0u64;
        let mut last_sent_lsn = 0u64;
        // Timers start at a random phase: streams that connected together
        // (a service restart, a fleet coming online) would otherwise send
        // their idle checkpoints and keepalives together, a burst that
        // delays everyone's live changes.
        let now = tokio::time::Instant::now();
        let mut idle_phase = Some(ctx.idle_lsn_every.mul_f64(rand::random::<f64>()));
        let mut lsn_sent_at = now;
        let mut keepalive = tokio::time::interval_at(
            now + ctx.keepalive.mul_f64(rand::random::<f64>().max(0.05)),
            ctx.keepalive,
        );
        loop {
            // The dispatched position first, then the signal: a commit up to
            // that position that touched this stream has set the signal.
            let position = dispatched.borrow_and_update().clone();
            if position.closed {
                return Err(Gone);
            }
            if position.epoch != store_epoch {
                // The store was rebuilt under this stream: the client must
                // reconnect and have its buckets reset.
                let _ = tx
                    .send(Err(Status::unavailable(
                        "the service rebuilt its store; reconnect",
                    )))
                    .await;
                return Err(Gone);
            }
            let touched = signal.take_dirty();
            if touched || state.resolved_at.is_none() {
                let from_memory = match state.resolved_at {
                    Some(_) => {
                        live::catch_up(
                            &ctx,
                            &mut state,
                            last_sent_op,
                            last_sent_lsn,
                            &store_epoch,
                            &member_keys,
                            &tx,
                        )
                        .await?
                    }
                    None => None,
                };
                let (op_id, lsn) = match from_memory {
                    Some(sent) => sent,
                    None => {
                        let (sent, next) =
                            read_store(&ctx, state, last_sent_lsn, &store_epoch, &tx).await?;
                        state = next;
                        registration.set_buckets(&state.held, sent.0);
                        sent
                    }
                };
                last_sent_op = last_sent_op.max(op_id);
                last_sent_lsn = last_sent_lsn.max(lsn);
                let now = tokio::time::Instant::now();
                lsn_sent_at = idle_phase
                    .take()
                    .and_then(|phase| now.checked_sub(phase))
                    .unwrap_or(now);
            } else if position.durable_lsn > last_sent_lsn
                && (signal.want_lsn() > last_sent_lsn
                    || lsn_sent_at.elapsed() >= ctx.idle_lsn_every)
            {
                // Nothing of this stream changed up to the dispatched
                // position: its state is current up to there.
                last_sent_op = last_sent_op.max(position.op_id);
                let checkpoint = Checkpoint {
                    op_id: last_sent_op,
                    lsn: position.durable_lsn,
                    epoch: position.epoch.clone(),
                    buckets: Vec::new(),
                };
                tx.send(msg(Message::Checkpoint(checkpoint)))
                    .await
                    .map_err(|_| Gone)?;
                last_sent_lsn = position.durable_lsn;
                lsn_sent_at = tokio::time::Instant::now();
            }
            let lsn_pending = position.durable_lsn > last_sent_lsn;
            tokio::select! {
                _ = tokio::time::sleep_until(lsn_sent_at + ctx.idle_lsn_every), if lsn_pending => {}
                () = signal.notified() => {}
                _ = keepalive.tick() => {
                    let lsn = dispatched.borrow().durable_lsn;
                    tx.send(msg(Message::Keepalive(Keepalive { lsn }))).await.map_err(|_| Gone)?;
                }
                _ = tx.closed() => return Err(Gone),
            }
        }
    }
}

/// Catches the stream up from a store read snapshot, on a blocking thread
/// (at most [`SyncContext::store_reads`] at once); gives the state back.
async fn read_store(
    ctx: &Arc<SyncContext>,
    state: BucketSet,
    last_sent_lsn: u64,
    epoch: &str,
    tx: &mpsc::Sender<Result<SyncFrame, Status>>,
) -> Result<((u64, u64), BucketSet), Gone> {
    let _permit = ctx.store_reads.acquire().await.map_err(|_| Gone)?;
    let ctx2 = ctx.clone();
    let tx2 = tx.clone();
    let epoch = epoch.to_string();
    tokio::task::spawn_blocking(move || {
        ctx2.readers.read(|txn| {
            let mut state = state;
            let sent = catch_up(txn, &ctx2, &mut state, last_sent_lsn, &epoch, &tx2);
            Ok(sent.map(|s| (s, state)))
        })
    })
    .await
    .map_err(|_| Gone)??
}

/// Sends from a store read (a blocking thread). A client that takes nothing
/// for [`SLOW_CLIENT`] (a suspended app, say) is given up on: the read holds
/// a store snapshot and one of the bounded store-read permits, which other
/// streams wait for. The client reconnects and resumes from its cursors.
fn send_or_give_up(
    tx: &mpsc::Sender<Result<SyncFrame, Status>>,
    item: Result<SyncFrame, Status>,
) -> Result<(), Gone> {
    let sent = tokio::runtime::Handle::current().block_on(tx.send_timeout(item, SLOW_CLIENT));
    match sent {
        Ok(()) => Ok(()),
        Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
            tracing::info!(
                timeout_s = SLOW_CLIENT.as_secs(),
                "a client took nothing during a catch-up; closing its stream"
            );
            Err(Gone)
        }
        Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(Gone),
    }
}

/// The buckets a stream holds and where the client is in each.
struct BucketSet {
    /// From the token: bucket names and membership selectors.
    selectors: Arc<Vec<String>>,
    /// The requested shapes, whose parameters narrow the set.
    shapes: Arc<Vec<ShapeRequest>>,
    /// The buckets the client holds or is being sent, in resolution order.
    held: Vec<String>,
    /// The op id of the snapshot the set was last resolved in (`None`: not
    /// yet).
    resolved_at: Option<u64>,
    /// The op id each held bucket is sent up to.
    cursors: HashMap<String, u64>,
    /// The client's cursors and whether they are from the store's epoch,
    /// until the first catch-up takes them.
    client_cursors: Option<(Vec<BucketCursor>, bool)>,
}

/// Resolves the set again when the first catch-up runs or the membership
/// index changed for the user's keys; returns the resets to send before any
/// data, or the error that ends the stream.
fn resolve(
    txn: &ReadTxn<'_>,
    ctx: &SyncContext,
    set: &mut BucketSet,
    op_id: u64,
) -> Result<Vec<BucketReset>, Result<Status, StoreError>> {
    let schema = &ctx.schema;
    if let Some(at) = set.resolved_at {
        let mut changed = false;
        for (m, user_key) in schema.selector_keys(&set.selectors) {
            if txn.member_version(m, &user_key).map_err(Err)? > at {
                changed = true;
                break;
            }
        }
        if !changed {
            return Ok(Vec::new());
        }
    }
    let names = schema
        .expand_selectors(&set.selectors, &mut |m, user_key| {
            txn.member_keys(m, user_key)
        })
        .map_err(Err)?;
    let names = schema
        .narrow(names, &set.shapes)
        .map_err(|e| Ok(Status::invalid_argument(e.to_string())))?;
    let max = schema.limits.max_buckets_per_user;
    if names.len() > max {
        return Err(Ok(Status::resource_exhausted(format!(
            "your shapes give you {} buckets; at most {max} are allowed per stream \
             (max_buckets_per_user): ask for fewer shapes, or narrow them with parameters",
            names.len()
        ))));
    }
    let now: HashSet<&String> = names.iter().collect();
    let mut resets = Vec::new();
    match set.client_cursors.take() {
        Some((cursors, same_epoch)) => {
            for c in cursors {
                let removed = !now.contains(&c.bucket);
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
                    set.cursors.insert(c.bucket, c.op_id);
                }
            }
        }
        None => {
            for b in set.held.iter().filter(|b| !now.contains(b)) {
                set.cursors.remove(b);
                resets.push(BucketReset {
                    bucket: b.clone(),
                    reason: "your memberships no longer give you this bucket".into(),
                    removed: true,
                });
            }
        }
    }
    for b in &names {
        set.cursors.entry(b.clone()).or_insert(0);
    }
    if set.resolved_at.is_some() {
        let before: HashSet<&String> = set.held.iter().collect();
        let entered = names.iter().filter(|b| !before.contains(b)).count();
        tracing::debug!(entered, left = resets.len(), "bucket set changed");
    }
    set.held = names;
    set.resolved_at = Some(op_id);
    Ok(resets)
}

/// Sends everything new for the session's buckets from one read snapshot —
/// set changes first, then data — closed by a checkpoint. Returns the
/// checkpoint's op id and LSN.
fn catch_up(
    txn: &ReadTxn<'_>,
    ctx: &SyncContext,
    set: &mut BucketSet,
    last_lsn: u64,
    epoch: &str,
    tx: &mpsc::Sender<Result<SyncFrame, Status>>,
) -> Result<(u64, u64), Gone> {
    let send = |m: Message| send_or_give_up(tx, msg(m));
    let checkpoint = txn.checkpoint()?;
    if checkpoint.epoch != epoch {
        // Rebuilt since the stream started: its cursors mean nothing here.
        let _ = send_or_give_up(
            tx,
            Err(Status::unavailable(
                "the service rebuilt its store; reconnect",
            )),
        );
        return Err(Gone);
    }
    let full = set.resolved_at.is_none();
    let resets = match resolve(txn, ctx, set, checkpoint.op_id) {
        Ok(resets) => resets,
        Err(Ok(status)) => {
            tracing::info!(%status, "sync stream refused");
            let _ = send_or_give_up(tx, Err(status));
            return Err(Gone);
        }
        Err(Err(e)) => return Err(e.into()),
    };
    let reset_any = !resets.is_empty();
    for r in resets {
        send(Message::Reset(r))?;
    }
    let mut listed = Vec::new();
    for bucket in &set.held {
        let info = txn.bucket(bucket)?;
        let cursor = set.cursors.get(bucket).copied().unwrap_or(0);
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
            let mut batch = DataFrame::new(bucket);
            let mut failed = false;
            txn.encoded_ops_since(bucket, from, |op_id, op| {
                batch.push_encoded(op_id, op);
                if batch.len() >= ctx.batch_ops || batch.bytes() >= BATCH_BYTES {
                    let full = std::mem::replace(&mut batch, DataFrame::new(bucket));
                    if send_or_give_up(tx, Ok(full.finish())).is_err() {
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
                send_or_give_up(tx, Ok(batch.finish()))?;
            }
        }
        if full || changed || from != cursor {
            listed.push(BucketChecksum {
                bucket: bucket.clone(),
                checksum: info.checksum,
                count: info.count,
            });
        }
        set.cursors.insert(bucket.clone(), checkpoint.op_id);
    }
    if full || reset_any || !listed.is_empty() || checkpoint.lsn.0 > last_lsn {
        send(Message::Checkpoint(Checkpoint {
            op_id: checkpoint.op_id,
            lsn: checkpoint.lsn.0,
            epoch: checkpoint.epoch.clone(),
            buckets: listed,
        }))?;
    }
    Ok((checkpoint.op_id, checkpoint.lsn.0))
}

/// The schema message for the tables a session reads.
fn schema_message(ctx: &SyncContext, table_indexes: &[usize]) -> Schema {
    let schema = &ctx.schema;
    let tables: Vec<TableSchema> = table_indexes
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
                            merge: ctx.merge_kind(i, c).into(),
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
    // The version covers what the client builds from the message (columns,
    // types, merge kinds), not only what decides bucket contents.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&schema.version, &mut hasher);
    for t in &tables {
        std::hash::Hash::hash(&prost::Message::encode_to_vec(t), &mut hasher);
    }
    Schema {
        version: format!(
            "{}-{:016x}",
            schema.version,
            std::hash::Hasher::finish(&hasher)
        ),
        tables,
    }
}
