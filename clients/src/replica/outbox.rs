//! The outbox: local op groups on their way to the service, the service's
//! answers, and what the app can read about them.
//!
//! ```text
//! _outpost_outbox ──Write──▶ APPLIED/DUPLICATE ──▶ _outpost_pending ──checkpoint ≥ commit LSN──▶ gone
//!                 └────────▶ REJECTED ──▶ _outpost_rejections (one row per op), row rebuilt
//! ```
//!
//! Invariants:
//! - a group is every outbox row of one txid (one local transaction); its
//!   `seq` is its smallest outbox id, so seqs increase in commit order and
//!   stay the same across retries and restarts (AUTOINCREMENT never reuses
//!   an id), which makes uploads idempotent on the service;
//! - groups are read in seq order and answered groups leave the outbox in the
//!   same transaction that records the answer: a group is never dropped
//!   unanswered, and a rejected group never holds back the ones after it;
//! - a `counter` column travels as the delta `new − before` of its op; an
//!   INSERT travels without its NULL columns (Postgres defaults apply).

use super::key::parse_key;
use super::local::StoredOp;
use super::values::counter_delta;
use super::{Replica, get_u64};
use crate::ClientError;
use outpost_proto::v1::{ColumnValue, GroupResult, OpGroup, WriteOp, group_result, write_op};
use prost::Message as _;
use rusqlite::OptionalExtension;

/// How much one `Write` request may carry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UploadLimits {
    pub(crate) groups: usize,
    pub(crate) ops: usize,
    /// Encoded ops gathered before the request is closed.
    pub(crate) bytes: usize,
}

/// How the service answered a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteStatus {
    /// Applied now.
    Applied,
    /// Applied by an earlier upload of the same group.
    Duplicate,
    /// Refused; nothing of the group was applied.
    Rejected,
}

/// The answer to one uploaded group, as recorded (a retried group that was
/// refused before counts as rejected).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WriteOutcome {
    pub(crate) seq: u64,
    pub(crate) status: WriteStatus,
    /// For a rejection: `reason_code: message`.
    pub(crate) reason: Option<String>,
}

/// A local transaction the service has not confirmed yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingGroup {
    /// The group's sequence number (its first outbox id).
    pub seq: u64,
    /// How many row changes it holds.
    pub ops: u64,
    /// The tables it changes, by name.
    pub tables: Vec<String>,
    /// `None` while it waits in the outbox; the commit LSN once the service
    /// applied it and the replica waits for a checkpoint at or past it.
    pub commit_lsn: Option<u64>,
}

/// One op of a group the service refused (`_outpost_rejections`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Row id in `_outpost_rejections`.
    pub id: u64,
    /// The refused group.
    pub seq: u64,
    /// The index of this op in its group.
    pub op: u32,
    /// The index of the op the service refused (the whole group was rolled back).
    pub op_index: u32,
    /// The table.
    pub table: String,
    /// INSERT, UPDATE or DELETE.
    pub kind: String,
    /// The row's primary key, as a JSON-like list (`[42]`, `["a",1]`).
    pub key: String,
    /// A stable code, e.g. `permission_denied`, `stale`, `unique_violation`.
    pub reason_code: String,
    /// A message for people.
    pub message: String,
    /// The values the op tried to write (JSON object; NULL for a DELETE).
    pub attempted: Option<String>,
    /// When the rejection arrived (ISO-8601 UTC).
    pub at: String,
}

fn is_null(v: &outpost_proto::v1::Value) -> bool {
    matches!(v.kind, None | Some(outpost_proto::v1::value::Kind::Null(_)))
}

fn column_values(
    op: &StoredOp,
    values: &[(String, outpost_proto::v1::Value)],
    order: &dyn Fn(&str) -> usize,
    delta_for: &dyn Fn(&str) -> bool,
) -> Vec<ColumnValue> {
    let mut out: Vec<(usize, ColumnValue)> = values
        .iter()
        .map(|(name, value)| {
            let value = if delta_for(name) {
                counter_delta(value, op.before(name)).unwrap_or_else(|| value.clone())
            } else {
                value.clone()
            };
            (
                order(name),
                ColumnValue {
                    name: name.clone(),
                    value: Some(value),
                },
            )
        })
        .collect();
    out.sort_by(|a, b| (a.0, &a.1.name).cmp(&(b.0, &b.1.name)));
    out.into_iter().map(|(_, c)| c).collect()
}

impl Replica {
    /// Builds the wire form of one outbox row.
    fn write_op(
        &self,
        tbl: String,
        kind: String,
        key: String,
        columns: Option<String>,
        before: Option<String>,
        hlc: u64,
    ) -> Result<WriteOp, ClientError> {
        let op = StoredOp::decode(kind, columns, before)?;
        let key = parse_key(&key).ok_or_else(|| {
            ClientError::CorruptReplica(format!("an outbox op has an unreadable key {key:?}"))
        })?;
        let table = self.tables.get(&tbl);
        let order = |name: &str| {
            table
                .and_then(|t| t.column(name))
                .map_or(usize::MAX, |(i, _)| i)
        };
        let is_update = op.kind == "UPDATE";
        let counter = |name: &str| {
            is_update
                && table
                    .and_then(|t| t.column(name))
                    .is_some_and(|(_, c)| c.is_counter())
        };
        let kind = match op.kind.as_str() {
            "INSERT" => write_op::Kind::Insert,
            "UPDATE" => write_op::Kind::Update,
            _ => write_op::Kind::Delete,
        };
        // An INSERT leaves out its NULL columns, so that the column defaults
        // of the Postgres table apply (the replica cannot tell an explicit
        // NULL from a column the app did not set).
        let columns: Vec<_> = op
            .columns
            .iter()
            .filter(|(_, v)| !(kind == write_op::Kind::Insert && is_null(v)))
            .cloned()
            .collect();
        Ok(WriteOp {
            kind: kind as i32,
            table: tbl,
            key,
            columns: column_values(&op, &columns, &order, &counter),
            hlc,
            before: column_values(&op, &op.before, &order, &|_| false),
        })
    }

    /// As [`Replica::outbox_groups`], for a session polling the outbox: an
    /// outbox found empty is not read again until another connection has
    /// committed (`PRAGMA data_version` moved), so an idle replica costs a
    /// pragma per poll.
    pub(crate) fn poll_outbox(
        &mut self,
        limits: UploadLimits,
    ) -> Result<Vec<OpGroup>, ClientError> {
        let version: i64 = self
            .conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?;
        if self.outbox_empty_at == Some(version) {
            return Ok(Vec::new());
        }
        let groups = self.outbox_groups(limits)?;
        self.outbox_empty_at = groups.is_empty().then_some(version);
        Ok(groups)
    }

    /// The oldest op groups of the outbox, in seq order: at most
    /// `limits.groups`, with at most `limits.ops` ops in all, and no more once
    /// `limits.bytes` of ops are gathered (always at least one group).
    pub(crate) fn outbox_groups(&self, limits: UploadLimits) -> Result<Vec<OpGroup>, ClientError> {
        let heads: Vec<(i64, u64, usize)> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT txid, min(id) AS seq, count(*) FROM _outpost_outbox
                 GROUP BY txid ORDER BY seq LIMIT ?1",
            )?;
            let rows = stmt.query_map([limits.groups as i64], |r| {
                Ok((r.get(0)?, get_u64(r, 1)?, r.get::<_, i64>(2)? as usize))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let mut groups = Vec::with_capacity(heads.len());
        let (mut bytes, mut ops_total) = (0usize, 0usize);
        for (txid, seq, count) in heads {
            if !groups.is_empty() && (bytes >= limits.bytes || ops_total + count > limits.ops) {
                break;
            }
            ops_total += count;
            let mut stmt = self.conn.prepare_cached(
                "SELECT tbl, kind, key, columns, before, hlc FROM _outpost_outbox
                 WHERE txid = ?1 ORDER BY id",
            )?;
            let mut rows = stmt.query([txid])?;
            let mut ops = Vec::new();
            while let Some(r) = rows.next()? {
                ops.push(self.write_op(
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    get_u64(r, 5)?,
                )?);
            }
            let group = OpGroup { seq, ops };
            bytes += group.encoded_len();
            groups.push(group);
        }
        Ok(groups)
    }

    /// Records the service's answers: applied groups wait in
    /// `_outpost_pending` for their checkpoint (or are done if the replica is
    /// already there), rejected ones are written to `_outpost_rejections` and
    /// their rows rebuilt from the server values. Answers for groups no
    /// longer in the outbox are ignored.
    pub(crate) fn record_results(
        &mut self,
        results: &[GroupResult],
    ) -> Result<Vec<WriteOutcome>, ClientError> {
        if results.is_empty() {
            return Ok(Vec::new());
        }
        let own_transaction = self.pending.is_none();
        self.begin()?;
        match self.record_results_inner(results) {
            Ok(outcomes) => {
                if own_transaction {
                    self.commit()?;
                }
                Ok(outcomes)
            }
            Err(e) => {
                self.rollback()?;
                Err(e)
            }
        }
    }

    fn record_results_inner(
        &mut self,
        results: &[GroupResult],
    ) -> Result<Vec<WriteOutcome>, ClientError> {
        let lsn = self.state_u64("lsn")?;
        let mut outcomes = Vec::with_capacity(results.len());
        for result in results {
            let txid: Option<i64> = self
                .conn
                .prepare_cached(
                    "SELECT txid FROM _outpost_outbox o WHERE id = ?1
                     AND id = (SELECT min(id) FROM _outpost_outbox WHERE txid = o.txid)",
                )?
                .query_row([result.seq as i64], |r| r.get(0))
                .optional()?;
            let Some(txid) = txid else {
                tracing::debug!(
                    seq = result.seq,
                    "an answer for a group no longer in the outbox"
                );
                continue;
            };
            let (status, reason) = match group_result::Status::try_from(result.status) {
                Ok(group_result::Status::Applied) => (WriteStatus::Applied, None),
                // A retry of a group refused before: its original answer.
                Ok(group_result::Status::Duplicate) if !result.reason_code.is_empty() => (
                    WriteStatus::Rejected,
                    Some(format!("{}: {}", result.reason_code, result.message)),
                ),
                Ok(group_result::Status::Duplicate) => (WriteStatus::Duplicate, None),
                Ok(group_result::Status::Rejected) => (
                    WriteStatus::Rejected,
                    Some(format!("{}: {}", result.reason_code, result.message)),
                ),
                _ => {
                    tracing::warn!(
                        seq = result.seq,
                        status = result.status,
                        "the service answered a group with an unknown status; it is sent again later"
                    );
                    continue;
                }
            };
            let touched: Vec<(String, String)> = match status {
                WriteStatus::Rejected => {
                    self.conn
                        .prepare_cached(
                            "INSERT INTO _outpost_rejections
                             (seq, op, op_index, tbl, kind, key, reason_code, message, attempted, at)
                             SELECT ?1, row_number() OVER (ORDER BY id) - 1, ?2, tbl, kind, key,
                                    ?3, ?4, columns, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                             FROM _outpost_outbox WHERE txid = ?5 ORDER BY id",
                        )?
                        .execute((
                            result.seq as i64,
                            result.op_index,
                            &result.reason_code,
                            &result.message,
                            txid,
                        ))?;
                    self.take_group(txid)?
                }
                _ if lsn.is_some_and(|lsn| result.commit_lsn <= lsn) => self.take_group(txid)?,
                _ => {
                    let label = if status == WriteStatus::Applied {
                        "applied"
                    } else {
                        "duplicate"
                    };
                    self.conn
                        .prepare_cached(
                            "INSERT INTO _outpost_pending
                             (id, seq, commit_lsn, status, tbl, kind, key, columns, before, hlc)
                             SELECT id, ?1, ?2, ?3, tbl, kind, key, columns, before, hlc
                             FROM _outpost_outbox WHERE txid = ?4",
                        )?
                        .execute((result.seq as i64, result.commit_lsn as i64, label, txid))?;
                    self.take_group(txid)?;
                    Vec::new()
                }
            };
            self.pending_mut().touched.extend(touched);
            outcomes.push(WriteOutcome {
                seq: result.seq,
                status,
                reason,
            });
        }
        Ok(outcomes)
    }

    /// Removes a group from the outbox; returns the rows it changed.
    fn take_group(&self, txid: i64) -> Result<Vec<(String, String)>, ClientError> {
        let mut stmt = self
            .conn
            .prepare_cached("DELETE FROM _outpost_outbox WHERE txid = ?1 RETURNING tbl, key")?;
        let rows = stmt.query_map([txid], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn has_table(&self, name: &str) -> Result<bool, ClientError> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
            .query_row([name], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// How many groups wait in the outbox, and how many wait for a checkpoint.
    pub(crate) fn write_backlog(&self) -> Result<(u64, u64), ClientError> {
        Ok(self.conn.query_row(
            "SELECT (SELECT count(DISTINCT txid) FROM _outpost_outbox),
                    (SELECT count(DISTINCT seq) FROM _outpost_pending)",
            [],
            |r| Ok((get_u64(r, 0)?, get_u64(r, 1)?)),
        )?)
    }

    /// The local transactions not confirmed yet, oldest first: those waiting
    /// in the outbox and those applied by the service but not yet in a
    /// checkpoint the replica holds.
    pub fn pending(&self) -> Result<Vec<PendingGroup>, ClientError> {
        if !self.has_table("_outpost_pending")? {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare(
            "SELECT min(id), count(*), json_group_array(DISTINCT tbl), NULL
             FROM _outpost_outbox GROUP BY txid
             UNION ALL
             SELECT seq, count(*), json_group_array(DISTINCT tbl), max(commit_lsn)
             FROM _outpost_pending GROUP BY seq
             ORDER BY 1",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                get_u64(r, 0)?,
                get_u64(r, 1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        })?;
        let mut groups = Vec::new();
        for row in rows {
            let (seq, ops, tables, commit_lsn) = row?;
            let tables: Vec<String> = serde_json::from_str(&tables).map_err(|e| {
                ClientError::CorruptReplica(format!("tables of pending group {seq}: {e}"))
            })?;
            groups.push(PendingGroup {
                seq,
                ops,
                tables,
                commit_lsn: commit_lsn.map(|l| l as u64),
            });
        }
        Ok(groups)
    }

    /// Every op of every group the service refused, oldest first. The app
    /// may delete rows of `_outpost_rejections` once it has shown them.
    pub fn rejections(&self) -> Result<Vec<Rejection>, ClientError> {
        if !self.has_table("_outpost_rejections")? {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare(
            "SELECT id, seq, op, op_index, tbl, kind, key, reason_code, message, attempted, at
             FROM _outpost_rejections ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Rejection {
                id: get_u64(r, 0)?,
                seq: get_u64(r, 1)?,
                op: r.get(2)?,
                op_index: r.get(3)?,
                table: r.get(4)?,
                kind: r.get(5)?,
                key: r.get(6)?,
                reason_code: r.get(7)?,
                message: r.get(8)?,
                attempted: r.get(9)?,
                at: r.get(10)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
