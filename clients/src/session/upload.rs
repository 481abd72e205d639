//! Uploading local writes within a session.
//!
//! ```text
//! poll tick ──▶ writer.outbox() ──▶ Write(client_id, groups) ──▶ answers ──▶ recorded at once, or
//!  (no call in flight,               same channel, same            with the checkpoint whose
//!   no answers held)                 Bearer token                  data is being applied
//! ```
//!
//! Invariants:
//! - at most one `Write` call is in flight, and the next one is only read
//!   from the outbox after the answers to the previous one are recorded, so
//!   a group is never sent while its answer waits to be recorded;
//! - a group leaves the outbox only when its answer is recorded; a failed
//!   call leaves every group in place, to be sent again with the same seq;
//! - an answer that arrives while a checkpoint's data is being applied is
//!   recorded in that checkpoint's transaction (so a group the checkpoint
//!   already contains is never shown twice, e.g. a counter delta), and kept
//!   in memory until the commit, so a checkpoint that fails or is cut off
//!   cannot lose it; other answers are recorded at once;
//! - the outbox never stalls: when the service refuses a request as
//!   malformed, groups go one at a time, and a group refused on its own is
//!   recorded as rejected (`invalid_request`) like any refused group.

use super::{Run, Stop, StreamState, SyncEvent};
use crate::replica::WriteOutcome;
use crate::{ClientError, WriteStatus};
use outpost_proto::v1::sync_client::SyncClient;
use outpost_proto::v1::{GroupResult, WriteRequest, WriteResponse, group_result};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// How long one `Write` call may take before it is abandoned (and retried).
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// A `Write` call in flight.
pub(super) type InFlight = Pin<Box<dyn Future<Output = Result<WriteResponse, Status>> + Send>>;

/// Waits for the call in flight; never completes when there is none.
pub(super) async fn wait(upload: &mut Option<InFlight>) -> Result<WriteResponse, Status> {
    match upload {
        Some(call) => call.await,
        None => std::future::pending().await,
    }
}

/// Whether a failed `Write` call says the service takes no writes from this
/// client at all (as opposed to a failure of the moment).
fn refused(code: Code) -> bool {
    matches!(
        code,
        Code::Unimplemented | Code::NotFound | Code::PermissionDenied | Code::FailedPrecondition
    )
}

/// Whether a failed `Write` call says this request can never be accepted
/// (too many ops, a message too large, a value out of range).
fn malformed(code: Code) -> bool {
    matches!(code, Code::InvalidArgument | Code::OutOfRange)
}

/// The reason code recorded for a group the service refused as a request.
const INVALID_REQUEST: &str = "invalid_request";

impl Run<'_> {
    /// Starts a `Write` call with the oldest groups of the outbox, unless it
    /// is empty or a failed call's delay has not passed.
    pub(super) async fn start_upload(
        &mut self,
        client: &SyncClient<Channel>,
        client_id: &str,
    ) -> Result<Option<InFlight>, Stop> {
        if self
            .upload_retry_at
            .is_some_and(|at| tokio::time::Instant::now() < at)
        {
            return Ok(None);
        }
        let groups = self.writer.outbox(self.upload_single).await?;
        let (Some(first), Some(last)) = (groups.first(), groups.last()) else {
            return Ok(None);
        };
        tracing::debug!(
            groups = groups.len(),
            first_seq = first.seq,
            last_seq = last.seq,
            "uploading local writes"
        );
        self.in_flight = groups.iter().map(|g| g.seq).collect();
        let mut request = tonic::Request::new(WriteRequest {
            client_id: client_id.to_string(),
            groups,
        });
        request
            .metadata_mut()
            .insert("authorization", self.auth.clone());
        request.set_timeout(WRITE_TIMEOUT);
        let mut client = client.clone();
        Ok(Some(Box::pin(async move {
            client.write(request).await.map(tonic::Response::into_inner)
        })))
    }

    /// Takes in the outcome of a `Write` call; returns whether the service
    /// answered any group.
    pub(super) fn answered(&mut self, answer: Result<WriteResponse, Status>) -> Result<bool, Stop> {
        match answer {
            Ok(response) => {
                self.upload_backoff.reset();
                self.upload_retry_at = None;
                let answered = !response.results.is_empty();
                if !answered {
                    tracing::warn!("the service answered a Write call without results");
                }
                self.answers.extend(response.results);
                Ok(answered)
            }
            Err(status) => {
                let code = status.code();
                let message = status.message().to_string();
                if code == Code::Unauthenticated {
                    return Err(Stop::Fatal(ClientError::Unauthenticated(message)));
                }
                let error = format!("{code:?}: {message}");
                if self.opts.once && refused(code) {
                    return Err(Stop::Fatal(ClientError::WritesRefused(error)));
                }
                if malformed(code) {
                    self.emit(SyncEvent::WriteFailed {
                        error: error.clone(),
                    });
                    if let [seq] = self.in_flight[..] {
                        tracing::warn!(seq, %error, "the service refused a local write group as a request; recording it as rejected");
                        self.upload_single = false;
                        self.answers.push(GroupResult {
                            seq,
                            status: group_result::Status::Rejected as i32,
                            commit_lsn: 0,
                            reason_code: INVALID_REQUEST.into(),
                            message: message.clone(),
                            op_index: 0,
                        });
                        return Ok(true);
                    }
                    if !self.upload_single {
                        tracing::warn!(%error, "the service refused a batch of local writes; sending them one group at a time");
                        self.upload_single = true;
                        return Ok(true);
                    }
                }
                let delay = self.upload_backoff.next_delay();
                self.upload_retry_at = Some(tokio::time::Instant::now() + delay);
                tracing::warn!(
                    %error,
                    retry_in_ms = delay.as_millis() as u64,
                    "uploading local writes failed; they stay in the outbox"
                );
                self.emit(SyncEvent::WriteFailed { error });
                Ok(false)
            }
        }
    }

    /// Records the answers held so far.
    pub(super) async fn record_answers(&mut self) -> Result<(), Stop> {
        if self.answers.is_empty() {
            return Ok(());
        }
        let recorded = self.writer.write_results(self.answers.clone()).await?;
        self.answers.clear();
        self.report(recorded);
        Ok(())
    }

    /// Counts and reports recorded answers.
    pub(super) fn report(&mut self, recorded: Vec<WriteOutcome>) {
        for outcome in recorded {
            match outcome.status {
                WriteStatus::Rejected => {
                    self.summary.groups_rejected += 1;
                    tracing::warn!(
                        seq = outcome.seq,
                        reason = outcome.reason.as_deref().unwrap_or(""),
                        "the service rejected a local write; the rows are back to the server's values"
                    );
                }
                _ => {
                    self.summary.groups_uploaded += 1;
                    tracing::debug!(seq = outcome.seq, status = ?outcome.status, "local write applied");
                }
            }
            self.emit(SyncEvent::WriteResult {
                seq: outcome.seq,
                status: outcome.status,
                reason: outcome.reason,
            });
        }
    }

    /// With `once`: whether the replica holds a checkpoint of this stream and
    /// every local write has been answered and, if applied, checkpointed.
    pub(super) async fn caught_up(
        &self,
        stream_state: &StreamState,
        uploading: bool,
    ) -> Result<bool, Stop> {
        if !self.opts.once
            || !stream_state.checkpointed
            || stream_state.in_checkpoint
            || uploading
            || !self.answers.is_empty()
        {
            return Ok(false);
        }
        let (outbox, pending) = self.writer.backlog().await?;
        Ok(outbox == 0 && pending == 0)
    }
}
