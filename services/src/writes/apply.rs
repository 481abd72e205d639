//! Applying one op group: one Postgres transaction, all or nothing (the
//! ops themselves: `op`; statements sharing round trips: `pipeline`).
//!
//! ```text
//! BEGIN, claim (client_id, seq) in outpost.applied_groups,    ─┐ one round trip
//!   first op: lock the row (SELECT … FOR UPDATE), its versions ─┘
//!   per op: → what the op does to it (insert / update / delete / nothing)
//!           → stale check → table function → merge and write (RETURNING the row)
//!           → permission on (old row, new row) → column versions (deferred:
//!             sent with the next op's lock, or with the COMMIT)
//! claim found the group taken before? ─▶ ROLLBACK, DUPLICATE
//! column versions, COMMIT, pg_current_wal_lsn() ─▶ APPLIED     one round trip
//! any definite error ─▶ ROLLBACK, record the rejection, REJECTED
//! ```
//!
//! Invariants: the ledger row and the group's changes commit together, so a
//! group is applied at most once whatever fails when; every row an op
//! touches is locked before it is read, so merges see the latest committed
//! value; the permission is checked on the row as it is written (after the
//! function and the merge rules), like a Postgres `WITH CHECK` policy, and a
//! delete on the row it removes; a group is answered APPLIED only after the
//! answer of every one of its statements was read. Nothing is written after
//! the COMMIT: the commit LSN answered is the WAL end read right after it,
//! and a duplicate is answered with the WAL end at its own time (both upper
//! bounds of the commit's LSN).

use std::time::Duration;

use futures::future::join;
use outpost_proto::v1::group_result::Status;
use outpost_proto::v1::{GroupResult, OpGroup};
use tokio_postgres::Statement;

use super::ledger::{self, Recorded};
use super::pipeline::Pipeline;
use super::pool::Conn;
use super::reject::{GroupError, Rejection, Stage, classify, reason};
use super::{Applier, WriteError};
use crate::auth::Claims;
use crate::lsn::Lsn;

/// Runs of a group that hit serialization failures or deadlocks, at most.
const MAX_ATTEMPTS: u32 = 5;

/// What every op of a request shares.
pub(super) struct RequestCx<'a> {
    pub client_id: &'a str,
    pub claims: &'a Claims,
    /// The claims as JSON text, for table functions.
    pub claims_json: String,
}

impl<'a> RequestCx<'a> {
    pub(super) fn new(client_id: &'a str, claims: &'a Claims) -> Self {
        RequestCx {
            client_id,
            claims,
            claims_json: serde_json::Value::Object(claims.0.clone()).to_string(),
        }
    }
}

fn result(seq: u64, status: Status) -> GroupResult {
    GroupResult {
        seq,
        status: status as i32,
        ..GroupResult::default()
    }
}

impl Applier {
    /// Applies one group, retrying serialization failures; a transient
    /// error leaves nothing applied and is returned.
    pub(super) async fn apply_group(
        &self,
        conn: &mut Conn,
        cx: &RequestCx<'_>,
        group: &OpGroup,
    ) -> Result<GroupResult, WriteError> {
        let seq = i64::try_from(group.seq)
            .map_err(|_| WriteError::InvalidRequest(format!("seq {} is too large", group.seq)))?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.run_group(conn, cx, group, seq).await {
                Ok(lsn) => {
                    return Ok(GroupResult {
                        commit_lsn: lsn.0,
                        ..result(group.seq, Status::Applied)
                    });
                }
                Err(GroupError::Recorded) => {
                    conn.rollback().await.map_err(WriteError::Postgres)?;
                    return self.duplicate(conn, cx.client_id, group.seq, seq).await;
                }
                Err(GroupError::Rejected(rejection)) => {
                    conn.rollback().await.map_err(WriteError::Postgres)?;
                    return self.reject(conn, cx, group.seq, seq, rejection).await;
                }
                Err(GroupError::Retry(message)) => {
                    conn.rollback().await.map_err(WriteError::Postgres)?;
                    conn.forget_statements();
                    if attempt >= MAX_ATTEMPTS {
                        let rejection = Rejection {
                            code: reason::CONFLICT,
                            message: format!(
                                "the group kept conflicting with concurrent writes: {message}"
                            ),
                            op_index: 0,
                        };
                        return self.reject(conn, cx, group.seq, seq, rejection).await;
                    }
                    let jitter = u64::from(rand::random::<u8>() % 16);
                    let backoff = (5u64 << attempt) + jitter;
                    tracing::debug!(seq, attempt, %message, "retrying a group");
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                }
                Err(GroupError::Transient(e)) => {
                    let _ = conn.rollback().await;
                    return Err(WriteError::Postgres(e));
                }
            }
        }
    }

    /// One run of the group, in one transaction: BEGIN and the claim go out
    /// with the first op's first statements, and the last op's deferred
    /// writes with the COMMIT and the read of the WAL end. Returns that
    /// WAL end; on an error, the transaction may still be open.
    async fn run_group(
        &self,
        conn: &mut Conn,
        cx: &RequestCx<'_>,
        group: &OpGroup,
        seq: i64,
    ) -> Result<Lsn, GroupError> {
        let pg = |e| classify(e, Stage::Write, 0);
        let claim = conn.prepare(ledger::CLAIM).await.map_err(pg)?;
        let wal_end = conn.prepare(ledger::CURRENT_WAL_LSN).await.map_err(pg)?;
        let mut pipeline = Pipeline::new(claim, cx.client_id, seq);
        for (i, op) in group.ops.iter().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            if let Err(e) = self.apply_op(conn, cx, index, op, &mut pipeline).await {
                if let GroupError::Rejected(_) = e {
                    // The claim (a group recorded before is a duplicate
                    // whatever its ops) and the earlier ops come first.
                    pipeline.flush(conn).await?;
                }
                return Err(e);
            }
        }
        commit(conn, &mut pipeline, &wal_end).await
    }

    /// The answer to a group recorded before (no transaction open).
    pub(super) async fn duplicate(
        &self,
        conn: &mut Conn,
        client_id: &str,
        seq: u64,
        seq_i64: i64,
    ) -> Result<GroupResult, WriteError> {
        let lookup = conn
            .prepare(ledger::LOOKUP)
            .await
            .map_err(WriteError::Postgres)?;
        let wal_end = conn
            .prepare(ledger::CURRENT_WAL_LSN)
            .await
            .map_err(WriteError::Postgres)?;
        let client = conn.client();
        let (row, lsn) = join(
            client.query_opt(&lookup, &[&client_id, &seq_i64]),
            client.query_one(&wal_end, &[]),
        )
        .await;
        let recorded = row
            .and_then(ledger::recorded)
            .map_err(WriteError::Postgres)?;
        let Some(recorded) = recorded else {
            // The claim conflicted with a committed row, which only an
            // outside DELETE from the ledger can have removed since.
            return Err(WriteError::Ledger(format!(
                "group {seq} is recorded as taken, but its ledger row is gone"
            )));
        };
        let commit_lsn = if recorded.status == "applied" {
            // The WAL end now is past the group's commit too.
            match recorded.commit_lsn {
                Some(lsn) => lsn.0,
                None => {
                    lsn.and_then(|r| ledger::lsn(&r))
                        .map_err(WriteError::Postgres)?
                        .0
                }
            }
        } else {
            0
        };
        Ok(duplicate_result(seq, recorded, commit_lsn))
    }

    /// Records a rejected (rolled back) group, so that a retry gets the
    /// same answer.
    async fn reject(
        &self,
        conn: &mut Conn,
        cx: &RequestCx<'_>,
        seq: u64,
        seq_i64: i64,
        rejection: Rejection,
    ) -> Result<GroupResult, WriteError> {
        tracing::info!(
            client_id = cx.client_id,
            seq,
            reason = rejection.code,
            op_index = rejection.op_index,
            message = %rejection.message,
            "write group rejected"
        );
        let op_index = i32::try_from(rejection.op_index).unwrap_or(i32::MAX);
        let inserted = conn
            .execute(
                ledger::RECORD_REJECTION,
                &[
                    &cx.client_id,
                    &seq_i64,
                    &rejection.code,
                    &rejection.message,
                    &op_index,
                ],
            )
            .await
            .map_err(WriteError::Postgres)?;
        if inserted == 0 {
            return self.duplicate(conn, cx.client_id, seq, seq_i64).await;
        }
        Ok(GroupResult {
            reason_code: rejection.code.to_string(),
            message: rejection.message,
            op_index: rejection.op_index,
            ..result(seq, Status::Rejected)
        })
    }
}

/// The COMMIT, with what the pipeline holds, and the read of the WAL end:
/// one round trip, two messages (not [`Conn::commit_reading_lsn`], whose
/// error does not tell a failed COMMIT from a failed read: here a failed
/// COMMIT becomes the group's verdict, which a read failing after a
/// commit must not).
async fn commit(
    conn: &Conn,
    pipeline: &mut Pipeline<'_>,
    wal_end: &Statement,
) -> Result<Lsn, GroupError> {
    let client = conn.client();
    let (committed, lsn) = pipeline
        .run(conn, join(conn.commit(), client.query_one(wal_end, &[])))
        .await?;
    committed.map_err(|e| classify(e, Stage::Write, 0))?;
    // Committed: a failure from here on leaves the group applied, and the
    // client's retry is answered as a duplicate.
    lsn.and_then(|r| ledger::lsn(&r))
        .map_err(GroupError::Transient)
}

fn duplicate_result(seq: u64, recorded: Recorded, commit_lsn: u64) -> GroupResult {
    GroupResult {
        commit_lsn,
        reason_code: recorded.reason_code,
        message: recorded.message,
        op_index: recorded.op_index,
        ..result(seq, Status::Duplicate)
    }
}
