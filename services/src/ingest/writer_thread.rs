//! The store writer thread: owns the [`StoreWriter`] and applies messages
//! from the replication task in order, committing the store at replicated
//! transaction boundaries (group commit: one store commit for every run of
//! transactions that arrive together), then publishing the new [`Progress`].
//!
//! A group commits at the last transaction end of a batch when nothing
//! more is queued, or when the next batch queued does not end a
//! transaction either (so complete transactions do not wait for a long one
//! behind them), or after 400 ms or 100,000 ops. At a
//! keepalive following a commit by less than 250 µs (a backlog being
//! drained, where Postgres sends one after every transaction), it first
//! waits out the rest of those 250 µs.
//!
//! SQLite calls block, so they run on this dedicated thread; the replication
//! task keeps reading the network meanwhile. The channel between them is
//! bounded, which applies back-pressure to the walsender.

use super::recent::{Commit, RecentCommits};
use super::{IngestError, RowChanges};
use crate::lsn::Lsn;
use crate::replication::PgOutput;
use crate::schema::CompiledSchema;
use crate::store::{StoreWriter, TextRow, Touched};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// A store commit is forced at the next transaction boundary past these.
/// They only bind while the writer is behind the stream (a writer that
/// keeps up commits whenever nothing more is queued): then every commit
/// rewrites the pages of the op index and of the summaries of every bucket
/// it touched, so with many users fewer, larger commits cost less per
/// change, while streams catching up see the backlog in steps this far
/// apart.
const GROUP_COMMIT_MAX_AGE: Duration = Duration::from_millis(400);
const GROUP_COMMIT_MAX_OPS: u64 = 100_000;
/// At an idle position (a keepalive between transactions), a store commit
/// that would follow the previous one sooner than this waits for the rest
/// of it, taking in what arrives meanwhile. Draining a backlog, Postgres
/// may send a keepalive after every transaction; committing at each one
/// made a store commit of nearly every transaction, and with many users
/// each such commit writes its own pages of every bucket it touches.
const GROUP_COMMIT_MIN_GAP: Duration = Duration::from_micros(250);
/// Batches of messages the channel from the replication task holds: with up
/// to 512 messages each, enough to keep the writer busy while the network is
/// read, few enough to bound the memory a slow writer lets pile up.
const CHANNEL_BATCHES: usize = 32;
/// Tombstones (remove ops) are kept for this many op ids; a client whose
/// cursor is older gets the bucket again from zero.
const TOMBSTONE_RETENTION_OPS: u64 = 1_000_000;
/// Compaction runs each time the op id advances this far.
const COMPACTION_EVERY_OPS: u64 = 100_000;

/// What the replication task tells the writer.
#[derive(Debug)]
pub enum WriterMsg {
    /// Decoded pgoutput messages, in stream order: what the replication
    /// connection had read at once.
    Replicated(Vec<PgOutput>),
    /// No transaction is open and nothing before `lsn` remains to be sent.
    Idle(Lsn),
    /// The replication connection was lost: drop an incomplete transaction.
    Reconnected,
    /// Start loading a snapshot: empty the store under a new epoch.
    SnapshotBegin {
        schema_version: String,
        slot: String,
        epoch: String,
    },
    /// Rows of the snapshot for one table (index into the compiled schema).
    SnapshotRows { table: usize, rows: Vec<TextRow> },
    /// The snapshot is complete; the stream continues from `consistent_point`.
    SnapshotEnd { consistent_point: Lsn },
}

/// What the store holds, published after every store commit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub epoch: String,
    pub schema_version: String,
    pub slot: String,
    /// Highest op id committed.
    pub op_id: u64,
    /// Everything below this LSN is durably stored: safe to acknowledge.
    pub durable_lsn: Lsn,
    /// Counts publications: a reader that sees `seq` right after `seq - 1`
    /// missed nothing, and `touched` tells it all that changed in between.
    pub seq: u64,
    /// What the store commit behind this publication changed (empty for a
    /// publication that only moved `durable_lsn`).
    pub touched: Arc<Touched>,
}

/// The replication task's side of the writer thread.
pub struct WriterHandle {
    pub tx: mpsc::Sender<WriterMsg>,
    pub progress: watch::Receiver<Progress>,
    /// What each publication changed, for the streams.
    pub recent: Arc<RecentCommits>,
    thread: Option<std::thread::JoinHandle<Result<(), IngestError>>>,
}

impl WriterHandle {
    /// Closes the channel and waits for the thread, returning its error.
    /// Blocking.
    pub fn close_and_join(self) -> Result<(), IngestError> {
        let WriterHandle {
            tx,
            progress,
            thread,
            ..
        } = self;
        drop(tx);
        drop(progress);
        match thread.map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(IngestError::WriterPanicked),
            None => Ok(()),
        }
    }
}

fn progress_of(store: &mut StoreWriter, seq: u64) -> Progress {
    let touched = Arc::new(store.take_touched());
    let s = store.state();
    Progress {
        epoch: s.epoch.clone(),
        schema_version: s.schema_version.clone(),
        slot: s.slot.clone(),
        op_id: s.last_op_id,
        durable_lsn: s.durable_lsn,
        seq,
        touched,
    }
}

/// Publishes progress with consecutive sequence numbers, each first
/// recorded in the recent commits.
struct Publisher<'a> {
    tx: &'a watch::Sender<Progress>,
    recent: &'a RecentCommits,
    seq: std::cell::Cell<u64>,
}

impl Publisher<'_> {
    fn publish(&self, store: &mut StoreWriter) {
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        let progress = progress_of(store, seq);
        self.recent.push(Commit {
            seq,
            epoch: progress.epoch.as_str().into(),
            op_id_before: self.tx.borrow().op_id,
            op_id: progress.op_id,
            durable_lsn: progress.durable_lsn,
            touched: progress.touched.clone(),
        });
        self.tx.send_replace(progress);
    }
}

/// Starts the writer thread over an opened store.
pub fn spawn_writer(mut store: StoreWriter, schema: Arc<CompiledSchema>) -> WriterHandle {
    let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
    let (progress_tx, progress) = watch::channel(progress_of(&mut store, 0));
    let recent = Arc::new(RecentCommits::default());
    let thread_recent = recent.clone();
    let thread = std::thread::Builder::new()
        .name("outpost-store".into())
        .spawn(move || {
            let result = run(
                store,
                RowChanges::new(schema),
                rx,
                &progress_tx,
                &thread_recent,
            );
            if let Err(e) = &result {
                tracing::error!(error = %e, "store writer stopped");
            }
            result
        })
        .expect("spawning the store writer thread");
    WriterHandle {
        tx,
        progress,
        recent,
        thread: Some(thread),
    }
}

/// Whether the open store transaction must commit at the next boundary.
fn due(opened_at: Option<Instant>, ops: u64) -> bool {
    opened_at.is_some_and(|t| t.elapsed() >= GROUP_COMMIT_MAX_AGE) || ops >= GROUP_COMMIT_MAX_OPS
}

/// At the last transaction end received so far (what follows it in its
/// batch, if anything, does not end), or an idle position: whether to
/// commit the open group now. With `gap` (the last commit's time), the
/// group first waits out the rest of [`GROUP_COMMIT_MIN_GAP`] since then.
/// Then it looks at what arrived (taken into `held`): it stays open only
/// for a batch that ends a transaction, or an idle position, so that
/// complete transactions do not wait for a long one behind them.
fn commit_now(
    rx: &mut mpsc::Receiver<WriterMsg>,
    held: &mut Option<WriterMsg>,
    gap: Option<Instant>,
) -> bool {
    if let Some(committed_at) = gap {
        let since = committed_at.elapsed();
        if rx.is_empty() && since < GROUP_COMMIT_MIN_GAP {
            std::thread::sleep(GROUP_COMMIT_MIN_GAP - since);
        }
    }
    *held = rx.try_recv().ok();
    match held {
        None => true,
        Some(WriterMsg::Replicated(batch)) => {
            !batch.iter().any(|m| matches!(m, PgOutput::Commit(_)))
        }
        Some(WriterMsg::Idle(_)) => false,
        Some(_) => true,
    }
}

fn run(
    mut store: StoreWriter,
    mut changes: RowChanges,
    mut rx: mpsc::Receiver<WriterMsg>,
    progress: &watch::Sender<Progress>,
    recent: &RecentCommits,
) -> Result<(), IngestError> {
    let publisher = Publisher {
        tx: progress,
        recent,
        seq: std::cell::Cell::new(0),
    };
    let mut opened_at: Option<Instant> = None;
    let mut ops_in_txn: u64 = 0;
    let committed_at = std::cell::Cell::new(Instant::now());
    let mut compacted_at = store.state().last_op_id;
    let mut commit = |store: &mut StoreWriter,
                      opened_at: &mut Option<Instant>,
                      ops: &mut u64|
     -> Result<(), IngestError> {
        let last = store.state().last_op_id;
        if store.in_transaction() && last >= compacted_at + COMPACTION_EVERY_OPS {
            compacted_at = last;
            if let Some(horizon) = last.checked_sub(TOMBSTONE_RETENTION_OPS) {
                let dropped = store.compact_tombstones(horizon)?;
                tracing::debug!(horizon, dropped, "tombstones compacted");
            }
        }
        store.commit()?;
        tracing::trace!(ops = *ops, "store commit");
        committed_at.set(Instant::now());
        *opened_at = None;
        *ops = 0;
        publisher.publish(store);
        Ok(())
    };
    // A message taken off the channel early, to decide whether to commit
    // before it: handled first on the next turn.
    let mut held: Option<WriterMsg> = None;
    while let Some(msg) = held.take().or_else(|| rx.blocking_recv()) {
        match msg {
            WriterMsg::Replicated(batch) => {
                // The last transaction end of the batch: what follows it
                // (if anything) starts a transaction the batch does not end.
                let last_end = batch.iter().rposition(|m| matches!(m, PgOutput::Commit(_)));
                for (i, m) in batch.into_iter().enumerate() {
                    let closed = changes.apply(&mut store, m)?;
                    if store.in_transaction() && opened_at.is_none() {
                        opened_at = Some(Instant::now());
                    }
                    ops_in_txn += changes.take_ops_written();
                    if closed.is_some() {
                        let due = due(opened_at, ops_in_txn);
                        let at_last_end = Some(i) == last_end;
                        if due || (at_last_end && commit_now(&mut rx, &mut held, None)) {
                            commit(&mut store, &mut opened_at, &mut ops_in_txn)?;
                        }
                    }
                }
            }
            WriterMsg::Idle(lsn) => {
                // Postgres may send these between every two transactions of
                // a backlog: they end a group like a transaction does.
                if !store.in_transaction()
                    || due(opened_at, ops_in_txn)
                    || commit_now(&mut rx, &mut held, Some(committed_at.get()))
                {
                    commit(&mut store, &mut opened_at, &mut ops_in_txn)?;
                }
                if lsn > store.state().durable_lsn {
                    store.mark_idle(lsn)?;
                    // Inside a store transaction the position is published
                    // with its commit.
                    if !store.in_transaction() {
                        publisher.publish(&mut store);
                    }
                }
            }
            WriterMsg::Reconnected => {
                store.rollback()?;
                changes.reset_connection();
                opened_at = None;
                ops_in_txn = 0;
                publisher.publish(&mut store);
            }
            WriterMsg::SnapshotBegin {
                schema_version,
                slot,
                epoch,
            } => {
                store.rollback()?;
                changes.reset_connection();
                store.reinitialise(&schema_version, &slot, &epoch)?;
            }
            WriterMsg::SnapshotRows { table, rows } => {
                for row in rows {
                    changes.snapshot_row(&mut store, table, row)?;
                }
                changes.take_ops_written();
            }
            WriterMsg::SnapshotEnd { consistent_point } => {
                // Transactions that committed before the consistent point are
                // in the snapshot; the slot streams only later ones.
                store.mark_commit(Lsn(consistent_point.0.saturating_sub(1)), consistent_point);
                store.commit()?;
                let started = Instant::now();
                store.truncate_wal()?;
                tracing::debug!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "store log emptied after the snapshot"
                );
                // Publishes the committed snapshot.
                commit(&mut store, &mut opened_at, &mut ops_in_txn)?;
            }
        }
    }
    store.rollback()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::{Begin, Commit};

    fn begin() -> PgOutput {
        PgOutput::Begin(Begin {
            final_lsn: Lsn(0x200),
            commit_time: 0,
            xid: 7,
        })
    }
    fn commit() -> PgOutput {
        PgOutput::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(0x200),
            end_lsn: Lsn(0x208),
            commit_time: 0,
        })
    }

    #[test]
    fn a_group_waits_only_for_what_ends_a_transaction() {
        let (tx, mut rx) = mpsc::channel(8);
        let mut held = None;
        // Nothing queued: commit.
        assert!(commit_now(&mut rx, &mut held, None));
        assert!(held.is_none());

        // A short transaction queued behind: it joins the group.
        tx.try_send(WriterMsg::Replicated(vec![begin(), commit()]))
            .unwrap();
        assert!(!commit_now(&mut rx, &mut held, None));
        assert!(matches!(held.take(), Some(WriterMsg::Replicated(b)) if b.len() == 2));

        // The start of a long one: the complete ones commit first.
        tx.try_send(WriterMsg::Replicated(vec![begin()])).unwrap();
        assert!(commit_now(&mut rx, &mut held, None));
        assert!(matches!(held.take(), Some(WriterMsg::Replicated(b)) if b.len() == 1));

        // An idle position behind: it ends the group instead.
        tx.try_send(WriterMsg::Idle(Lsn(0x300))).unwrap();
        assert!(!commit_now(&mut rx, &mut held, None));
        assert!(matches!(held.take(), Some(WriterMsg::Idle(_))));

        // Anything else: commit before it.
        tx.try_send(WriterMsg::Reconnected).unwrap();
        assert!(commit_now(&mut rx, &mut held, None));
        assert!(matches!(held.take(), Some(WriterMsg::Reconnected)));
    }

    #[test]
    fn at_a_keepalive_right_after_a_commit_the_group_waits_out_the_gap() {
        let (tx, mut rx) = mpsc::channel(8);
        let mut held = None;
        // The last commit just now, nothing queued: the group waits for
        // the rest of the gap, then commits.
        let started = Instant::now();
        assert!(commit_now(&mut rx, &mut held, Some(Instant::now())));
        assert!(started.elapsed() >= GROUP_COMMIT_MIN_GAP);

        // A transaction already queued joins the group, gap or not.
        tx.try_send(WriterMsg::Replicated(vec![begin(), commit()]))
            .unwrap();
        assert!(!commit_now(&mut rx, &mut held, Some(Instant::now())));
        assert!(held.take().is_some());

        // Without the gap (a transaction boundary), no wait at all is
        // needed to commit: the channel is only looked at.
        let long_ago = Instant::now() - Duration::from_secs(1);
        assert!(commit_now(&mut rx, &mut held, Some(long_ago)));
        assert!(commit_now(&mut rx, &mut held, None));
    }
}
