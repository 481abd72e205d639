//! The write path: local writes from clients, applied to Postgres as op
//! groups, merged with what others wrote by the rules of the schema files
//! (design decisions 8 and 9).
//!
//! ```text
//! WriteRequest ─▶ Applier::apply ─▶ per group, in order, one transaction:
//!   (client_id, seq)      ledger claim ─▶ per op: lock row ─▶ stale check
//!   groups of ops         ─▶ table function ─▶ merge + write ─▶ permission
//!                         ─▶ column versions ─▶ COMMIT
//!   (a single-op group: three round trips to Postgres, see `apply`)
//! requests waiting together ─▶ `queue` ─▶ `batch`: many groups, one
//!   transaction, a few statements per table, three round trips
//! ◀─ GroupResult: APPLIED (commit LSN) │ DUPLICATE (original result) │ REJECTED (reason, op)
//! ```
//!
//! Invariants:
//! - A group is applied at most once: its `(client_id, seq)` row in
//!   `outpost.applied_groups` commits in the same transaction as its
//!   changes, so a retry after any failure (even between COMMIT and the
//!   reply) finds it and is answered DUPLICATE with the original result.
//! - A group is all or nothing; a rejected group is rolled back alone,
//!   recorded, and the groups after it are still applied, in order.
//! - A transient failure (Postgres unreachable) fails the whole request
//!   and applies nothing more; the client retries, and what was applied
//!   before comes back as DUPLICATE.
//! - The commit LSN of an APPLIED group is read right after its commit: an
//!   upper bound, so a client that waits for a checkpoint at or past it
//!   holds the group's changes by then. A DUPLICATE of an applied group
//!   carries the WAL end read when it is answered, an upper bound too.
//!
//! Modules: `ledger` (the `outpost` tables), `apply` (one group), `op`
//! (one op), `merge` (the SQL of each merge kind, last-writer-wins),
//! [`hlc`] (versions),
//! `function` (the table function), `values` (wire values → Postgres text),
//! `plan` (per-table SQL prepared at start-up), `pool` (connections),
//! `pipeline` (statements of a group sharing a round trip), `queue`
//! (requests waiting, and the leaders that batch them), `batch` and
//! `batch_sql` (many groups in one transaction),
//! [`reason`] (the rejection codes).

mod apply;
mod batch;
mod batch_sql;
mod function;
pub mod hlc;
mod ledger;
mod merge;
mod op;
mod pipeline;
mod plan;
mod pool;
mod queue;
mod reject;
mod values;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::ops::Not;
use std::sync::Arc;

use outpost_proto::v1::{GroupResult, OpGroup};

use crate::auth::Claims;
use crate::schema::{CompiledSchema, MergeKind, WriteRules};
use apply::RequestCx;
use plan::TablePlan;
use pool::Pool;
use queue::Queue;
pub use reject::reason;

/// Most groups in one request.
pub const MAX_GROUPS_PER_REQUEST: usize = 1000;
/// Most ops in one request, over all its groups.
pub const MAX_OPS_PER_REQUEST: usize = 10_000;
/// Longest client id, in bytes.
pub const MAX_CLIENT_ID_BYTES: usize = 200;

/// Why writes could not be set up or applied.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot connect to Postgres for writes: {0}")]
    Connect(tokio_postgres::Error),
    #[error("setting up the `outpost` schema in Postgres: {0}")]
    Setup(tokio_postgres::Error),
    #[error("write rules: {0}")]
    Plan(String),
    /// Postgres failed while applying (not because of the data): nothing
    /// more of the request was applied; retrying is safe.
    #[error("Postgres failed while applying writes: {0}")]
    Postgres(tokio_postgres::Error),
    /// Postgres failed while applying writes of this request together
    /// with others: nothing more of the request was applied; retrying is
    /// safe.
    #[error("Postgres failed while applying writes: {0}")]
    Interrupted(String),
    #[error("the write ledger is inconsistent: {0}")]
    Ledger(String),
    /// The request itself is malformed or too large.
    #[error("{0}")]
    InvalidRequest(String),
}

/// How to reach Postgres for writes.
#[derive(Clone, Debug)]
pub struct ApplierConfig {
    pub pg: tokio_postgres::Config,
    /// Connections applying writes at once.
    pub connections: usize,
    /// Batches of groups applied at once (each on one of the
    /// connections): while that many run, requests wait and the next batch
    /// takes them all.
    pub batches: usize,
    /// The replication publication, from which Outpost's own tables are
    /// kept out.
    pub publication: Option<String>,
}

/// Applies op groups to Postgres. Cheap to share (`Arc`); requests run
/// concurrently on separate connections.
pub struct Applier {
    pool: Arc<Pool>,
    /// Writable tables, by client name.
    plans: HashMap<String, TablePlan>,
    /// Synced tables without write rules, by client name.
    read_only: HashSet<String>,
    rules: WriteRules,
    queue: Queue,
}

impl Applier {
    /// Sets up the `outpost` schema, reads what it needs of the catalog and
    /// prepares the writable tables of `schema`.
    pub async fn start(
        cfg: ApplierConfig,
        schema: &CompiledSchema,
        rules: WriteRules,
    ) -> Result<Applier, WriteError> {
        let mut pg = cfg.pg.clone();
        pg.application_name("outpost writes");
        let pool = Pool::new(pg, cfg.connections);
        let mut conn = pool.get().await.map_err(WriteError::Connect)?;
        ledger::setup(&mut conn, cfg.publication.as_deref())
            .await
            .map_err(WriteError::Setup)?;
        let commit_times = conn
            .query_opt(
                "SELECT current_setting('track_commit_timestamp') = 'on'",
                &[],
            )
            .await
            .and_then(|r| r.map_or(Ok(false), |r| r.try_get(0)))
            .map_err(WriteError::Setup)?;
        if !commit_times {
            tracing::info!(
                "track_commit_timestamp is off: changes made in Postgres by other programs \
                 count as older than every client write to the same column"
            );
        }
        let mut plans = HashMap::new();
        let mut read_only = HashSet::new();
        for table in &schema.tables {
            let Some(table_rules) = rules.table(&table.schema, &table.name) else {
                read_only.insert(table.client_name.clone());
                continue;
            };
            if let Some(f) = &table_rules.function
                && f.sql_name.is_none()
            {
                return Err(WriteError::Plan(format!(
                    "the function `{}` of table `{}` was not looked up in the database",
                    f.name, table.name
                )));
            }
            let qualified = format!(
                "{}.{}",
                plan::quote_ident(&table.schema),
                plan::quote_ident(&table.name)
            );
            let rows = conn
                .query(
                    "SELECT a.attname::text, format_type(a.atttypid, -1) FROM pg_attribute a \
                     WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 \
                       AND NOT a.attisdropped",
                    &[&qualified],
                )
                .await
                .map_err(WriteError::Setup)?;
            let casts = rows
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<HashMap<String, String>, tokio_postgres::Error>>()
                .map_err(WriteError::Setup)?;
            let mut plan = TablePlan::new(table, table_rules, &casts, commit_times)
                .map_err(WriteError::Plan)?;
            plan.batchable = conn
                .query_opt(plan::UNBATCHABLE, &[&qualified])
                .await
                .and_then(|r| r.map_or(Ok(true), |r| r.try_get::<_, bool>(0)))
                .map_err(WriteError::Setup)?
                .not();
            plan.related = conn
                .query(plan::RELATED, &[&qualified])
                .await
                .and_then(|rows| rows.iter().map(|r| r.try_get(0)).collect())
                .map_err(WriteError::Setup)?;
            plans.insert(table.client_name.clone(), plan);
        }
        drop(conn);
        tracing::info!(tables = plans.len(), "writes enabled");
        Ok(Applier {
            pool,
            plans,
            read_only,
            rules,
            queue: Queue::new(cfg.batches),
        })
    }

    /// How a column of a synced table merges (by schema, table and column
    /// index in the compiled schema).
    pub fn merge_kind(&self, schema: &str, table: &str, column: usize) -> MergeKind {
        self.rules.merge_kind(schema, table, column)
    }

    /// Applies `groups` in order, one transaction each, and answers one
    /// result per group. An error means Postgres failed (or the request is
    /// malformed): groups before the failure may have been applied, and a
    /// retry of the whole request reports them as DUPLICATE.
    pub async fn apply(
        &self,
        client_id: &str,
        claims: &Claims,
        groups: &[OpGroup],
    ) -> Result<Vec<GroupResult>, WriteError> {
        check_request(client_id, groups)?;
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let batchable = groups.iter().flat_map(|g| &g.ops).any(|op| {
            self.plans
                .get(&op.table)
                .is_some_and(|p| p.batchable && p.function.is_none())
        });
        if batchable {
            return self.apply_queued(client_id, claims, groups).await;
        }
        // Nothing to batch: applied at once, on a connection of its own.
        let mut conn = self.pool.get().await.map_err(WriteError::Postgres)?;
        let cx = RequestCx::new(client_id, claims);
        let mut results = Vec::with_capacity(groups.len());
        for group in groups {
            results.push(self.apply_group(&mut conn, &cx, group).await?);
        }
        Ok(results)
    }
}

/// Refuses requests that are malformed or too large, before any work.
pub fn check_request(client_id: &str, groups: &[OpGroup]) -> Result<(), WriteError> {
    let invalid = |m: String| Err(WriteError::InvalidRequest(m));
    if client_id.is_empty() {
        return invalid("`client_id` is empty: every write request names its client".into());
    }
    if client_id.len() > MAX_CLIENT_ID_BYTES {
        return invalid(format!(
            "`client_id` is longer than {MAX_CLIENT_ID_BYTES} bytes"
        ));
    }
    if groups.len() > MAX_GROUPS_PER_REQUEST {
        return invalid(format!(
            "{} groups in one request; at most {MAX_GROUPS_PER_REQUEST} are accepted",
            groups.len()
        ));
    }
    let ops: usize = groups.iter().map(|g| g.ops.len()).sum();
    if ops > MAX_OPS_PER_REQUEST {
        return invalid(format!(
            "{ops} ops in one request; at most {MAX_OPS_PER_REQUEST} are accepted"
        ));
    }
    if let Some(g) = groups.iter().find(|g| i64::try_from(g.seq).is_err()) {
        return invalid(format!("seq {} is out of range (at most 2^63 - 1)", g.seq));
    }
    Ok(())
}
