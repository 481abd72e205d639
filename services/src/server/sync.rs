//! The `Sync` call: authenticates the token, resolves the user's buckets and
//! starts a session task that streams them.

use super::fanout::Fanout;
use super::session::{Session, SessionStart};
use crate::auth::Authenticator;
use crate::schema::{CompiledSchema, MergeKind};
use crate::store::ReaderPool;
use crate::writes::{Applier, WriteError, check_request};
use outpost_proto::frame::SyncFrame;
use outpost_proto::framed::sync_server::Sync as SyncApi;
use outpost_proto::v1::{SyncRequest, WriteRequest, WriteResponse};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// What every session needs.
pub struct SyncContext {
    pub schema: Arc<CompiledSchema>,
    pub auth: Arc<Authenticator>,
    pub readers: Arc<ReaderPool>,
    /// How often an idle stream gets a keepalive.
    pub keepalive: Duration,
    /// Which streams each store commit concerns.
    pub fanout: Arc<Fanout>,
    /// How often a stream whose data did not change is told how far the
    /// store has read the WAL (an LSN-only checkpoint). A client that wrote
    /// is told as soon as the store reaches its write.
    pub idle_lsn_every: Duration,
    /// Bounds the catch-ups that read the store at once (each holds a
    /// blocking thread and a reader connection): many streams starting
    /// together queue here instead of crowding the blocking pool.
    pub store_reads: tokio::sync::Semaphore,
    /// Most ops in one `DataBatch`.
    pub batch_ops: usize,
    /// Applies `Write` calls; `None` when the schema files declare no write
    /// rules (every write is refused).
    pub writes: Option<Arc<Applier>>,
}

impl SyncContext {
    /// How local writes to a column of `schema.tables[table]` merge, as the
    /// `Schema` message tells clients.
    pub fn merge_kind(&self, table: usize, column: usize) -> &'static str {
        match (&self.writes, self.schema.tables.get(table)) {
            (Some(writes), Some(t)) => writes.merge_kind(&t.schema, &t.name, column).as_str(),
            _ => MergeKind::Lww.as_str(),
        }
    }
}

/// The `outpost.v1.Sync` service.
pub struct SyncService {
    ctx: Arc<SyncContext>,
}

impl SyncService {
    pub fn new(ctx: Arc<SyncContext>) -> Self {
        SyncService { ctx }
    }
}

fn bearer_token<T>(request: &Request<T>) -> Result<&str, Status> {
    let value = request.metadata().get("authorization").ok_or_else(|| {
        Status::unauthenticated("missing `authorization: Bearer <token>` metadata")
    })?;
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization metadata is not text"))?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            Status::unauthenticated("the authorization metadata must be `Bearer <token>`")
        })
}

#[tonic::async_trait]
impl SyncApi for SyncService {
    type SyncStream = ReceiverStream<Result<SyncFrame, Status>>;

    async fn sync(
        &self,
        request: Request<SyncRequest>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        let token = bearer_token(&request)?;
        let claims = self.ctx.auth.verify(token).map_err(|e| {
            tracing::info!(error = %e, "token refused");
            Status::unauthenticated(format!("token refused: {e}"))
        })?;
        let request = request.into_inner();
        let shapes: Vec<String> = request.shapes.iter().map(|s| s.name.clone()).collect();
        let buckets = self
            .ctx
            .schema
            .user_buckets(&shapes, &claims.0)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let tables: BTreeSet<usize> = self
            .ctx
            .schema
            .shapes
            .iter()
            .filter(|s| {
                if shapes.is_empty() {
                    s.default
                } else {
                    shapes.contains(&s.name)
                }
            })
            .map(|s| s.table)
            .collect();
        tracing::info!(
            client_id = %request.client_id,
            sub = claims.sub().unwrap_or(""),
            buckets = buckets.len(),
            "sync stream opened"
        );
        let (tx, rx) = mpsc::channel(16);
        let session = Session::new(
            self.ctx.clone(),
            SessionStart {
                buckets,
                tables: tables.into_iter().collect(),
                request,
            },
            tx,
        );
        tokio::spawn(session.run());
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn write(
        &self,
        request: Request<WriteRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        let token = bearer_token(&request)?;
        let claims = self.ctx.auth.verify(token).map_err(|e| {
            tracing::info!(error = %e, "token refused");
            Status::unauthenticated(format!("token refused: {e}"))
        })?;
        let Some(applier) = self.ctx.writes.clone() else {
            return Err(Status::failed_precondition(
                "this service accepts no writes: its schema files declare no `[tables.<table>]` \
                 write rules",
            ));
        };
        let request = request.into_inner();
        check_request(&request.client_id, &request.groups)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::debug!(
            client_id = %request.client_id,
            sub = claims.sub().unwrap_or(""),
            groups = request.groups.len(),
            "write request"
        );
        // Applied in a task of its own: a client that goes away mid-request
        // does not cut a group short (each group is atomic anyway, but the
        // connection would be lost).
        let request_client_id = request.client_id.clone();
        let applied = tokio::spawn(async move {
            applier
                .apply(&request.client_id, &claims, &request.groups)
                .await
        })
        .await
        .map_err(|e| Status::internal(format!("the write task failed: {e}")))?;
        match applied {
            Ok(results) => {
                let applied = results.iter().map(|r| r.commit_lsn).max().unwrap_or(0);
                if applied > 0 {
                    self.ctx.fanout.expect_lsn(&request_client_id, applied);
                }
                Ok(Response::new(WriteResponse { results }))
            }
            Err(e @ WriteError::InvalidRequest(_)) => Err(Status::invalid_argument(e.to_string())),
            Err(e) => {
                tracing::warn!(error = %e, "write request failed");
                Err(Status::unavailable(format!("{e}; retry the request")))
            }
        }
    }
}
