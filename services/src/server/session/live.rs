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
//!   recent commits (else the store is read), the ops are sent in op id
//!   order across buckets, and the checkpoint lists the summary each
//!   changed bucket has after the newest commit, which is committed in the
//!   store.
//! - Op id order across buckets matters: the commits hold every op they
//!   made, also a row's intermediate versions (a transaction that updates a
//!   row, then moves it to another bucket, puts the first version into the
//!   old bucket, then removes it there and puts the last version into the
//!   new one). A client holds one version of a row, whatever buckets hold
//!   it, so it must receive them in the order they were made to end with
//!   the last one. (The store keeps only a row's latest op per bucket, so
//!   a store read needs no such order.)
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

/// Every pending op as (index of its bucket in `pending`, op id, encoding),
/// in op id order across buckets.
fn in_op_order<'a>(pending: &[(&str, Pending<'a>)]) -> Vec<(usize, u64, &'a [u8])> {
    let mut ops: Vec<(usize, u64, &'a [u8])> = pending
        .iter()
        .enumerate()
        .flat_map(|(b, (_, p))| p.ops.iter().map(move |&(id, op)| (b, id, op)))
        .collect();
    // Each bucket's ops are in order already: a stable sort by op id keeps
    // them so (op ids are unique anyway).
    ops.sort_by_key(|&(_, id, _)| id);
    ops
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
    // The frame being filled, with the index of its bucket.
    let mut frame: Option<(usize, DataFrame)> = None;
    for (b, id, op) in in_op_order(&pending) {
        if frame.as_ref().is_some_and(|(current, _)| *current != b)
            && let Some((_, full)) = frame.take()
        {
            tx.send(Ok(full.finish())).await.map_err(|_| Gone)?;
        }
        let (_, f) = frame.get_or_insert_with(|| (b, DataFrame::new(pending[b].0)));
        f.push_encoded(id, op);
        if (f.len() >= ctx.batch_ops || f.bytes() >= BATCH_BYTES)
            && let Some((_, full)) = frame.take()
        {
            tx.send(Ok(full.finish())).await.map_err(|_| Gone)?;
        }
    }
    if let Some((_, last)) = frame {
        tx.send(Ok(last.finish())).await.map_err(|_| Gone)?;
    }
    let listed: Vec<BucketChecksum> = pending
        .iter()
        .map(|(bucket, p)| BucketChecksum {
            bucket: bucket.to_string(),
            checksum: p.checksum,
            count: p.count,
        })
        .collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pending<'a>(ops: &[(u64, &'a [u8])]) -> Pending<'a> {
        Pending {
            ops: ops.to_vec(),
            checksum: 0,
            count: 0,
        }
    }

    #[test]
    fn ops_go_out_in_op_id_order_across_buckets() {
        // A row updated in list 8, then moved to list 6, in one transaction.
        let pending = vec![
            ("todos[6]", pending(&[(12, b"put v2".as_slice())])),
            (
                "todos[8]",
                pending(&[(10, b"put v1".as_slice()), (11, b"remove".as_slice())]),
            ),
            ("todos[9]", pending(&[(13, b"put".as_slice())])),
        ];
        let order: Vec<(usize, u64)> = in_op_order(&pending)
            .into_iter()
            .map(|(b, id, _)| (b, id))
            .collect();
        assert_eq!(order, [(1, 10), (1, 11), (0, 12), (2, 13)]);
    }
}
