//! The store's recent commits, kept in memory: for each publication of the
//! writer, what its store commit changed (the ops per bucket with the bucket
//! summaries after them, and the membership keys). A stream that is current
//! up to a recent commit is brought up to date from here, without a store
//! read; the dispatcher also reads here the commits it missed.
//!
//! Invariants:
//! - Entries are consecutive publications (`seq` n, n + 1, …), each pushed
//!   after its store commit and before its [`super::Progress`] is
//!   published: whoever sees a publication finds its entry here, unless it
//!   was already dropped.
//! - The oldest entries are dropped first, once there are more than
//!   [`MAX_ENTRIES`] or they hold more than [`MAX_BYTES`]. A reader
//!   asking for commits that are no longer all here gets `None` and reads
//!   the store: never a gap.
//! - Op ids only grow from one entry to the next; `op_id_before` of an entry
//!   is the `op_id` of the publication before it.

use crate::lsn::Lsn;
use crate::store::Touched;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// Most entries kept: a few seconds of commits on a busy store.
const MAX_ENTRIES: usize = 4096;
/// Most memory kept over all entries (as [`Touched::bytes`] counts it).
const MAX_BYTES: usize = 64 << 20;

/// One publication of the writer and what its commit changed.
#[derive(Debug)]
pub struct Commit {
    pub seq: u64,
    pub epoch: Arc<str>,
    /// The highest op id before this commit.
    pub op_id_before: u64,
    /// The highest op id after it.
    pub op_id: u64,
    /// Everything below this LSN is stored once this commit is.
    pub durable_lsn: Lsn,
    pub touched: Arc<Touched>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: VecDeque<Arc<Commit>>,
    bytes: usize,
    /// The seqs of the entries that touched each bucket, oldest first.
    by_bucket: HashMap<String, VecDeque<u64>>,
    /// The seqs of the entries that changed each membership key.
    by_member: HashMap<(usize, String), VecDeque<u64>>,
    /// The first seq of the newest entry's epoch.
    epoch_from: u64,
}

impl Inner {
    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
        self.by_bucket.clear();
        self.by_member.clear();
    }

    fn evict_front(&mut self) {
        let Some(old) = self.entries.pop_front() else {
            return;
        };
        self.bytes -= old.touched.bytes();
        for bucket in old.touched.buckets.keys() {
            drop_front(&mut self.by_bucket, bucket, old.seq);
        }
        for member in &old.touched.members {
            drop_front(&mut self.by_member, member, old.seq);
        }
    }

    /// The entry of `seq` (which is held).
    fn entry(&self, seq: u64) -> Option<&Arc<Commit>> {
        let front = self.entries.front()?.seq;
        self.entries.get(seq.checked_sub(front)? as usize)
    }
}

/// Drops `seq` from the front of `key`'s list (where the oldest is).
fn drop_front<K: std::hash::Hash + Eq + ?Sized, Q>(
    map: &mut HashMap<Q, VecDeque<u64>>,
    key: &K,
    seq: u64,
) where
    Q: std::borrow::Borrow<K> + std::hash::Hash + Eq,
{
    if let Some(seqs) = map.get_mut(key) {
        if seqs.front() == Some(&seq) {
            seqs.pop_front();
        }
        if seqs.is_empty() {
            map.remove(key);
        }
    }
}

/// The seqs at or after `from` in a list of increasing seqs.
fn seqs_from(seqs: Option<&VecDeque<u64>>, from: u64) -> impl Iterator<Item = u64> + '_ {
    seqs.map(|s| s.range(s.partition_point(|&x| x < from)..))
        .into_iter()
        .flatten()
        .copied()
}

/// The recent commits of one store.
#[derive(Debug, Default)]
pub struct RecentCommits {
    inner: Mutex<Inner>,
}

/// What the commits after a stream's position changed of its buckets.
#[derive(Debug)]
pub struct Since {
    /// For each of the stream's buckets that changed: the commits that
    /// changed it, oldest first.
    pub buckets: Vec<(String, Vec<Arc<Commit>>)>,
    /// The newest publication (also when it changed no op).
    pub latest: Arc<Commit>,
}

impl RecentCommits {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Every update completes before the lock is released.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends the next publication. An entry that does not follow the last
    /// one (a new writer) replaces everything.
    pub(super) fn push(&self, commit: Commit) {
        let mut inner = self.inner();
        let last = inner.entries.back().map(|l| (l.seq, l.epoch.clone()));
        match &last {
            Some((seq, _)) if seq + 1 != commit.seq => inner.clear(),
            _ => {}
        }
        if inner.entries.is_empty() || last.is_some_and(|(_, e)| e != commit.epoch) {
            inner.epoch_from = commit.seq;
        }
        inner.bytes += commit.touched.bytes();
        for bucket in commit.touched.buckets.keys() {
            match inner.by_bucket.get_mut(bucket) {
                Some(seqs) => seqs.push_back(commit.seq),
                None => {
                    inner
                        .by_bucket
                        .insert(bucket.clone(), VecDeque::from([commit.seq]));
                }
            }
        }
        for member in &commit.touched.members {
            inner
                .by_member
                .entry(member.clone())
                .or_default()
                .push_back(commit.seq);
        }
        inner.entries.push_back(Arc::new(commit));
        while inner.entries.len() > MAX_ENTRIES
            || (inner.bytes > MAX_BYTES && inner.entries.len() > 1)
        {
            inner.evict_front();
        }
    }

    /// What the commits whose op id is past `op_id` changed of `buckets`,
    /// for a stream of store epoch `epoch` whose bucket set depends on
    /// `members`. `None` when the store must be read instead: some of those
    /// commits were dropped, one changed a key of `members`, one of them
    /// touching `buckets` was too large to keep its ops, or the epoch
    /// changed. Costs what the stream holds, not what the log holds.
    pub fn since_op<'a>(
        &self,
        op_id: u64,
        epoch: &str,
        buckets: impl Iterator<Item = &'a String>,
        members: &[(usize, String)],
    ) -> Option<Since> {
        let inner = self.inner();
        let latest = inner.entries.back()?.clone();
        if &*latest.epoch != epoch {
            return None;
        }
        let first = inner.entries.partition_point(|c| c.op_id <= op_id);
        let covered = match first.checked_sub(1) {
            Some(_) => true,
            None => inner.entries.front()?.op_id_before <= op_id,
        };
        if !covered {
            return None;
        }
        let Some(from) = inner.entries.get(first).map(|c| c.seq) else {
            return Some(Since {
                buckets: Vec::new(),
                latest,
            });
        };
        if from < inner.epoch_from {
            return None;
        }
        if members
            .iter()
            .any(|m| seqs_from(inner.by_member.get(m), from).next().is_some())
        {
            return None;
        }
        let mut changed = Vec::new();
        for bucket in buckets {
            let mut commits = Vec::new();
            for seq in seqs_from(inner.by_bucket.get(bucket), from) {
                let commit = inner.entry(seq)?;
                if commit.touched.ops_dropped {
                    return None;
                }
                commits.push(commit.clone());
            }
            if !commits.is_empty() {
                changed.push((bucket.clone(), commits));
            }
        }
        Some(Since {
            buckets: changed,
            latest,
        })
    }

    /// The publications after `seq` up to `through`, when all are here.
    pub fn range(&self, seq: u64, through: u64) -> Option<Vec<Arc<Commit>>> {
        let inner = self.inner();
        let front = inner.entries.front()?.seq;
        if seq + 1 < front || through < seq {
            return None;
        }
        let from = (seq + 1 - front) as usize;
        let to = (through + 1).checked_sub(front)? as usize;
        (to <= inner.entries.len()).then(|| inner.entries.range(from..to).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(seq: u64, op_id_before: u64, op_id: u64) -> Commit {
        touching(seq, op_id_before, op_id, &[], &[])
    }

    fn touching(
        seq: u64,
        op_id_before: u64,
        op_id: u64,
        buckets: &[&str],
        members: &[(usize, &str)],
    ) -> Commit {
        Commit {
            seq,
            epoch: "e".into(),
            op_id_before,
            op_id,
            durable_lsn: Lsn(seq * 10),
            touched: Arc::new(Touched::of(buckets, members)),
        }
    }

    fn seqs(commits: &[Arc<Commit>]) -> Vec<u64> {
        commits.iter().map(|c| c.seq).collect()
    }

    /// The seqs that changed each of `buckets` past `op_id`.
    fn changed(recent: &RecentCommits, op_id: u64, buckets: &[&str]) -> Option<Vec<Vec<u64>>> {
        let buckets: Vec<String> = buckets.iter().map(|b| b.to_string()).collect();
        let since = recent.since_op(op_id, "e", buckets.iter(), &[])?;
        Some(since.buckets.iter().map(|(_, c)| seqs(c)).collect())
    }

    #[test]
    fn commits_past_a_position() {
        let recent = RecentCommits::default();
        assert!(changed(&recent, 0, &["a"]).is_none());
        recent.push(touching(1, 0, 3, &["a", "b"], &[]));
        recent.push(commit(2, 3, 3));
        recent.push(touching(3, 3, 5, &["a"], &[]));
        assert_eq!(changed(&recent, 3, &["a", "b"]), Some(vec![vec![3]]));
        assert_eq!(
            changed(&recent, 0, &["a", "b"]),
            Some(vec![vec![1, 3], vec![1]])
        );
        assert_eq!(changed(&recent, 5, &["a"]), Some(vec![]));
        let since = recent
            .since_op(5, "e", std::iter::empty(), &[])
            .expect("covered");
        assert_eq!(since.latest.seq, 3);
        assert!(
            recent
                .since_op(0, "other", std::iter::empty(), &[])
                .is_none()
        );
    }

    #[test]
    fn membership_changes_and_large_commits_go_to_the_store() {
        let recent = RecentCommits::default();
        recent.push(touching(1, 0, 1, &["a"], &[(0, "alice")]));
        let alice = [(0, "alice".to_string())];
        let bob = [(0, "bob".to_string())];
        let a = ["a".to_string()];
        assert!(recent.since_op(0, "e", a.iter(), &alice).is_none());
        assert!(recent.since_op(0, "e", a.iter(), &bob).is_some());
        assert!(recent.since_op(1, "e", a.iter(), &alice).is_some());
        let mut large = touching(2, 1, 2, &["a"], &[]);
        Arc::get_mut(&mut large.touched)
            .expect("unshared")
            .ops_dropped = true;
        recent.push(large);
        assert!(recent.since_op(1, "e", a.iter(), &bob).is_none());
        let b = ["b".to_string()];
        assert!(recent.since_op(1, "e", b.iter(), &bob).is_some());
    }

    #[test]
    fn dropped_commits_are_never_skipped() {
        let recent = RecentCommits::default();
        for seq in 1..=(MAX_ENTRIES as u64 + 10) {
            recent.push(touching(seq, seq - 1, seq, &["a"], &[(0, "k")]));
        }
        // The commit after op 5 was dropped.
        assert!(changed(&recent, 5, &["a"]).is_none());
        let newest = MAX_ENTRIES as u64 + 10;
        assert_eq!(
            changed(&recent, newest - 2, &["a"]),
            Some(vec![vec![newest - 1, newest]])
        );
        // The indexes shrink with the log.
        let inner = recent.inner();
        assert_eq!(inner.by_bucket["a"].len(), MAX_ENTRIES);
        assert_eq!(inner.by_member[&(0, "k".to_string())].len(), MAX_ENTRIES);
        drop(inner);
        assert!(recent.range(5, 7).is_none());
        assert_eq!(
            seqs(&recent.range(newest - 3, newest - 1).expect("held")),
            vec![newest - 2, newest - 1]
        );
        assert!(recent.range(newest - 1, newest + 1).is_none());
    }

    #[test]
    fn a_restarted_sequence_replaces_the_old_one() {
        let recent = RecentCommits::default();
        recent.push(touching(7, 0, 3, &["a"], &[]));
        recent.push(touching(1, 3, 4, &["b"], &[]));
        assert_eq!(seqs(&recent.range(0, 1).expect("held")), vec![1]);
        assert!(changed(&recent, 0, &["a"]).is_none());
        assert_eq!(changed(&recent, 3, &["a", "b"]), Some(vec![vec![1]]));
    }

    #[test]
    fn an_epoch_change_goes_to_the_store() {
        let recent = RecentCommits::default();
        recent.push(touching(1, 0, 1, &["a"], &[]));
        let mut rebuilt = touching(2, 1, 2, &["a"], &[]);
        rebuilt.epoch = "f".into();
        recent.push(rebuilt);
        let a = ["a".to_string()];
        assert!(recent.since_op(0, "e", a.iter(), &[]).is_none());
        assert!(
            recent.since_op(0, "f", a.iter(), &[]).is_none(),
            "spans the change"
        );
        assert!(recent.since_op(1, "f", a.iter(), &[]).is_some());
    }
}
