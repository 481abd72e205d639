//! A batch: op groups — consecutive ones of a request, and those of
//! requests waiting together — applied in one Postgres transaction, with a
//! few statements for all their ops (`batch_sql`) in three round trips,
//! however many groups it holds. The transaction runs them with generic
//! plans ([`Conn::begin_generic`]): their plans do not depend on what the
//! arrays hold, and Postgres would otherwise plan them again at every run.
//!
//! ```text
//! BEGIN, claim every group; per table (by name): lock the rows; the
//!   column versions of the rows                               ─ round trip 1
//! per op: what it does (insert / update / delete / nothing), the
//!   permission on the old row, the stale check, the last-writer-wins
//!   winners
//! per table, in order of first use: insert, update, delete     ─ round trip 2
//! per op: the permission on the row written
//! the column versions, COMMIT, pg_current_wal_lsn()            ─ round trip 3
//! ```
//!
//! Invariants: a batch holds only groups whose ops need no table function,
//! are on tables whose rows no trigger, referential action or cross-row
//! constraint ties to other writes (`plan::UNBATCHABLE`), touch pairwise
//! different rows, keep the order of ops on tables tied by foreign keys,
//! and converted cleanly ([`Batch::admits`]), so applying them together
//! does what applying them one at a time would. It is all or nothing:
//! anything but a clean run of every group — a rejection, a key inserted
//! concurrently, a key not in the form Postgres prints it, an error
//! Postgres reports for the data — rolls the whole batch back and answers
//! [`BatchEnd::Fallback`]; the caller applies a group the rules refused
//! alone and the others as batches again, or, when the culprit is not
//! known, every group one at a time, where each gets its own verdict.
//! Groups the claim finds recorded before write nothing and are answered
//! as duplicates.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use futures::future::{OptionFuture, join, join_all, join4};
use outpost_proto::v1::OpGroup;
use tokio_postgres::Row as PgRow;
use tokio_postgres::types::ToSql;

use super::Applier;
use super::apply::RequestCx;
use super::batch_sql;
use super::ledger::{self, RowVersions, VersionWrite};
use super::merge::{self, Written};
use super::op::{Op, Row, check_stale, read_row, version_key, versions_written};
use super::plan::TablePlan;
use super::pool::Conn;
use super::reject::{GroupError, Stage, classify};
use crate::lsn::Lsn;
use crate::schema::{MergeKind, WriteKind};

/// Most groups in one batch.
pub(super) const MAX_GROUPS: usize = 1000;
/// Most ops in one batch.
pub(super) const MAX_OPS: usize = 2000;

/// A group ready to join a batch: its ops checked and converted.
pub(super) struct Member<'a> {
    pub cx: &'a RequestCx<'a>,
    pub group: &'a OpGroup,
    pub seq: i64,
    ops: Vec<(&'a TablePlan, Op<'a>)>,
    /// The version keys of its rows, as the ops give them.
    rows: Vec<String>,
}

impl Applier {
    /// The group as a batch member, or `None` when it must be applied
    /// alone: an op needs the table function, is on a table that cannot be
    /// batched, does not convert (it is rejected alone), or two ops touch
    /// the same row.
    pub(super) fn member<'a>(
        &'a self,
        cx: &'a RequestCx<'a>,
        group: &'a OpGroup,
    ) -> Option<Member<'a>> {
        let seq = i64::try_from(group.seq).ok()?;
        let mut ops = Vec::with_capacity(group.ops.len());
        let mut rows = Vec::with_capacity(group.ops.len());
        let mut seen = HashSet::with_capacity(group.ops.len());
        for (i, op) in group.ops.iter().enumerate() {
            let (plan, op) = self.convert_op(cx, u32::try_from(i).ok()?, op).ok()?;
            if !plan.batchable || plan.function.is_some() {
                return None;
            }
            let row = given_key(&op);
            if !seen.insert((plan.label.as_str(), row.clone())) {
                return None;
            }
            rows.push(row);
            ops.push((plan, op));
        }
        let member = Member {
            cx,
            group,
            seq,
            ops,
            rows,
        };
        // A group whose own ops go back and forth between tables tied by a
        // foreign key is applied alone.
        Batch::default().keeps_order(&member).then_some(member)
    }
}

/// The version key of an op's row, from the key as the op gives it.
fn given_key(op: &Op<'_>) -> String {
    let key: Vec<Option<&str>> = op.key.iter().map(|k| Some(k.as_str())).collect();
    serde_json::to_string(&key).unwrap_or_default()
}

/// Groups to apply together.
#[derive(Default)]
pub(super) struct Batch<'a> {
    pub members: Vec<Member<'a>>,
    /// Every row of the batch: (table label, version key).
    rows: HashSet<(&'a str, String)>,
    /// Every group of the batch: (client id, seq).
    groups: HashSet<(&'a str, i64)>,
    /// The position of the last op on each table (by label).
    last_use: HashMap<&'a str, usize>,
    ops: usize,
}

impl<'a> Batch<'a> {
    /// Whether `member` can join: the batch has room, none of its rows or
    /// its ledger entry is the batch's already, and its ops keep the order
    /// of the batch's statements: the batch writes table by table, so an
    /// op on a table the batch used before must not follow an op on a
    /// table tied to it by a foreign key that came since (its checks would
    /// see writes the op came before).
    pub(super) fn admits(&self, member: &Member<'a>) -> bool {
        self.members.len() < MAX_GROUPS
            && self.ops + member.ops.len() <= MAX_OPS
            && !self.groups.contains(&(member.cx.client_id, member.seq))
            && member
                .ops
                .iter()
                .zip(&member.rows)
                .all(|((plan, _), row)| !self.rows.contains(&(plan.label.as_str(), row.clone())))
            && self.keeps_order(member)
    }

    fn keeps_order(&self, member: &Member<'a>) -> bool {
        let mut last: HashMap<&str, usize> = HashMap::new();
        let last_use = |last: &HashMap<&str, usize>, t: &str| {
            last.get(t).or_else(|| self.last_use.get(t)).copied()
        };
        for (i, (plan, _)) in member.ops.iter().enumerate() {
            if let Some(mine) = last_use(&last, &plan.label)
                && plan
                    .related
                    .iter()
                    .any(|r| last_use(&last, r).is_some_and(|theirs| theirs > mine))
            {
                return false;
            }
            last.insert(&plan.label, self.ops + i);
        }
        true
    }

    pub(super) fn push(&mut self, member: Member<'a>) {
        self.groups.insert((member.cx.client_id, member.seq));
        for (i, ((plan, _), row)) in member.ops.iter().zip(&member.rows).enumerate() {
            self.rows.insert((plan.label.as_str(), row.clone()));
            self.last_use.insert(&plan.label, self.ops + i);
        }
        self.ops += member.ops.len();
        self.members.push(member);
    }

    /// The batch without member `k`: the members before it, member `k`,
    /// and the members after it (each part keeps the order of the whole).
    pub(super) fn split(self, k: usize) -> (Batch<'a>, Option<Member<'a>>, Batch<'a>) {
        let (mut before, mut after) = (Batch::default(), Batch::default());
        let mut refused = None;
        for (i, m) in self.members.into_iter().enumerate() {
            match i.cmp(&k) {
                std::cmp::Ordering::Less => before.push(m),
                std::cmp::Ordering::Equal => refused = Some(m),
                std::cmp::Ordering::Greater => after.push(m),
            }
        }
        (before, refused, after)
    }

    /// Adds `member`, if any, without checking it.
    pub(super) fn extend(&mut self, member: Option<Member<'a>>) {
        if let Some(m) = member {
            self.push(m);
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.members.len()
    }
}

/// How a member of a batch that ran cleanly ended.
pub(super) enum Outcome {
    Applied(Lsn),
    /// Recorded before: answered with the recorded result.
    Duplicate,
}

/// How a batch ended.
pub(super) enum BatchEnd {
    /// Committed: one outcome per member, in order.
    Done(Vec<Outcome>),
    /// Rolled back; apply the groups one at a time, or, when `refused`
    /// names the member the rules or the data refused, that one alone and
    /// the others as batches again.
    Fallback { why: String, refused: Option<usize> },
}

/// Why a run stopped short.
enum Stop {
    Fallback(String),
    /// Member `0` is refused (by the rules, or as stale or not found).
    Refused(usize, String),
    Transient(tokio_postgres::Error),
}

fn stop(e: tokio_postgres::Error) -> Stop {
    match classify(e, Stage::Write, 0) {
        GroupError::Transient(e) => Stop::Transient(e),
        GroupError::Rejected(r) => Stop::Fallback(format!("{}: {}", r.code, r.message)),
        GroupError::Retry(m) => Stop::Fallback(m),
        GroupError::Recorded => Stop::Fallback("recorded".into()),
    }
}

fn fallback<T>(why: impl Into<String>) -> Result<T, Stop> {
    Err(Stop::Fallback(why.into()))
}

type Params = Vec<Box<dyn ToSql + Sync + Send>>;

fn refs(params: &Params) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p.as_ref() as _).collect()
}

/// A locked row: its columns, the commit time of its last change, its id.
type Locked = (Row, i64, String);

/// The recorded versions of a row's columns, and the row id of the
/// `row_versions` row that holds them.
type Recorded = (RowVersions, String);

/// An op of the batch: (member, op) indexes.
type At = (usize, usize);

/// The ops of one table, in batch order.
struct TableOps<'a> {
    plan: &'a TablePlan,
    ops: Vec<At>,
}

/// What an op does, decided on the locked row.
enum Step {
    Nothing,
    Insert,
    Update {
        old: Row,
        ctid: String,
        winners: Vec<Written>,
    },
    /// An update in which no column wins: the row stays as it is.
    Kept,
    Delete {
        old: Row,
        ctid: String,
    },
}

/// The writes of one table.
#[derive(Default)]
struct TableWrites {
    /// By the columns written.
    inserts: BTreeMap<Vec<usize>, Vec<At>>,
    updates: Vec<At>,
    update_columns: BTreeSet<usize>,
    deletes: Vec<At>,
}

/// What a write statement wrote, to check.
enum Wrote {
    Rows(Vec<At>),
    Deleted(usize),
}

impl Applier {
    /// Applies `batch` in one transaction. An error is transient: the
    /// batch was rolled back (or the connection is gone).
    pub(super) async fn run_batch(
        &self,
        conn: &mut Conn,
        batch: &Batch<'_>,
    ) -> Result<BatchEnd, tokio_postgres::Error> {
        match self.try_batch(conn, batch).await {
            Ok(outcomes) => Ok(BatchEnd::Done(outcomes)),
            Err(Stop::Fallback(why)) => {
                conn.rollback().await?;
                Ok(BatchEnd::Fallback { why, refused: None })
            }
            Err(Stop::Refused(member, why)) => {
                conn.rollback().await?;
                Ok(BatchEnd::Fallback {
                    why,
                    refused: Some(member),
                })
            }
            Err(Stop::Transient(e)) => {
                let _ = conn.rollback().await;
                Err(e)
            }
        }
    }

    async fn try_batch(&self, conn: &mut Conn, batch: &Batch<'_>) -> Result<Vec<Outcome>, Stop> {
        let members = &batch.members;
        let op = |(m, o): At| &members[m].ops[o].1;
        // The version key of an op's row as the op gives it, made once.
        let key_of = |(m, o): At| &members[m].rows[o];
        // The tables, in order of first use.
        let mut tables: Vec<TableOps<'_>> = Vec::new();
        for (m, member) in members.iter().enumerate() {
            for (o, (plan, _)) in member.ops.iter().enumerate() {
                match tables.iter_mut().find(|t| t.plan.label == plan.label) {
                    Some(t) => t.ops.push((m, o)),
                    None => tables.push(TableOps {
                        plan,
                        ops: vec![(m, o)],
                    }),
                }
            }
        }

        // Round trip 1: claim, keys, locks, versions.
        let claim = conn.prepare(batch_sql::CLAIM).await.map_err(stop)?;
        let mut locks = Vec::with_capacity(tables.len());
        for t in &tables {
            let lock = conn.prepare(&batch_sql::lock(t.plan)).await.map_err(stop)?;
            let keys: Params = (0..t.plan.primary_key.len())
                .map(|j| {
                    Box::new(
                        t.ops
                            .iter()
                            .map(|&at| op(at).key[j].clone())
                            .collect::<Vec<_>>(),
                    ) as Box<dyn ToSql + Sync + Send>
                })
                .collect();
            locks.push((lock, keys));
        }
        // Tables are locked in the order of their names, whatever the order
        // of first use, so that batches wait for each other rather than
        // deadlock.
        let mut lock_order: Vec<usize> = (0..tables.len()).collect();
        lock_order.sort_by(|&a, &b| tables[a].plan.label.cmp(&tables[b].plan.label));
        // The versions of every row: what last-writer-wins compares with,
        // and what a row inserted anew or deleted forgets.
        let mut versioned: (Vec<&str>, Vec<String>) = (Vec::new(), Vec::new());
        for t in &tables {
            for &at in &t.ops {
                versioned.0.push(&t.plan.label);
                versioned.1.push(key_of(at).clone());
            }
        }
        let versions = conn.prepare(batch_sql::VERSIONS).await.map_err(stop)?;
        let client_ids: Vec<&str> = members.iter().map(|m| m.cx.client_id).collect();
        let seqs: Vec<i64> = members.iter().map(|m| m.seq).collect();
        let client = conn.client();
        let versions_params: [&(dyn ToSql + Sync); 2] = [&versioned.0, &versioned.1];
        let lock_params: Vec<Vec<&(dyn ToSql + Sync)>> =
            locks.iter().map(|(_, keys)| refs(keys)).collect();
        let (begun, claimed, read, recorded) = join4(
            conn.begin_generic(),
            client.query(&claim, &[&client_ids, &seqs]),
            join_all(
                lock_order
                    .iter()
                    .map(|&i| client.query(&locks[i].0, &lock_params[i])),
            ),
            client.query(&versions, &versions_params),
        )
        .await;
        begun.map_err(stop)?;
        let claimed: HashSet<(String, i64)> = claimed
            .map_err(stop)?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(stop)?;
        let mut locked: Vec<HashMap<String, Locked>> = vec![HashMap::new(); tables.len()];
        for (&i, rows) in lock_order.iter().zip(read) {
            let t = &tables[i];
            let width = t.plan.columns.len();
            for r in rows.map_err(stop)? {
                let position: i64 = r.try_get(0).map_err(stop)?;
                let row: Row = (1..=width)
                    .map(|c| r.try_get(c))
                    .collect::<Result<_, _>>()
                    .map_err(stop)?;
                let commit_ms: i64 = r.try_get(width + 1).map_err(stop)?;
                let ctid: String = r.try_get(width + 2).map_err(stop)?;
                let Some(&at) = usize::try_from(position - 1)
                    .ok()
                    .and_then(|p| t.ops.get(p))
                else {
                    return fallback("the lock answered a row no op asked for");
                };
                // Equal keys printed otherwise (`1.5` of a `numeric(10,2)`
                // key stored as `1.50`, a `citext` key in other case): the
                // row's versions are recorded under the printed key.
                let key = key_of(at).clone();
                if version_key(t.plan, &row) != key {
                    return fallback("a key is not in the form Postgres prints it");
                }
                locked[i].insert(key, (row, commit_ms, ctid));
            }
        }
        let mut recorded_versions: HashMap<(String, String), Recorded> = HashMap::new();
        for r in recorded.map_err(stop)? {
            let (label, key, versions, ctid) = version_row(&r).map_err(stop)?;
            recorded_versions.insert((label, key), (ledger::readable(&versions), ctid));
        }
        // Each op, decided on its locked row.
        let applies: Vec<bool> = members
            .iter()
            .map(|m| claimed.contains(&(m.cx.client_id.to_string(), m.seq)))
            .collect();
        let mut steps: HashMap<At, (Step, i64)> = HashMap::new();
        let mut writes: Vec<TableWrites> = Vec::with_capacity(tables.len());
        for (t, rows) in tables.iter().zip(&locked) {
            let mut w = TableWrites::default();
            for &at in t.ops.iter().filter(|(m, _)| applies[*m]) {
                let op = op(at);
                let cx = members[at.0].cx;
                let key = key_of(at).clone();
                let current = rows.get(&key);
                let (step, commit_ms) = decide(t.plan, op, cx, current, |old, commit_ms| {
                    let recorded = recorded_versions.get(&(t.plan.label.clone(), key.clone()));
                    op.written
                        .iter()
                        .filter(|w| {
                            let column = &t.plan.columns[w.column];
                            column.merge != MergeKind::Lww
                                || merge::lww_wins(
                                    old[w.column].as_deref(),
                                    recorded.and_then(|(r, _)| r.get(&column.name)),
                                    commit_ms,
                                    &op.version,
                                )
                        })
                        .cloned()
                        .collect()
                })
                .map_err(|e| match e {
                    Stop::Fallback(why) => Stop::Refused(at.0, why),
                    other => other,
                })?;
                match &step {
                    Step::Insert => {
                        let columns = op.written.iter().map(|w| w.column).collect();
                        w.inserts.entry(columns).or_default().push(at);
                    }
                    Step::Update { winners, .. } => {
                        w.update_columns.extend(winners.iter().map(|w| w.column));
                        w.updates.push(at);
                    }
                    Step::Delete { .. } => w.deletes.push(at),
                    Step::Nothing | Step::Kept => {}
                }
                steps.insert(at, (step, commit_ms));
            }
            writes.push(w);
        }

        // Round trip 2: the writes, table by table in order of first use.
        let mut statements = Vec::new();
        for (t, w) in tables.iter().zip(&writes) {
            let keys = |ats: &[At]| -> Params {
                (0..t.plan.primary_key.len())
                    .map(|j| {
                        Box::new(
                            ats.iter()
                                .map(|&at| op(at).key[j].clone())
                                .collect::<Vec<_>>(),
                        ) as Box<dyn ToSql + Sync + Send>
                    })
                    .collect()
            };
            let row_ids = |ats: &[At]| -> Params {
                let ids: Vec<String> = ats
                    .iter()
                    .map(|at| match steps.get(at) {
                        Some((Step::Update { ctid, .. } | Step::Delete { ctid, .. }, _)) => {
                            ctid.clone()
                        }
                        _ => String::new(),
                    })
                    .collect();
                vec![Box::new(ids)]
            };
            for (columns, ats) in &w.inserts {
                let sql = batch_sql::insert(t.plan, columns);
                let mut params = keys(ats);
                for j in 0..columns.len() {
                    let values: Vec<Option<String>> = ats
                        .iter()
                        .map(|&at| op(at).written[j].text.clone())
                        .collect();
                    params.push(Box::new(values));
                }
                let statement = conn.prepare(&sql).await.map_err(stop)?;
                statements.push((statement, params, Wrote::Rows(ats.clone())));
            }
            if !w.updates.is_empty() {
                let columns: Vec<usize> = w.update_columns.iter().copied().collect();
                let sql = batch_sql::update(t.plan, &columns);
                let mut params = row_ids(&w.updates);
                let winner = |at: At, c: usize| match steps.get(&at) {
                    Some((Step::Update { winners, .. }, _)) => {
                        winners.iter().find(|w| w.column == c)
                    }
                    _ => None,
                };
                for &c in &columns {
                    let flags: Vec<bool> = w
                        .updates
                        .iter()
                        .map(|&at| winner(at, c).is_some())
                        .collect();
                    params.push(Box::new(flags));
                }
                for &c in &columns {
                    let values: Vec<Option<String>> = w
                        .updates
                        .iter()
                        .map(|&at| winner(at, c).and_then(|w| w.text.clone()))
                        .collect();
                    params.push(Box::new(values));
                }
                let statement = conn.prepare(&sql).await.map_err(stop)?;
                statements.push((statement, params, Wrote::Rows(w.updates.clone())));
            }
            if !w.deletes.is_empty() {
                let statement = conn
                    .prepare(&batch_sql::delete(t.plan))
                    .await
                    .map_err(stop)?;
                statements.push((
                    statement,
                    row_ids(&w.deletes),
                    Wrote::Deleted(w.deletes.len()),
                ));
            }
        }
        let client = conn.client();
        let params: Vec<Vec<&(dyn ToSql + Sync)>> =
            statements.iter().map(|(_, p, _)| refs(p)).collect();
        let answers = join_all(
            statements
                .iter()
                .zip(&params)
                .map(|((s, _, _), p)| client.query(s, p)),
        )
        .await;
        let mut written: HashMap<At, Row> = HashMap::new();
        for ((_, _, wrote), answer) in statements.iter().zip(answers) {
            let rows = answer.map_err(stop)?;
            match wrote {
                Wrote::Deleted(n) if rows.len() == *n => {}
                Wrote::Deleted(_) => return fallback("a row to delete was gone"),
                Wrote::Rows(ats) => {
                    let plan = members[ats[0].0].ops[ats[0].1].0;
                    let mut by_key: HashMap<String, Row> = rows
                        .iter()
                        .map(|r| {
                            let row = read_row(r, plan.columns.len())?;
                            Ok((version_key(plan, &row), row))
                        })
                        .collect::<Result<_, tokio_postgres::Error>>()
                        .map_err(stop)?;
                    for &at in ats {
                        let Some(row) = by_key.remove(key_of(at)) else {
                            return fallback("a key was inserted or removed concurrently");
                        };
                        written.insert(at, row);
                    }
                }
            }
        }

        // Permissions on the rows written, and their versions.
        let mut records: Vec<VersionWrite> = Vec::new();
        for (t, _) in tables.iter().zip(&writes) {
            for &at in t.ops.iter().filter(|(m, _)| applies[*m]) {
                let op = op(at);
                let claims = members[at.0].cx.claims;
                let denied = |d: crate::schema::Denied| Stop::Refused(at.0, d.0);
                let Some((step, _)) = steps.get(&at) else {
                    continue;
                };
                let record = match step {
                    Step::Nothing | Step::Kept => continue,
                    Step::Delete { old, .. } => VersionWrite {
                        table: t.plan.label.clone(),
                        key: version_key(t.plan, old),
                        columns: Vec::new(),
                        hashes: Vec::new(),
                        version: op.version.clone(),
                        replace: true,
                    },
                    Step::Insert => {
                        let new = &written[&at];
                        t.plan
                            .rules
                            .check_permission(WriteKind::Insert, None, Some(new), claims)
                            .map_err(denied)?;
                        let key = version_key(t.plan, new);
                        versions_written(t.plan, key, &op.written, new, op, true)
                    }
                    Step::Update { old, winners, .. } => {
                        let new = &written[&at];
                        t.plan
                            .rules
                            .check_permission(WriteKind::Update, Some(old), Some(new), claims)
                            .map_err(denied)?;
                        let key = version_key(t.plan, old);
                        versions_written(t.plan, key, winners, new, op, false)
                    }
                };
                if !record.is_empty() {
                    records.push(record);
                }
            }
        }

        // Round trip 3: the versions, COMMIT, the WAL end.
        let record = if records.is_empty() {
            None
        } else {
            Some(
                conn.prepare(batch_sql::WRITE_VERSIONS)
                    .await
                    .map_err(stop)?,
            )
        };
        let params = version_params(&records, &recorded_versions);
        let params = refs(&params);
        let client = conn.client();
        let (recorded, committed) = join(
            OptionFuture::from(record.as_ref().map(|s| client.query(s, &params))),
            conn.commit_reading_lsn(),
        )
        .await;
        recorded.transpose().map_err(stop)?;
        // COMMIT and the read of the WAL end are one message: should the
        // read fail after a commit, the groups are answered as after any
        // failure, and found recorded (duplicates) when applied again.
        let lsn = committed.map_err(stop)?;
        Ok(applies
            .into_iter()
            .map(|a| {
                if a {
                    Outcome::Applied(lsn)
                } else {
                    Outcome::Duplicate
                }
            })
            .collect())
    }
}

/// What `op` does to its row `current` (locked; with the commit time of
/// its last change), like one op alone would; `winners` picks the columns
/// an update writes. A rejection stops the batch.
fn decide(
    plan: &TablePlan,
    op: &Op<'_>,
    cx: &RequestCx<'_>,
    current: Option<&Locked>,
    winners: impl FnOnce(&Row, i64) -> Vec<Written>,
) -> Result<(Step, i64), Stop> {
    let effective = match (op.kind, current.is_some()) {
        (WriteKind::Insert, false) => WriteKind::Insert,
        (WriteKind::Insert | WriteKind::Update, true) => WriteKind::Update,
        (WriteKind::Update, false) => return fallback("an update of a row that is gone"),
        (WriteKind::Delete, false) => return Ok((Step::Nothing, 0)),
        (WriteKind::Delete, true) => WriteKind::Delete,
    };
    if !plan.rules.allows(effective) {
        return fallback("the write rules refuse the op's kind");
    }
    let Some((old, commit_ms, ctid)) = current else {
        return Ok((Step::Insert, 0));
    };
    if effective == WriteKind::Delete {
        plan.rules
            .check_permission(WriteKind::Delete, Some(old), None, cx.claims)
            .map_err(|d| Stop::Fallback(d.0))?;
    }
    check_stale(plan, op, old).map_err(Stop::Fallback)?;
    if effective == WriteKind::Delete {
        let (old, ctid) = (old.clone(), ctid.clone());
        return Ok((Step::Delete { old, ctid }, *commit_ms));
    }
    let winners = winners(old, *commit_ms);
    if winners.is_empty() {
        plan.rules
            .check_permission(WriteKind::Update, Some(old), Some(old), cx.claims)
            .map_err(|d| Stop::Fallback(d.0))?;
        return Ok((Step::Kept, *commit_ms));
    }
    Ok((
        Step::Update {
            old: old.clone(),
            ctid: ctid.clone(),
            winners,
        },
        *commit_ms,
    ))
}

type VersionRow = (String, String, String, String);

fn version_row(r: &PgRow) -> Result<VersionRow, tokio_postgres::Error> {
    Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))
}

/// The parameters of [`batch_sql::WRITE_VERSIONS`] for `records`: each
/// row's versions once written, over those `recorded` before; a row with
/// none left forgets its recorded ones.
fn version_params(
    records: &[VersionWrite],
    recorded: &HashMap<(String, String), Recorded>,
) -> Params {
    let mut forgotten = Vec::new();
    let mut tbl = Vec::new();
    let mut key = Vec::new();
    let mut versions = Vec::new();
    for r in records {
        let before = recorded.get(&(r.table.clone(), r.key.clone()));
        match r.merged(before.map(|(v, _)| v)) {
            Some(merged) => {
                tbl.push(r.table.clone());
                key.push(r.key.clone());
                versions.push(merged);
            }
            None => forgotten.extend(before.map(|(_, ctid)| ctid.clone())),
        }
    }
    vec![
        Box::new(forgotten),
        Box::new(tbl),
        Box::new(key),
        Box::new(versions),
    ]
}
