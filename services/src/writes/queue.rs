//! Write requests waiting for Postgres, and who applies them. A request
//! queues its groups; while they wait, it tries to become a leader, one of
//! a few at once ([`Queue::new`]); a leader takes the requests waiting (its
//! own among them) and applies their groups in [`Batch`]es, each in one
//! transaction, so that under load many groups share a transaction and a
//! few statements, and a request alone is applied as before. While a
//! leader runs, a request that gets a free slot waits
//! [`SECOND_LEADER_AFTER`] before it leads too: the requests arriving
//! during a batch of usual length join the next one.
//!
//! ```text
//! apply ─▶ queue ─▶ leader (a free slot): take the requests waiting
//!   per group, in order: joins the batch │ the batch runs first │ alone
//!   batch of one group, or fallen back ─▶ Applier::apply_group
//!   each request answered once its last group is done
//! ```
//!
//! Invariants: the groups of a request are applied in order, and those of
//! different requests in a batch touch different rows, so their order
//! does not matter; a request is taken by one leader only (a leader takes
//! requests only while its own is still waiting), and is answered exactly
//! once — with its results, or, when Postgres failed while its groups were
//! applied, with an error (the client retries; what was applied comes back
//! as DUPLICATE). A leader serves others from inside its own request, so
//! a request must run to its end once queued: the server applies each in a
//! task of its own, which a client going away does not cancel.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use outpost_proto::v1::group_result::Status;
use outpost_proto::v1::{GroupResult, OpGroup};
use tokio::sync::{Semaphore, oneshot};

use super::apply::RequestCx;
use super::batch::{self, Batch, BatchEnd, Outcome};
use super::pool::Conn;
use super::{Applier, WriteError};
use crate::auth::Claims;

type Answer = Result<Vec<GroupResult>, WriteError>;

/// A request waiting to be applied.
struct Waiting {
    id: u64,
    client_id: String,
    claims: Claims,
    groups: Vec<OpGroup>,
    reply: oneshot::Sender<Answer>,
}

/// How long a request that could lead waits while another leader runs,
/// before it leads too: the requests that arrive while a batch runs share
/// the next one, which costs Postgres less per group than two smaller
/// batches at once; a batch that runs longer than this (a slow table
/// function, a large request) holds the others up no longer.
const SECOND_LEADER_AFTER: Duration = Duration::from_millis(2);

/// The requests waiting, and the leader slots.
pub(super) struct Queue {
    waiting: Mutex<VecDeque<Waiting>>,
    slots: Semaphore,
    /// Leaders applying requests now.
    leading: AtomicUsize,
    next_id: AtomicU64,
}

/// Counts a leader as leading while it lives.
struct Leading<'a>(&'a AtomicUsize);

impl<'a> Leading<'a> {
    fn new(count: &'a AtomicUsize) -> Leading<'a> {
        count.fetch_add(1, Ordering::AcqRel);
        Leading(count)
    }
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Queue {
    /// A queue served by at most `leaders` leaders at once.
    pub(super) fn new(leaders: usize) -> Queue {
        Queue {
            waiting: Mutex::new(VecDeque::new()),
            slots: Semaphore::new(leaders.max(1)),
            leading: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
        }
    }

    fn push(&self, waiting: Waiting) {
        if let Ok(mut q) = self.waiting.lock() {
            q.push_back(waiting);
        }
    }

    /// The requests at the head of the queue, as many as a batch holds
    /// (at least one), when request `id` is still waiting; none otherwise.
    fn take(&self, id: u64) -> Vec<Waiting> {
        let Ok(mut q) = self.waiting.lock() else {
            return Vec::new();
        };
        if !q.iter().any(|w| w.id == id) {
            return Vec::new();
        }
        let mut taken = Vec::new();
        let mut groups = 0;
        while let Some(w) = q.front() {
            if !taken.is_empty() && groups + w.groups.len() > batch::MAX_GROUPS {
                break;
            }
            groups += w.groups.len();
            taken.extend(q.pop_front());
        }
        taken
    }
}

/// The answers of the requests a leader took: results as they come, and
/// where each request's answer goes once it is complete.
struct Answers {
    expected: Vec<usize>,
    results: Vec<Vec<GroupResult>>,
    replies: Vec<Option<oneshot::Sender<Answer>>>,
}

impl Answers {
    fn push(&mut self, request: usize, result: GroupResult) {
        self.results[request].push(result);
        if self.results[request].len() == self.expected[request]
            && let Some(reply) = self.replies[request].take()
        {
            let _ = reply.send(Ok(std::mem::take(&mut self.results[request])));
        }
    }

    /// Every request not answered yet fails with `e`.
    fn fail(&mut self, e: &WriteError) {
        for reply in self.replies.iter_mut().filter_map(Option::take) {
            let _ = reply.send(Err(WriteError::Interrupted(e.to_string())));
        }
    }
}

impl Applier {
    /// Queues the groups of a request and waits for their results, leading
    /// the queue while a slot is free and the request still waits.
    pub(super) async fn apply_queued(
        &self,
        client_id: &str,
        claims: &Claims,
        groups: &[OpGroup],
    ) -> Answer {
        let queue = &self.queue;
        let id = queue.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, mut answer) = oneshot::channel();
        queue.push(Waiting {
            id,
            client_id: client_id.to_string(),
            claims: claims.clone(),
            groups: groups.to_vec(),
            reply,
        });
        loop {
            tokio::select! {
                biased;
                answer = &mut answer => return answered(answer),
                permit = queue.slots.acquire() => {
                    let _permit = permit.unwrap_or_else(|_| unreachable!("the slots are never closed"));
                    if queue.leading.load(Ordering::Acquire) > 0 {
                        tokio::select! {
                            biased;
                            answer = &mut answer => return answered(answer),
                            () = tokio::time::sleep(SECOND_LEADER_AFTER) => {}
                        }
                    }
                    let taken = queue.take(id);
                    if taken.is_empty() {
                        // Another leader took it.
                        break;
                    }
                    let _leading = Leading::new(&queue.leading);
                    self.lead(taken).await;
                }
            }
        }
        answered(answer.await)
    }

    /// Applies the requests `taken`, answering each.
    async fn lead(&self, taken: Vec<Waiting>) {
        let mut answers = Answers {
            expected: taken.iter().map(|w| w.groups.len()).collect(),
            results: taken
                .iter()
                .map(|w| Vec::with_capacity(w.groups.len()))
                .collect(),
            replies: Vec::with_capacity(taken.len()),
        };
        let mut requests = Vec::with_capacity(taken.len());
        for w in taken {
            answers.replies.push(Some(w.reply));
            requests.push((w.client_id, w.claims, w.groups));
        }
        let cxs: Vec<RequestCx<'_>> = requests
            .iter()
            .map(|(client_id, claims, _)| RequestCx::new(client_id, claims))
            .collect();
        let groups: Vec<&[OpGroup]> = requests.iter().map(|(_, _, g)| g.as_slice()).collect();
        if let Err(e) = self.serve(&cxs, &groups, &mut answers).await {
            tracing::warn!(error = %e, "applying queued write requests failed");
            answers.fail(&e);
        }
    }

    /// Applies the groups of `requests` (contexts and groups, in order),
    /// batching what can be.
    async fn serve<'a>(
        &'a self,
        cxs: &'a [RequestCx<'a>],
        requests: &[&'a [OpGroup]],
        answers: &mut Answers,
    ) -> Result<(), WriteError> {
        let mut conn = self.pool.get().await.map_err(WriteError::Postgres)?;
        let mut batch = Batch::default();
        let mut owners = Vec::new();
        for (r, (cx, groups)) in cxs.iter().zip(requests).enumerate() {
            for group in groups.iter() {
                let member = self.member(cx, group);
                if member.as_ref().is_none_or(|m| !batch.admits(m)) {
                    self.flush(&mut conn, &mut batch, &mut owners, answers)
                        .await?;
                }
                match member {
                    Some(m) => {
                        batch.push(m);
                        owners.push(r);
                    }
                    None => {
                        let result = self.apply_group(&mut conn, cx, group).await?;
                        answers.push(r, result);
                    }
                }
            }
        }
        self.flush(&mut conn, &mut batch, &mut owners, answers)
            .await
    }

    /// Applies what `batch` holds and empties it: in one transaction when it
    /// holds several groups and they all apply cleanly, one group at a time
    /// otherwise. `owners[i]` is the request of member `i`.
    async fn flush(
        &self,
        conn: &mut Conn,
        batch: &mut Batch<'_>,
        owners: &mut Vec<usize>,
        answers: &mut Answers,
    ) -> Result<(), WriteError> {
        let mut work = VecDeque::from([(std::mem::take(batch), std::mem::take(owners))]);
        while let Some((batch, owners)) = work.pop_front() {
            if batch.is_empty() {
                continue;
            }
            if batch.len() > 1 {
                let started = std::time::Instant::now();
                let end = self
                    .run_batch(conn, &batch)
                    .await
                    .map_err(WriteError::Postgres)?;
                tracing::trace!(
                    groups = batch.len(),
                    micros = started.elapsed().as_micros() as u64,
                    "write batch"
                );
                match end {
                    BatchEnd::Done(outcomes) => {
                        for ((m, outcome), &r) in batch.members.iter().zip(outcomes).zip(&owners) {
                            let result = match outcome {
                                Outcome::Applied(lsn) => GroupResult {
                                    seq: m.group.seq,
                                    status: Status::Applied as i32,
                                    commit_lsn: lsn.0,
                                    ..GroupResult::default()
                                },
                                Outcome::Duplicate => {
                                    self.duplicate(conn, m.cx.client_id, m.group.seq, m.seq)
                                        .await?
                                }
                            };
                            answers.push(r, result);
                        }
                        continue;
                    }
                    BatchEnd::Fallback {
                        why,
                        refused: Some(k),
                    } => {
                        tracing::debug!(groups = batch.len(), %why, "a group of a batch is applied alone");
                        // Before it, it alone, after it: in order.
                        let (before, refused, after) = batch.split(k);
                        let mut after_owners = owners;
                        let mut before_owners: Vec<usize> = after_owners.drain(..=k).collect();
                        let refused_owner = before_owners.pop();
                        let mut alone = Batch::default();
                        alone.extend(refused);
                        work.push_front((after, after_owners));
                        work.push_front((alone, refused_owner.into_iter().collect()));
                        work.push_front((before, before_owners));
                        continue;
                    }
                    BatchEnd::Fallback { why, refused: None } => {
                        tracing::debug!(groups = batch.len(), %why, "a batch is applied one group at a time");
                    }
                }
            }
            for (m, &r) in batch.members.iter().zip(&owners) {
                let result = self.apply_group(conn, m.cx, m.group).await?;
                answers.push(r, result);
            }
        }
        Ok(())
    }
}

fn answered(answer: Result<Answer, oneshot::error::RecvError>) -> Answer {
    answer.unwrap_or_else(|_| {
        Err(WriteError::Interrupted(
            "the task applying this request stopped".into(),
        ))
    })
}
