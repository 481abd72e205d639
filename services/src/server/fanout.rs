//! Fan-out of store commits to the streams they concern.
//!
//! One dispatcher task follows the store's [`Progress`]; for each commit it
//! looks up the touched buckets and membership keys in an index of what each
//! open stream holds, and signals those streams only. The cost of a commit
//! grows with what it touched, not with the number of open streams, and an
//! idle stream is never woken by other users' changes.
//!
//! After signalling, the dispatcher publishes the progress it has dispatched
//! ([`Dispatched`]). A stream that reads a dispatched position and then
//! finds no signal pending knows that no commit up to that position touched
//! it, so it may tell its client that its state is current up to there.
//!
//! Invariants:
//! - A stream's signal is set before the dispatched position that covers the
//!   touching commit is published (so reading the position, then the signal,
//!   never misses a change).
//! - A publication missed by the dispatcher (a gap in `seq`) is dispatched
//!   from the recent commits; when it is no longer there, or the store's
//!   epoch changed, every stream is signalled: when in doubt, streams read.
//! - A stream whose index entries change after a commit was dispatched must
//!   read again itself ([`Registration::set_buckets`] tells it when).
//! - Entries leave the index when their [`Registration`] is dropped.
//! - When the store's writer stops, the dispatched position says so
//!   (`closed`) and every stream is signalled, so that streams end and the
//!   server can shut down.

use crate::ingest::{Progress, RecentCommits};
use crate::store::Touched;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, watch};

/// The progress the dispatcher has delivered signals for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Dispatched {
    pub epoch: String,
    /// Highest op id dispatched.
    pub op_id: u64,
    /// Everything below this LSN is stored and dispatched.
    pub durable_lsn: u64,
    /// The store's writer stopped: streams end.
    pub closed: bool,
}

/// What wakes one stream.
#[derive(Debug, Default)]
pub(super) struct Signal {
    /// A commit touched the stream's buckets or memberships since it last
    /// took this flag.
    dirty: AtomicBool,
    /// The client awaits a checkpoint at or past this LSN (its write's
    /// commit).
    want_lsn: AtomicU64,
    notify: Notify,
}

impl Signal {
    fn touch(&self) {
        self.dirty.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// Takes the dirty flag.
    pub(super) fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::SeqCst)
    }

    /// The LSN the client waits for a checkpoint at (0: none).
    pub(super) fn want_lsn(&self) -> u64 {
        self.want_lsn.load(Ordering::SeqCst)
    }

    /// Resolves when the stream was signalled.
    pub(super) async fn notified(&self) {
        self.notify.notified().await;
    }
}

#[derive(Debug)]
struct Entry {
    signal: Arc<Signal>,
    client_id: String,
    buckets: Vec<Arc<str>>,
    members: Vec<(usize, String)>,
}

#[derive(Debug, Default)]
struct Index {
    next_id: u64,
    streams: HashMap<u64, Entry>,
    by_bucket: HashMap<Arc<str>, Vec<u64>>,
    by_member: HashMap<(usize, String), Vec<u64>>,
    by_client: HashMap<String, Vec<u64>>,
    /// Streams whose client waits for a checkpoint at an LSN not yet stored.
    awaiting_lsn: HashMap<u64, u64>,
}

fn unlink<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Vec<u64>>, key: &K, id: u64) {
    if let Some(ids) = map.get_mut(key) {
        ids.retain(|&i| i != id);
        if ids.is_empty() {
            map.remove(key);
        }
    }
}

/// Signals the streams holding a bucket or a membership key of `touched`.
fn touch_streams(index: &Index, touched: &Touched) {
    let ids = touched
        .buckets
        .keys()
        .filter_map(|bucket| index.by_bucket.get(bucket.as_str()))
        .chain(
            touched
                .members
                .iter()
                .filter_map(|member| index.by_member.get(member)),
        );
    for id in ids.flatten() {
        if let Some(e) = index.streams.get(id) {
            e.signal.touch();
        }
    }
}

/// The index of open streams and the dispatcher's published position.
#[derive(Debug)]
pub struct Fanout {
    index: Mutex<Index>,
    dispatched: watch::Sender<Dispatched>,
    /// What each store commit changed, as the writer recorded it.
    recent: Arc<RecentCommits>,
}

impl Default for Fanout {
    fn default() -> Self {
        Fanout::new(Arc::default())
    }
}

impl Fanout {
    /// A fan-out of the store whose writer records its commits in `recent`.
    pub fn new(recent: Arc<RecentCommits>) -> Self {
        Fanout {
            index: Mutex::new(Index::default()),
            dispatched: watch::channel(Dispatched::default()).0,
            recent,
        }
    }

    /// The store's recent commits.
    pub(super) fn recent(&self) -> &RecentCommits {
        &self.recent
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        // The index stays consistent even if a holder panicked: every update
        // completes before the lock is released.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The dispatched position, as it moves.
    pub(super) fn subscribe(&self) -> watch::Receiver<Dispatched> {
        self.dispatched.subscribe()
    }

    /// Adds a stream of `client_id` whose user's bucket set depends on
    /// `members`; its buckets are set with [`Registration::set_buckets`].
    pub(super) fn register(
        self: &Arc<Self>,
        client_id: &str,
        members: Vec<(usize, String)>,
    ) -> Registration {
        let signal = Arc::new(Signal::default());
        let mut index = self.index();
        let id = index.next_id;
        index.next_id += 1;
        for m in &members {
            index.by_member.entry(m.clone()).or_default().push(id);
        }
        index
            .by_client
            .entry(client_id.to_string())
            .or_default()
            .push(id);
        index.streams.insert(
            id,
            Entry {
                signal: signal.clone(),
                client_id: client_id.to_string(),
                buckets: Vec::new(),
                members,
            },
        );
        Registration {
            fanout: self.clone(),
            id,
            signal,
        }
    }

    /// A write of `client_id` committed at `lsn`: its streams send a
    /// checkpoint as soon as the store has reached `lsn`, even if nothing
    /// they hold changed.
    pub fn expect_lsn(&self, client_id: &str, lsn: u64) {
        let durable = self.dispatched.borrow().durable_lsn;
        let mut index = self.index();
        let Index {
            streams,
            by_client,
            awaiting_lsn,
            ..
        } = &mut *index;
        for id in by_client.get(client_id).into_iter().flatten() {
            let Some(entry) = streams.get(id) else {
                continue;
            };
            entry.signal.want_lsn.fetch_max(lsn, Ordering::SeqCst);
            if lsn <= durable {
                entry.signal.notify.notify_one();
            } else {
                let want = awaiting_lsn.entry(*id).or_insert(0);
                *want = (*want).max(lsn);
            }
        }
    }

    /// Signals the streams a publication concerns, then publishes the
    /// dispatched position, under the index lock: a stream that adds
    /// buckets ([`Registration::set_buckets`]) is either in the index before
    /// the signals or sees the new position after, never neither.
    /// `gap`: publications were missed.
    fn dispatch(&self, p: &Progress, gap: bool) {
        let epoch_changed = self.dispatched.borrow().epoch != p.epoch;
        let mut index = self.index();
        {
            if gap || epoch_changed {
                for entry in index.streams.values() {
                    entry.signal.touch();
                }
            } else {
                touch_streams(&index, &p.touched);
            }
            let durable = p.durable_lsn.0;
            let Index {
                awaiting_lsn,
                streams,
                ..
            } = &mut *index;
            awaiting_lsn.retain(|id, want| {
                if *want > durable {
                    return true;
                }
                if let Some(e) = streams.get(id) {
                    e.signal.notify.notify_one();
                }
                false
            });
        }
        self.dispatched.send_replace(Dispatched {
            epoch: p.epoch.clone(),
            op_id: p.op_id,
            durable_lsn: p.durable_lsn.0,
            closed: false,
        });
        drop(index);
    }

    /// Signals the streams the publications after `seq` and before
    /// `through` touched, from the recent commits; false when they are no
    /// longer all there.
    fn catch_up_missed(&self, seq: u64, through: u64) -> bool {
        let Some(missed) = self.recent.range(seq, through.saturating_sub(1)) else {
            return false;
        };
        let index = self.index();
        for commit in &missed {
            touch_streams(&index, &commit.touched);
        }
        true
    }

    /// Tells every stream that no more progress will come.
    fn close(&self) {
        self.dispatched.send_modify(|d| d.closed = true);
        for entry in self.index().streams.values() {
            entry.signal.touch();
        }
    }

    /// Follows the store's progress until its sender is gone, then closes
    /// every stream.
    pub async fn run(self: Arc<Self>, mut progress: watch::Receiver<Progress>) {
        let mut last_seq: Option<u64> = None;
        loop {
            {
                let p = progress.borrow_and_update();
                let gap = last_seq.is_some_and(|l| p.seq != l + 1) && Some(p.seq) != last_seq;
                if Some(p.seq) != last_seq {
                    let recovered = gap && last_seq.is_some_and(|l| self.catch_up_missed(l, p.seq));
                    if gap && !recovered {
                        tracing::debug!(seq = p.seq, "publications missed: every stream reads");
                    }
                    self.dispatch(&p, gap && !recovered);
                    last_seq = Some(p.seq);
                }
            }
            if progress.changed().await.is_err() {
                self.close();
                return;
            }
        }
    }
}

/// One stream's place in the index; leaves it when dropped.
#[derive(Debug)]
pub(super) struct Registration {
    fanout: Arc<Fanout>,
    id: u64,
    signal: Arc<Signal>,
}

impl Registration {
    pub(super) fn signal(&self) -> &Signal {
        &self.signal
    }

    /// Sets the buckets the stream holds, as of its read at `read_op_id`.
    /// When the set changed and commits past that read were dispatched
    /// meanwhile, those commits were not checked against the new buckets:
    /// the stream is signalled to read again.
    pub(super) fn set_buckets(&self, buckets: &[String], read_op_id: u64) {
        let mut index = self.fanout.index();
        let Some(entry) = index.streams.get(&self.id) else {
            return;
        };
        let same = entry.buckets.len() == buckets.len()
            && entry
                .buckets
                .iter()
                .zip(buckets)
                .all(|(a, b)| a.as_ref() == b.as_str());
        if same {
            return;
        }
        let old = entry.buckets.clone();
        for b in &old {
            unlink(&mut index.by_bucket, b, self.id);
        }
        let new: Vec<Arc<str>> = buckets.iter().map(|b| Arc::from(b.as_str())).collect();
        for b in &new {
            index.by_bucket.entry(b.clone()).or_default().push(self.id);
        }
        if let Some(entry) = index.streams.get_mut(&self.id) {
            entry.buckets = new;
        }
        drop(index);
        if self.fanout.dispatched.borrow().op_id > read_op_id {
            self.signal.touch();
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut index = self.fanout.index();
        let Some(entry) = index.streams.remove(&self.id) else {
            return;
        };
        for b in &entry.buckets {
            unlink(&mut index.by_bucket, b, self.id);
        }
        for m in &entry.members {
            unlink(&mut index.by_member, m, self.id);
        }
        unlink(&mut index.by_client, &entry.client_id, self.id);
        index.awaiting_lsn.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;

    fn progress(seq: u64, op_id: u64, buckets: &[&str], members: &[(usize, &str)]) -> Progress {
        Progress {
            epoch: "e".into(),
            op_id,
            durable_lsn: Lsn(op_id * 10),
            seq,
            touched: Arc::new(Touched::of(buckets, members)),
            ..Progress::default()
        }
    }

    #[test]
    fn only_touched_streams_are_signalled() {
        let fanout = Arc::new(Fanout::default());
        let a = fanout.register("ca", vec![(0, "alice".into())]);
        let b = fanout.register("cb", vec![(0, "bob".into())]);
        a.set_buckets(&["items[alice]".into()], 0);
        b.set_buckets(&["items[bob]".into()], 0);
        // The first publication brings the store's epoch: everyone reads.
        fanout.dispatch(&progress(1, 1, &[], &[]), false);
        assert!(a.signal().take_dirty() && b.signal().take_dirty());
        fanout.dispatch(&progress(2, 2, &["items[alice]"], &[]), false);
        assert!(a.signal().take_dirty());
        assert!(!b.signal().take_dirty());
        fanout.dispatch(&progress(3, 3, &[], &[(0, "bob")]), false);
        assert!(!a.signal().take_dirty());
        assert!(b.signal().take_dirty());
        fanout.dispatch(&progress(4, 4, &[], &[]), false);
        assert!(!a.signal().take_dirty() && !b.signal().take_dirty());
        assert_eq!(fanout.subscribe().borrow().op_id, 4);
    }

    #[test]
    fn a_gap_signals_every_stream() {
        let fanout = Arc::new(Fanout::default());
        let a = fanout.register("ca", Vec::new());
        let b = fanout.register("cb", Vec::new());
        fanout.dispatch(&progress(4, 4, &[], &[]), false);
        a.signal().take_dirty();
        b.signal().take_dirty();
        fanout.dispatch(&progress(6, 6, &[], &[]), true);
        assert!(a.signal().take_dirty() && b.signal().take_dirty());
    }

    #[test]
    fn new_buckets_after_a_later_dispatch_read_again() {
        let fanout = Arc::new(Fanout::default());
        fanout.dispatch(&progress(1, 1, &[], &[]), false);
        let a = fanout.register("ca", Vec::new());
        a.set_buckets(&["x".into()], 1);
        assert!(!a.signal().take_dirty());
        fanout.dispatch(&progress(2, 2, &["y"], &[]), false);
        // Read at op 1, but op 2 (which touched `y`) was dispatched before
        // `y` was in the index.
        a.set_buckets(&["x".into(), "y".into()], 1);
        assert!(a.signal().take_dirty());
    }

    #[test]
    fn dropped_streams_leave_the_index() {
        let fanout = Arc::new(Fanout::default());
        let a = fanout.register("ca", vec![(0, "alice".into())]);
        a.set_buckets(&["x".into()], 0);
        drop(a);
        let index = fanout.index();
        assert!(index.streams.is_empty() && index.by_bucket.is_empty());
        assert!(index.by_member.is_empty() && index.by_client.is_empty());
    }

    #[test]
    fn a_write_wakes_its_client_when_the_store_reaches_it() {
        let fanout = Arc::new(Fanout::default());
        let a = fanout.register("ca", Vec::new());
        fanout.expect_lsn("ca", 25);
        assert_eq!(a.signal().want_lsn(), 25);
        fanout.dispatch(&progress(1, 2, &[], &[]), false);
        assert_eq!(fanout.index().awaiting_lsn.len(), 1);
        fanout.dispatch(&progress(2, 3, &[], &[]), false);
        assert!(fanout.index().awaiting_lsn.is_empty());
    }

    #[tokio::test]
    async fn streams_learn_that_the_store_stopped() {
        let fanout = Arc::new(Fanout::default());
        let a = fanout.register("ca", Vec::new());
        let (tx, rx) = watch::channel(progress(1, 1, &[], &[]));
        let run = tokio::spawn(fanout.clone().run(rx));
        drop(tx);
        run.await.expect("the dispatcher ends");
        assert!(a.signal().take_dirty());
        assert!(fanout.subscribe().borrow().closed);
    }
}
