//! Applying one op inside its group's transaction: lock the row, decide
//! what the op does to it, check `reject_if_stale` columns, call the table
//! function, merge and write, check the permission on the written row,
//! record the column versions.
//!
//! Invariants: the row is locked (`SELECT … FOR UPDATE`) before it is read,
//! so every decision is made on the latest committed row and holds until
//! the group commits; an update of a row that is gone is refused
//! (`not_found`) rather than resurrecting it; a delete of a row that is gone
//! does nothing; an insert of an existing key merges like an update.

use std::collections::HashMap;

use futures::future::{OptionFuture, join};
use outpost_proto::v1::{ColumnValue, Value, WriteOp, write_op};
use tokio_postgres::types::ToSql;

use super::Applier;
use super::apply::RequestCx;
use super::function::{self, FunctionCall, Verdict};
use super::hlc::{Version, value_hash};
use super::ledger::{self, VersionWrite};
use super::merge::{self, Written};
use super::pipeline::Pipeline;
use super::plan::TablePlan;
use super::pool::Conn;
use super::reject::{GroupError, Stage, classify, reason};
use super::values::{same_as_seen, to_pg_text};
use crate::schema::{MergeKind, WriteKind};

/// Runs of one op that found its key inserted concurrently, at most.
const MAX_INSERT_RACES: u32 = 3;

/// A row as text, every column in catalog order.
pub(super) type Row = Vec<Option<String>>;

pub(super) fn read_row(
    row: &tokio_postgres::Row,
    width: usize,
) -> Result<Row, tokio_postgres::Error> {
    (0..width).map(|i| row.try_get(i)).collect()
}

fn text_params(params: &[Option<String>]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// The key of a row as `row_versions` records it: a JSON array of the
/// key columns' text, as Postgres prints them.
pub(super) fn version_key(plan: &TablePlan, row: &Row) -> String {
    let key: Vec<Option<&str>> = plan
        .primary_key
        .iter()
        .map(|&c| row.get(c).and_then(|v| v.as_deref()))
        .collect();
    serde_json::to_string(&key).unwrap_or_default()
}

/// An op after its values were converted.
pub(super) struct Op<'a> {
    pub index: u32,
    pub kind: WriteKind,
    pub version: Version,
    /// The key columns' text, as the op gives them.
    pub key: Vec<String>,
    pub written: Vec<Written>,
    /// What the client saw, by column name (`reject_if_stale`).
    pub before: HashMap<&'a str, &'a Value>,
}

/// How one run of an op ended.
enum OpEnd {
    Done,
    /// Another transaction inserted the key between our look and our insert.
    Raced,
}

impl Applier {
    /// Checks op `index` and converts its values: the table's plan and the
    /// op, or the group's rejection.
    pub(super) fn convert_op<'a>(
        &'a self,
        cx: &RequestCx<'_>,
        index: u32,
        op: &'a WriteOp,
    ) -> Result<(&'a TablePlan, Op<'a>), GroupError> {
        let refuse = |code, message: String| GroupError::rejected(code, message, index);
        let Some(plan) = self.plans.get(&op.table) else {
            return Err(if self.read_only.contains(&op.table) {
                refuse(
                    reason::PERMISSION_DENIED,
                    format!(
                        "table `{}` accepts no writes (the schema files declare no write rules for it)",
                        op.table
                    ),
                )
            } else {
                refuse(
                    reason::UNKNOWN_TABLE,
                    format!("no synced table is called `{}`", op.table),
                )
            });
        };
        let kind = match write_op::Kind::try_from(op.kind) {
            Ok(write_op::Kind::Insert) => WriteKind::Insert,
            Ok(write_op::Kind::Update) => WriteKind::Update,
            Ok(write_op::Kind::Delete) => WriteKind::Delete,
            _ => {
                return Err(refuse(
                    reason::INVALID_VALUE,
                    format!("unknown op kind {}", op.kind),
                ));
            }
        };
        let hlc = i64::try_from(op.hlc).map_err(|_| {
            refuse(
                reason::INVALID_VALUE,
                format!("the clock reading {} is out of range", op.hlc),
            )
        })?;
        let op = Op {
            index,
            kind,
            version: Version {
                hlc,
                client_id: cx.client_id.to_string(),
            },
            key: key_text(plan, &op.key).map_err(|m| refuse(reason::INVALID_VALUE, m))?,
            written: written_columns(plan, &op.columns).map_err(|(c, m)| refuse(c, m))?,
            before: op
                .before
                .iter()
                .filter_map(|c| Some((c.name.as_str(), c.value.as_ref()?)))
                .collect(),
        };
        Ok((plan, op))
    }

    pub(super) async fn apply_op(
        &self,
        conn: &mut Conn,
        cx: &RequestCx<'_>,
        index: u32,
        op: &WriteOp,
        pipeline: &mut Pipeline<'_>,
    ) -> Result<(), GroupError> {
        let (plan, op) = self.convert_op(cx, index, op)?;
        for _ in 0..MAX_INSERT_RACES {
            if let OpEnd::Done = self.apply_op_once(conn, cx, plan, &op, pipeline).await? {
                return Ok(());
            }
        }
        Err(GroupError::Retry(format!(
            "the key of op {index} was inserted concurrently again and again"
        )))
    }

    async fn apply_op_once(
        &self,
        conn: &mut Conn,
        cx: &RequestCx<'_>,
        plan: &TablePlan,
        op: &Op<'_>,
        pipeline: &mut Pipeline<'_>,
    ) -> Result<OpEnd, GroupError> {
        let index = op.index;
        let pg = |e| classify(e, Stage::Write, index);
        let refuse = |code, message: String| GroupError::rejected(code, message, index);
        let width = plan.columns.len();
        let key_params: Vec<Option<String>> = op.key.iter().cloned().map(Some).collect();
        let lock = conn.prepare(&plan.lock_sql).await.map_err(pg)?;
        // The versions of the row, read right after its lock when the op
        // writes a last-writer-wins column, under the key as the op gives
        // it (checked against the key Postgres prints below).
        let versions = if op.kind != WriteKind::Delete
            && op
                .written
                .iter()
                .any(|w| plan.columns[w.column].merge == MergeKind::Lww)
        {
            Some(conn.prepare(ledger::VERSIONS).await.map_err(pg)?)
        } else {
            None
        };
        let guessed_key = versions.as_ref().map(|_| {
            let key: Vec<Option<&str>> = op.key.iter().map(|k| Some(k.as_str())).collect();
            serde_json::to_string(&key).unwrap_or_default()
        });
        let versions_params: Option<[&(dyn ToSql + Sync); 2]> =
            guessed_key.as_ref().map(|key| [&plan.label as _, key as _]);
        let client = conn.client();
        let (locked, read) = pipeline
            .run(
                conn,
                join(
                    client.query_opt(&lock, &text_params(&key_params)),
                    OptionFuture::from(
                        versions
                            .as_ref()
                            .zip(versions_params.as_ref())
                            .map(|(s, p)| client.query(s, p)),
                    ),
                ),
            )
            .await?;
        let locked = locked.map_err(pg)?;
        let read = read.transpose().map_err(pg)?;
        let current = match &locked {
            Some(r) => Some((
                read_row(r, width).map_err(pg)?,
                r.try_get::<_, i64>(width).map_err(pg)?,
            )),
            None => None,
        };
        let effective = match (op.kind, current.is_some()) {
            (WriteKind::Insert, false) => WriteKind::Insert,
            (WriteKind::Insert | WriteKind::Update, true) => WriteKind::Update,
            (WriteKind::Update, false) => {
                return Err(refuse(
                    reason::NOT_FOUND,
                    format!(
                        "the row of `{}` this op updates no longer exists",
                        plan.client_name
                    ),
                ));
            }
            (WriteKind::Delete, false) => return Ok(OpEnd::Done),
            (WriteKind::Delete, true) => WriteKind::Delete,
        };
        let old = current.as_ref().map(|(row, _)| row);
        if !plan.rules.allows(effective) {
            let denied = plan
                .rules
                .check_permission(effective, None, None, cx.claims)
                .err()
                .map(|d| d.0)
                .unwrap_or_default();
            return Err(refuse(reason::PERMISSION_DENIED, denied));
        }
        if effective == WriteKind::Delete {
            plan.rules
                .check_permission(WriteKind::Delete, old.map(Vec::as_slice), None, cx.claims)
                .map_err(|d| refuse(reason::PERMISSION_DENIED, d.0))?;
        }
        if let Some(old) = old {
            check_stale(plan, op, old).map_err(|m| refuse(reason::STALE, m))?;
        }
        let mut written = op.written.clone();
        if let Some(function) = &plan.function {
            let call = FunctionCall {
                function,
                kind: effective,
                key: &op.key,
                written: &written,
                auth: &cx.claims_json,
                client_id: cx.client_id,
                op_index: index,
            };
            match function::call(conn, plan, &call).await? {
                Verdict::Skip => return Ok(OpEnd::Done),
                Verdict::Write(columns) => written = columns,
            }
            check_counters(plan, &written).map_err(|m| refuse(reason::REJECTED_BY_FUNCTION, m))?;
        }
        // What is recorded of the row's versions, and, for an update, those
        // recorded before (kept for the columns it does not write).
        let (record, recorded) = match (effective, current) {
            (WriteKind::Delete, Some((old, _))) => {
                let delete = conn.prepare(&plan.delete_sql).await.map_err(pg)?;
                let params: Vec<Box<dyn ToSql + Send + Sync>> = key_params
                    .into_iter()
                    .map(|k| Box::new(k) as Box<dyn ToSql + Send + Sync>)
                    .collect();
                pipeline.defer(delete, params, index);
                let record = VersionWrite {
                    table: plan.label.clone(),
                    key: version_key(plan, &old),
                    columns: Vec::new(),
                    hashes: Vec::new(),
                    version: op.version.clone(),
                    replace: true,
                };
                (record, None)
            }
            (WriteKind::Insert, _) => {
                let sql = merge::insert(plan, &op.key, &written);
                let rows = conn
                    .query(&sql.text, &text_params(&sql.params))
                    .await
                    .map_err(pg)?;
                let Some(row) = rows.first() else {
                    return Ok(OpEnd::Raced);
                };
                let new = read_row(row, width).map_err(pg)?;
                plan.rules
                    .check_permission(WriteKind::Insert, None, Some(&new), cx.claims)
                    .map_err(|d| refuse(reason::PERMISSION_DENIED, d.0))?;
                let key = version_key(plan, &new);
                (versions_written(plan, key, &written, &new, op, true), None)
            }
            (_, Some((old, commit_ms))) => {
                let key = version_key(plan, &old);
                let recorded: ledger::RowVersions = match read {
                    Some(rows) if guessed_key.as_deref() == Some(key.as_str()) => {
                        ledger::versions(&rows).map_err(pg)?
                    }
                    _ if written
                        .iter()
                        .any(|w| plan.columns[w.column].merge == MergeKind::Lww) =>
                    {
                        let rows = conn
                            .query(ledger::VERSIONS, &[&plan.label, &key])
                            .await
                            .map_err(pg)?;
                        ledger::versions(&rows).map_err(pg)?
                    }
                    _ => ledger::RowVersions::new(),
                };
                let winners: Vec<Written> = written
                    .into_iter()
                    .filter(|w| {
                        let column = &plan.columns[w.column];
                        column.merge != MergeKind::Lww
                            || merge::lww_wins(
                                old[w.column].as_deref(),
                                recorded.get(&column.name),
                                commit_ms,
                                &op.version,
                            )
                    })
                    .collect();
                let new = match merge::update(plan, &op.key, &winners) {
                    None => old.clone(),
                    Some(sql) => {
                        let row = conn
                            .query_opt(&sql.text, &text_params(&sql.params))
                            .await
                            .map_err(pg)?;
                        match row {
                            Some(row) => read_row(&row, width).map_err(pg)?,
                            None => old.clone(),
                        }
                    }
                };
                plan.rules
                    .check_permission(WriteKind::Update, Some(&old), Some(&new), cx.claims)
                    .map_err(|d| refuse(reason::PERMISSION_DENIED, d.0))?;
                let record = versions_written(plan, key, &winners, &new, op, false);
                (record, Some(recorded))
            }
            (_, None) => return Ok(OpEnd::Done),
        };
        if !record.is_empty() {
            let statement = conn.prepare(ledger::WRITE_VERSIONS).await.map_err(pg)?;
            pipeline.defer(statement, record.params(recorded.as_ref()), index);
        }
        Ok(OpEnd::Done)
    }
}

/// Key values → Postgres text, in key order.
fn key_text(plan: &TablePlan, key: &[Value]) -> Result<Vec<String>, String> {
    if key.len() != plan.primary_key.len() {
        return Err(format!(
            "the key of `{}` has {} column(s), the op gives {}",
            plan.client_name,
            plan.primary_key.len(),
            key.len()
        ));
    }
    plan.primary_key
        .iter()
        .zip(key)
        .map(|(&c, v)| {
            let column = &plan.columns[c];
            match to_pg_text(column.kind.as_ref(), v) {
                Ok(Some(text)) => Ok(text),
                Ok(None) => Err(format!("key column `{}` is NULL", column.name)),
                Err(e) => Err(format!("key column `{}`: {e}", column.name)),
            }
        })
        .collect()
}

/// The columns an op writes, checked and converted; key columns are left
/// out (the key travels in `key`).
fn written_columns(
    plan: &TablePlan,
    columns: &[ColumnValue],
) -> Result<Vec<Written>, (&'static str, String)> {
    let mut out: Vec<Written> = Vec::with_capacity(columns.len());
    let null = Value::default();
    for cv in columns {
        let Some(c) = plan.column(&cv.name).filter(|&c| plan.columns[c].synced) else {
            return Err((
                reason::UNKNOWN_COLUMN,
                format!(
                    "table `{}` has no column `{}` that clients hold",
                    plan.client_name, cv.name
                ),
            ));
        };
        if plan.primary_key.contains(&c) {
            continue;
        }
        if out.iter().any(|w| w.column == c) {
            return Err((
                reason::INVALID_VALUE,
                format!("column `{}` is written twice", cv.name),
            ));
        }
        let column = &plan.columns[c];
        let text = to_pg_text(column.kind.as_ref(), cv.value.as_ref().unwrap_or(&null))
            .map_err(|e| (reason::INVALID_VALUE, format!("column `{}`: {e}", cv.name)))?;
        out.push(Written { column: c, text });
    }
    check_counters(plan, &out).map_err(|m| (reason::INVALID_VALUE, m))?;
    Ok(out)
}

/// A counter's delta must be a number, not NULL.
fn check_counters(plan: &TablePlan, written: &[Written]) -> Result<(), String> {
    match written
        .iter()
        .find(|w| w.text.is_none() && plan.columns[w.column].merge == MergeKind::Counter)
    {
        Some(w) => Err(format!(
            "the delta of counter column `{}` is NULL",
            plan.columns[w.column].name
        )),
        None => Ok(()),
    }
}

/// `reject_if_stale` columns the op writes or names in `before` must still
/// hold what the client saw.
pub(super) fn check_stale(plan: &TablePlan, op: &Op<'_>, old: &Row) -> Result<(), String> {
    for (c, column) in plan.columns.iter().enumerate() {
        if column.merge != MergeKind::RejectIfStale {
            continue;
        }
        let seen = op.before.get(column.name.as_str());
        let writes = op.written.iter().any(|w| w.column == c);
        match seen {
            None if writes => {
                return Err(format!(
                    "`{}` is written without the value it replaces (`before`), and the row \
                     exists on the server",
                    column.name
                ));
            }
            Some(seen) if !same_as_seen(column.kind.as_ref(), old[c].as_deref(), seen) => {
                return Err(format!(
                    "`{}` changed on the server since this client read it",
                    column.name
                ));
            }
            None | Some(_) => {}
        }
    }
    Ok(())
}

/// The versions of the last-writer-wins columns just written, to record;
/// `replace`: the versions of the row's other columns are forgotten.
pub(super) fn versions_written(
    plan: &TablePlan,
    key: String,
    written: &[Written],
    new: &Row,
    op: &Op<'_>,
    replace: bool,
) -> VersionWrite {
    let (columns, hashes) = written
        .iter()
        .map(|w| w.column)
        .filter(|&c| plan.columns[c].merge == MergeKind::Lww)
        .map(|c| {
            (
                plan.columns[c].name.clone(),
                value_hash(new.get(c).and_then(|v| v.as_deref())),
            )
        })
        .unzip();
    VersionWrite {
        table: plan.label.clone(),
        key,
        columns,
        hashes,
        version: op.version.clone(),
        replace,
    }
}
