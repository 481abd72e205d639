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
use std::collections::VecDeque;
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
}

/// The recent commits of one store.
#[derive(Debug, Default)]
pub struct RecentCommits {
    inner: Mutex<Inner>,
}

/// Commits after a stream's position, and the newest publication.
#[derive(Debug)]
pub struct Since {
    /// Every commit whose op id is past the position, oldest first.
    pub commits: Vec<Arc<Commit>>,
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
        if inner
            .entries
            .back()
            .is_some_and(|last| last.seq + 1 != commit.seq)
        {
            inner.entries.clear();
            inner.bytes = 0;
        }
        inner.bytes += commit.touched.bytes();
        inner.entries.push_back(Arc::new(commit));
        while inner.entries.len() > MAX_ENTRIES
            || (inner.bytes > MAX_BYTES && inner.entries.len() > 1)
        {
            if let Some(old) = inner.entries.pop_front() {
                inner.bytes -= old.touched.bytes();
            }
        }
    }

    /// The commits whose op id is past `op_id`, when every one of them is
    /// still here; `None` when some were dropped or nothing was published.
    pub fn since_op(&self, op_id: u64) -> Option<Since> {
        let inner = self.inner();
        let latest = inner.entries.back()?.clone();
        let first = inner.entries.partition_point(|c| c.op_id <= op_id);
        let covered = match first.checked_sub(1) {
            Some(_) => true,
            None => inner.entries.front()?.op_id_before <= op_id,
        };
        covered.then(|| Since {
            commits: inner.entries.range(first..).cloned().collect(),
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
        Commit {
            seq,
            epoch: "e".into(),
            op_id_before,
            op_id,
            durable_lsn: Lsn(seq * 10),
            touched: Arc::default(),
        }
    }

    fn seqs(commits: &[Arc<Commit>]) -> Vec<u64> {
        commits.iter().map(|c| c.seq).collect()
    }

    #[test]
    fn commits_past_a_position() {
        let recent = RecentCommits::default();
        assert!(recent.since_op(0).is_none());
        recent.push(commit(1, 0, 3));
        recent.push(commit(2, 3, 3));
        recent.push(commit(3, 3, 5));
        let since = recent.since_op(3).expect("covered");
        assert_eq!(seqs(&since.commits), vec![3]);
        assert_eq!(since.latest.seq, 3);
        assert_eq!(
            seqs(&recent.since_op(0).expect("covered").commits),
            vec![1, 2, 3]
        );
        assert!(recent.since_op(5).expect("covered").commits.is_empty());
    }

    #[test]
    fn dropped_commits_are_never_skipped() {
        let recent = RecentCommits::default();
        for seq in 1..=(MAX_ENTRIES as u64 + 10) {
            recent.push(commit(seq, seq - 1, seq));
        }
        // The commit after op 5 was dropped.
        assert!(recent.since_op(5).is_none());
        let newest = MAX_ENTRIES as u64 + 10;
        assert_eq!(
            seqs(&recent.since_op(newest - 2).expect("covered").commits),
            vec![newest - 1, newest]
        );
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
        recent.push(commit(7, 0, 3));
        recent.push(commit(1, 3, 4));
        assert_eq!(seqs(&recent.range(0, 1).expect("held")), vec![1]);
        assert!(recent.since_op(0).is_none());
    }
}
