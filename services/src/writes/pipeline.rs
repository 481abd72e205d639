//! The statements of an open group that wait to go out with its next round
//! trip: BEGIN with the ledger claim, until the first op reads its row;
//! then what each op writes without reading the answer (its column
//! versions, a delete), until the next op or the COMMIT.
//!
//! ```text
//! one round trip:  [BEGIN, claim] │ [deferred of op i-1] │ what op i (or COMMIT) sends
//!                  answers checked in this order: the first failure is the group's
//! ```
//!
//! Invariants: statements run in the order they were queued, before what
//! the round trip carries, so a later statement sees their effects (and a
//! row an op reads was locked by an earlier statement of the same round
//! trip); every answer is read, and a failure is reported with the index of
//! the op that queued the statement, before anything the round trip
//! carries — after a failed statement Postgres refuses the rest of the
//! transaction and answers COMMIT with a rollback, so nothing is reported
//! applied unless every statement before the COMMIT succeeded.

use std::future::Future;

use futures::future::{OptionFuture, join, join_all, join3};
use tokio_postgres::Statement;
use tokio_postgres::types::ToSql;

use super::pool::Conn;
use super::reject::{GroupError, Stage, classify};

/// BEGIN and the claim of `(client_id, seq)`, not yet sent.
struct Claim<'g> {
    statement: Statement,
    client_id: &'g str,
    seq: i64,
}

/// A statement whose answer is only checked.
struct Deferred {
    statement: Statement,
    params: Vec<Box<dyn ToSql + Send + Sync>>,
    op_index: u32,
}

/// What waits to go out with the group's next round trip.
pub(super) struct Pipeline<'g> {
    claim: Option<Claim<'g>>,
    deferred: Vec<Deferred>,
}

impl<'g> Pipeline<'g> {
    /// A group about to start: BEGIN and its claim (the prepared
    /// `ledger::CLAIM`) go out with the first round trip.
    pub(super) fn new(claim: Statement, client_id: &'g str, seq: i64) -> Self {
        Pipeline {
            claim: Some(Claim {
                statement: claim,
                client_id,
                seq,
            }),
            deferred: Vec::new(),
        }
    }

    /// Queues a statement of op `op_index` whose answer is only checked.
    pub(super) fn defer(
        &mut self,
        statement: Statement,
        params: Vec<Box<dyn ToSql + Send + Sync>>,
        op_index: u32,
    ) {
        self.deferred.push(Deferred {
            statement,
            params,
            op_index,
        });
    }

    /// Nothing waits.
    pub(super) fn is_empty(&self) -> bool {
        self.claim.is_none() && self.deferred.is_empty()
    }

    /// Sends what waits, then `main` (whose requests must go out on its
    /// first poll), in one round trip. Checks the answers of what waited
    /// first: [`GroupError::Recorded`] when the claim finds the group
    /// recorded before.
    pub(super) async fn run<T>(
        &mut self,
        conn: &Conn,
        main: impl Future<Output = T>,
    ) -> Result<T, GroupError> {
        let claim = self.claim.take();
        let deferred = std::mem::take(&mut self.deferred);
        let client = conn.client();
        let claim_params: Option<[&(dyn ToSql + Sync); 2]> =
            claim.as_ref().map(|c| [&c.client_id as _, &c.seq as _]);
        let claimed = OptionFuture::from(
            claim
                .as_ref()
                .zip(claim_params.as_ref())
                .map(|(c, p)| join(conn.begin(), client.execute(&c.statement, p))),
        );
        let params: Vec<Vec<&(dyn ToSql + Sync)>> = deferred
            .iter()
            .map(|d| d.params.iter().map(|p| p.as_ref() as _).collect())
            .collect();
        // `join_all` polls its few futures in order, so they go out in order.
        let written = join_all(
            deferred
                .iter()
                .zip(&params)
                .map(|(d, p)| client.execute(&d.statement, p)),
        );
        let (claimed, written, out) = join3(claimed, written, main).await;
        if let Some((begun, inserted)) = claimed {
            begun.map_err(|e| classify(e, Stage::Write, 0))?;
            if inserted.map_err(|e| classify(e, Stage::Write, 0))? == 0 {
                return Err(GroupError::Recorded);
            }
        }
        for (d, result) in deferred.iter().zip(written) {
            result.map_err(|e| classify(e, Stage::Write, d.op_index))?;
        }
        Ok(out)
    }

    /// Sends what waits, alone.
    pub(super) async fn flush(&mut self, conn: &Conn) -> Result<(), GroupError> {
        if self.is_empty() {
            return Ok(());
        }
        self.run(conn, async {}).await
    }
}
