//! Live delivery from memory: a stream that is current up to a recent
//! store commit is brought up to date from the recent commits the writer
//! keeps ([`crate::ingest::RecentCommits`]), without a store read or a hop
//! to a blocking thread. This is what a change costs on a stream in the
//! common case: a lookup of the commits, the ops of its buckets, and the
//! messages.
//!
//! Invariants:
//! - It serves only what the store read would have served, at the same
//!   checkpoint: every commit past the stream's position is among the
//!   recent commits (else the store is read), the ops of each bucket are
//!   sent in op id order, and the checkpoint lists the summary each changed
//!   bucket has after the newest commit, which is committed in the store.
//! - Anything it cannot serve exactly goes to the store read: a commit whose
//!   ops were too large to keep, a change of the user's memberships (the
//!   bucket set must be resolved again), another store epoch.

use super::{BATCH_BYTES, BucketSet, Gone, msg};
use crate::ingest::Since;
use crate::server::sync::SyncContext;
use outpost_proto::frame::{DataFrame, SyncFrame};
use outpost_proto::v1::sync_response::Message;
use outpost_proto::v1::{BucketChecksum, Checkpoint};
use tokio::sync::mpsc;
use tonic::Status;

/// The ops of one bucket to send (each op's id and stored encoding), and
/// the bucket's summary after them.
struct Pending<'a> {
    ops: Vec<(u64, &'a [u8])>,
    checksum: u64,
    count: u64,
}

/// What the commits past the stream's position bring each of its buckets.
fn collect<'a>(since: &'a Since, set: &BucketSet) -> Vec<(&'a str, Pending<'a>)> {
    let mut out = Vec::with_capacity(since.buckets.len());
    for (bucket, commits) in &since.buckets {
        let cursor = set.cursors.get(bucket).copied().unwrap_or(0);
        let mut pending = Pending {
            ops: Vec::new(),
            checksum: 0,
            count: 0,
        };
        for change in commits.iter().filter_map(|c| c.touched.buckets.get(bucket)) {
            for op in change.ops.iter().filter(|op| op.op_id > cursor) {
                // From cursor zero the client holds nothing to remove.
                if cursor == 0 && op.remove {
                    continue;
                }
                pending.ops.push((op.op_id, op.op.as_slice()));
            }
            pending.checksum = change.checksum;
            pending.count = change.count;
        }
        out.push((bucket.as_str(), pending));
    }
    out
}

/// Brings the stream from `at_op` to the newest recent commit from memory.
/// Returns the checkpoint's op id and LSN, `Ok(None)` when the store must
/// be read instead (nothing was sent then).
pub(super) async fn catch_up(
    ctx: &SyncContext,
    set: &mut BucketSet,
    at_op: u64,
    last_lsn: u64,
    epoch: &str,
    member_keys: &[(usize, String)],
    tx: &mpsc::Sender<Result<SyncFrame, Status>>,
) -> Result<Option<(u64, u64)>, Gone> {
    let Some(since) = ctx
        .fanout
        .recent()
        .since_op(at_op, epoch, set.cursors.keys(), member_keys)
    else {
        return Ok(None);
    };
    let pending = collect(&since, set);
    let op_id = since.latest.op_id.max(at_op);
    let lsn = since.latest.durable_lsn.0;
    let mut listed = Vec::with_capacity(pending.len());
    for (bucket, p) in pending {
        let mut batch = DataFrame::new(bucket);
        for (op_id, op) in p.ops {
            batch.push_encoded(op_id, op);
            if batch.len() >= ctx.batch_ops || batch.bytes() >= BATCH_BYTES {
                let full = std::mem::replace(&mut batch, DataFrame::new(bucket));
                tx.send(Ok(full.finish())).await.map_err(|_| Gone)?;
            }
        }
        if !batch.is_empty() {
            tx.send(Ok(batch.finish())).await.map_err(|_| Gone)?;
        }
        listed.push(BucketChecksum {
            bucket: bucket.to_string(),
            checksum: p.checksum,
            count: p.count,
        });
    }
    for cursor in set.cursors.values_mut() {
        *cursor = (*cursor).max(op_id);
    }
    if !listed.is_empty() || lsn > last_lsn {
        send(
            tx,
            Message::Checkpoint(Checkpoint {
                op_id,
                lsn,
                epoch: epoch.to_string(),
                buckets: listed,
            }),
        )
        .await?;
    }
    Ok(Some((op_id, lsn)))
}

async fn send(tx: &mpsc::Sender<Result<SyncFrame, Status>>, m: Message) -> Result<(), Gone> {
    tx.send(msg(m)).await.map_err(|_| Gone)
}
