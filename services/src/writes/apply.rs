//! Applying one op group: one Postgres transaction, all or nothing (the
//! ops themselves: `op`).
//!
//! ```text
//! BEGIN
//!   claim (client_id, seq) in outpost.applied_groups ── taken before? ─▶ ROLLBACK, DUPLICATE
//!   per op: lock the row (SELECT … FOR UPDATE)
//!           → what the op does to it (insert / update / delete / nothing)
//!           → stale check → table function → merge and write (RETURNING the row)
//!           → permission on (old row, new row) → column versions
//! COMMIT ─▶ APPLIED with pg_current_wal_lsn()      any definite error ─▶ ROLLBACK,
//!                                                   record the rejection, REJECTED
//! ```
//!
//! Invariants: the ledger row and the group's changes commit together, so a
//! group is applied at most once whatever fails when; every row an op
//! touches is locked before it is read, so merges see the latest committed
//! value; the permission is checked on the row as it is written (after the
//! function and the merge rules), like a Postgres `WITH CHECK` policy, and a
//! delete on the row it removes.

use std::time::Duration;

use outpost_proto::v1::group_result::Status;
use outpost_proto::v1::{GroupResult, OpGroup};

use super::ledger::{self, Recorded};
use super::pool::Conn;
use super::reject::{GroupError, Rejection, Stage, classify, reason};
use super::{Applier, WriteError};
use crate::auth::Claims;

/// Runs of a group that hit serialization failures or deadlocks, at most.
const MAX_ATTEMPTS: u32 = 5;

/// What every op of a request shares.
pub(super) struct RequestCx<'a> {
    pub client_id: &'a str,
    pub claims: &'a Claims,
    /// The claims as JSON text, for table functions.
    pub claims_json: String,
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
            conn.begin().await.map_err(WriteError::Postgres)?;
            let outcome = match self.run_group(conn, cx, group, seq).await {
                Ok(true) => conn
                    .commit()
                    .await
                    .map(|()| true)
                    .map_err(|e| classify(e, Stage::Write, 0)),
                other => other,
            };
            match outcome {
                Ok(true) => {
                    let lsn = ledger::current_wal_lsn(conn)
                        .await
                        .map_err(WriteError::Postgres)?;
                    if let Err(e) = ledger::store_commit_lsn(conn, cx.client_id, seq, lsn).await {
                        tracing::warn!(error = %e, "could not record a group's commit LSN");
                    }
                    return Ok(GroupResult {
                        commit_lsn: lsn.0,
                        ..result(group.seq, Status::Applied)
                    });
                }
                Ok(false) => {
                    let recorded = ledger::lookup(conn, cx.client_id, seq).await;
                    conn.rollback().await.map_err(WriteError::Postgres)?;
                    let recorded = recorded.map_err(WriteError::Postgres)?;
                    return self.duplicate(conn, group.seq, recorded).await;
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

    /// The group's ops inside the open transaction. `false`: recorded
    /// before, nothing done.
    async fn run_group(
        &self,
        conn: &mut Conn,
        cx: &RequestCx<'_>,
        group: &OpGroup,
        seq: i64,
    ) -> Result<bool, GroupError> {
        let claimed = ledger::claim(conn, cx.client_id, seq)
            .await
            .map_err(|e| classify(e, Stage::Write, 0))?;
        if !claimed {
            return Ok(false);
        }
        for (i, op) in group.ops.iter().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            self.apply_op(conn, cx, index, op).await?;
        }
        Ok(true)
    }

    async fn duplicate(
        &self,
        conn: &mut Conn,
        seq: u64,
        recorded: Option<Recorded>,
    ) -> Result<GroupResult, WriteError> {
        let Some(recorded) = recorded else {
            // The claim conflicted with a committed row, which only an
            // outside DELETE from the ledger can have removed since.
            return Err(WriteError::Ledger(format!(
                "group {seq} is recorded as taken, but its ledger row is gone"
            )));
        };
        let commit_lsn = if recorded.status == "applied" {
            match recorded.commit_lsn {
                Some(lsn) => lsn.0,
                None => {
                    ledger::current_wal_lsn(conn)
                        .await
                        .map_err(WriteError::Postgres)?
                        .0
                }
            }
        } else {
            0
        };
        Ok(GroupResult {
            commit_lsn,
            reason_code: recorded.reason_code,
            message: recorded.message,
            op_index: recorded.op_index,
            ..result(seq, Status::Duplicate)
        })
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
        let recorded = ledger::record_rejection(
            conn,
            cx.client_id,
            seq_i64,
            rejection.code,
            &rejection.message,
            rejection.op_index,
        )
        .await
        .map_err(WriteError::Postgres)?;
        if !recorded {
            let earlier = ledger::lookup(conn, cx.client_id, seq_i64)
                .await
                .map_err(WriteError::Postgres)?;
            return self.duplicate(conn, seq, earlier).await;
        }
        Ok(GroupResult {
            reason_code: rejection.code.to_string(),
            message: rejection.message,
            op_index: rejection.op_index,
            ..result(seq, Status::Rejected)
        })
    }
}
