//! The sync session loop: connect, stream, apply, reconnect.
//!
//! ```text
//! loop {
//!     writer.restart()          roll back anything pending, read cursors + epoch
//!     connect + Sync(request)   Bearer token, shapes, cursors, epoch, client id
//!     select {
//!       stream message:         Schema / DataBatch / BucketReset → writer (queued)
//!                               Checkpoint → writer verifies and commits; wait
//!       outbox poll / answer:   Write(oldest groups) on the same channel; answers
//!                               are recorded between checkpoints (see [`upload`])
//!     }
//!     on error: definite → return it; transient → backoff, reconnect
//! }
//! ```
//!
//! Error classes: `Unauthenticated`, `PermissionDenied`, `InvalidArgument`,
//! `NotFound` and `Unimplemented` are definite (retrying cannot help) and end
//! the loop with a [`ClientError`] that says what to do. Connection failures,
//! `Unavailable` and every other status, a closed stream, data the replica
//! cannot apply and checksum mismatches are transient: the loop waits with
//! exponential backoff and reconnects from the committed cursors. A local
//! SQLite failure is definite.
//!
//! A `Write` call that fails does not end the session: its groups stay in the
//! outbox and go again, with the same seqs, after a delay of their own
//! (except a refused token, which ends the sync; with `once`, a service that
//! refuses writes as a whole ends it too).
//!
//! Cancellation: dropping the future at any await point is safe: the writer
//! thread rolls back whatever was pending (see [`writer`]), and groups whose
//! answer was not recorded are sent again by the next run.

mod backoff;
mod stream;
mod upload;
mod writer;

use crate::replica::{CheckpointOutcome, CheckpointState};
use crate::{ClientError, WriteStatus, format_lsn};
use backoff::Backoff;
use outpost_proto::v1::sync_client::SyncClient;
use outpost_proto::v1::sync_response::Message;
use outpost_proto::v1::{GroupResult, ShapeRequest, SyncRequest};
use std::path::PathBuf;
use std::time::Duration;
use stream::Incoming;
use tokio::sync::mpsc::UnboundedSender;
use tonic::Code;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Endpoint;
use writer::Writer;

/// HTTP/2 receive windows: how much the service may send ahead of what the
/// client has read.
const STREAM_WINDOW_BYTES: u32 = 8 << 20;
const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;

/// The largest message accepted from the service.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// What to sync, from where, into which file.
#[derive(Clone)]
pub struct SyncOptions {
    /// The service address, e.g. `http://localhost:4000`.
    pub server: String,
    /// The user's token, sent as `authorization: Bearer <token>`.
    pub token: String,
    /// The replica file (created if missing).
    pub db: PathBuf,
    /// Shapes to sync by name; empty for the schema's default set. A shape
    /// with client parameters is written `name:param=value,param=value`.
    pub shapes: Vec<String>,
    /// Return once a checkpoint is applied and every local write has been
    /// answered and, if applied, brought back by a checkpoint, instead of
    /// syncing forever.
    pub once: bool,
    /// The first delay before reconnecting.
    pub backoff_initial: Duration,
    /// The longest delay between reconnection attempts.
    pub backoff_max: Duration,
    /// How long to wait for a TCP connection to the service.
    pub connect_timeout: Duration,
    /// How often a connected session looks for new local writes to upload.
    pub outbox_poll_interval: Duration,
}

impl SyncOptions {
    /// Options with the default backoff (200 ms doubling up to 10 s), all of
    /// the schema's default shapes, syncing forever.
    pub fn new(
        server: impl Into<String>,
        token: impl Into<String>,
        db: impl Into<PathBuf>,
    ) -> Self {
        SyncOptions {
            server: server.into(),
            token: token.into(),
            db: db.into(),
            shapes: Vec::new(),
            once: false,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            outbox_poll_interval: Duration::from_millis(200),
        }
    }
}

impl std::fmt::Debug for SyncOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncOptions")
            .field("server", &self.server)
            .field("token", &"<redacted>")
            .field("db", &self.db)
            .field("shapes", &self.shapes)
            .field("once", &self.once)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("connect_timeout", &self.connect_timeout)
            .field("outbox_poll_interval", &self.outbox_poll_interval)
            .finish()
    }
}

/// What happened during a sync, for progress displays and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncEvent {
    /// A stream to the service is open.
    Connected,
    /// A data batch arrived; `rows_pending` rows wait for the next checkpoint.
    Progress {
        /// Row operations received since the last applied checkpoint.
        rows_pending: u64,
    },
    /// A checkpoint was verified and committed.
    Checkpoint {
        /// The checkpoint's op id.
        op_id: u64,
        /// The Postgres LSN the replica now corresponds to.
        lsn: u64,
        /// Row operations the checkpoint applied.
        rows_applied: u64,
    },
    /// The service told the client to drop a bucket.
    BucketReset {
        /// The bucket.
        bucket: String,
        /// True when the bucket left the user's set.
        removed: bool,
        /// The service's reason.
        reason: String,
    },
    /// A bucket's checksum did not match; it is dropped and downloaded again.
    ChecksumMismatch {
        /// The bucket.
        bucket: String,
    },
    /// The stream ended; the client reconnects after a backoff delay.
    Disconnected {
        /// Why the stream ended.
        error: String,
    },
    /// The service answered an uploaded op group.
    WriteResult {
        /// The group's sequence number.
        seq: u64,
        /// Applied, duplicate or rejected.
        status: WriteStatus,
        /// For a rejection: `reason_code: message`.
        reason: Option<String>,
    },
    /// A `Write` call failed; its groups are sent again after a delay.
    WriteFailed {
        /// Why the call failed.
        error: String,
    },
}

/// The result of [`sync`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncSummary {
    /// Checkpoints applied.
    pub checkpoints: u64,
    /// Row operations received over the network (applied or not).
    pub rows_received: u64,
    /// The last checkpoint applied.
    pub last: Option<CheckpointState>,
    /// Local op groups the service applied (or had applied before).
    pub groups_uploaded: u64,
    /// Local op groups the service refused.
    pub groups_rejected: u64,
}

/// Syncs the replica and uploads its local writes; with `once`, returns when
/// the replica has caught up both ways (see [`SyncOptions::once`]), otherwise
/// runs until a definite error.
pub async fn sync(opts: SyncOptions) -> Result<SyncSummary, ClientError> {
    // The receiver is dropped at once, so events are discarded, not queued.
    let (events, _) = tokio::sync::mpsc::unbounded_channel();
    sync_with_events(opts, events).await
}

/// Like [`sync`], reporting what happens on `events` (a closed receiver is fine).
pub async fn sync_with_events(
    opts: SyncOptions,
    events: UnboundedSender<SyncEvent>,
) -> Result<SyncSummary, ClientError> {
    let endpoint = endpoint(&opts)?;
    let auth = auth_header(&opts.token)?;
    let writer = Writer::start(opts.db.clone()).await?;
    let mut run = Run {
        opts: &opts,
        endpoint,
        auth,
        writer: &writer,
        events: &events,
        summary: SyncSummary::default(),
        backoff: Backoff::new(opts.backoff_initial, opts.backoff_max),
        upload_backoff: Backoff::new(opts.backoff_initial, opts.backoff_max),
        upload_retry_at: None,
        upload_single: false,
        in_flight: Vec::new(),
        answers: Vec::new(),
    };
    let result = run.run().await;
    let summary = run.summary;
    writer.close().await;
    result.map(|()| summary)
}

/// How a session ended.
enum Stop {
    /// Retrying cannot help.
    Fatal(ClientError),
    /// Reconnect after a backoff delay.
    Retry(String),
}

impl From<ClientError> for Stop {
    fn from(e: ClientError) -> Self {
        if e.is_transient() {
            Stop::Retry(e.to_string())
        } else {
            Stop::Fatal(e)
        }
    }
}

fn classify(status: tonic::Status) -> Stop {
    let message = status.message().to_string();
    match status.code() {
        Code::Unauthenticated => Stop::Fatal(ClientError::Unauthenticated(message)),
        Code::PermissionDenied => Stop::Fatal(ClientError::PermissionDenied(message)),
        Code::InvalidArgument | Code::NotFound | Code::ResourceExhausted => {
            Stop::Fatal(ClientError::InvalidRequest(message))
        }
        Code::Unimplemented => Stop::Fatal(ClientError::Unimplemented(message)),
        code => Stop::Retry(format!("{code:?}: {message}")),
    }
}

/// A shape as the options name it: `name`, or `name:param=value,param=value`
/// to narrow it with the shape's declared parameters.
fn shape_request(spec: &str) -> ShapeRequest {
    let (name, params) = spec.split_once(':').unwrap_or((spec, ""));
    ShapeRequest {
        name: name.to_string(),
        params: params
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.to_string()))
            .collect(),
    }
}

fn endpoint(opts: &SyncOptions) -> Result<Endpoint, ClientError> {
    let invalid = |reason: String| ClientError::InvalidServer {
        url: opts.server.clone(),
        reason,
    };
    let endpoint =
        Endpoint::from_shared(opts.server.clone()).map_err(|e| invalid(e.to_string()))?;
    match endpoint.uri().scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(invalid(
                "this client build has no TLS support; use http:// behind a TLS-terminating proxy"
                    .into(),
            ));
        }
        _ => return Err(invalid("the address needs an http:// scheme".into())),
    }
    if endpoint.uri().host().is_none_or(str::is_empty) {
        return Err(invalid("the address has no host".into()));
    }
    Ok(endpoint
        .connect_timeout(opts.connect_timeout)
        .tcp_nodelay(true)
        // HTTP/2's default 64 KiB windows make a large download wait for a
        // window update every 64 KiB; these let a whole data batch travel.
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true))
}

fn auth_header(token: &str) -> Result<AsciiMetadataValue, ClientError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(ClientError::InvalidToken(
            "the token is empty; pass --token or set OUTPOST_TOKEN".into(),
        ));
    }
    format!("Bearer {token}").parse().map_err(|_| {
        ClientError::InvalidToken("it contains non-ASCII or control characters".into())
    })
}

/// The state of one call to [`sync_with_events`].
struct Run<'a> {
    opts: &'a SyncOptions,
    /// Validated once; each session connects a fresh channel from it.
    endpoint: Endpoint,
    /// `Bearer <token>`, validated once.
    auth: AsciiMetadataValue,
    /// The thread that owns the replica.
    writer: &'a Writer,
    events: &'a UnboundedSender<SyncEvent>,
    /// Accumulated over every session of this run.
    summary: SyncSummary,
    /// Reset by each applied checkpoint, so only consecutive failures back off.
    backoff: Backoff,
    /// Delays between failed `Write` calls; reset by an answered one.
    upload_backoff: Backoff,
    /// No upload before this instant (after a failed `Write`).
    upload_retry_at: Option<tokio::time::Instant>,
    /// Send one group per `Write` call (to isolate a group the service
    /// refuses as a request).
    upload_single: bool,
    /// The seqs of the last `Write` call started.
    in_flight: Vec<u64>,
    /// Answers received while a checkpoint's data was being applied; recorded
    /// once it is committed (or rolled back).
    answers: Vec<GroupResult>,
}

/// Where one stream is between checkpoints.
#[derive(Debug, Default)]
struct StreamState {
    /// Row operations received since the last applied checkpoint.
    rows_pending: u64,
    /// Data or resets were applied since the last checkpoint: the replica
    /// holds an open transaction.
    in_checkpoint: bool,
    /// A checkpoint was applied on this stream.
    checkpointed: bool,
}

impl Run<'_> {
    fn emit(&self, event: SyncEvent) {
        let _ = self.events.send(event);
    }

    async fn run(&mut self) -> Result<(), ClientError> {
        loop {
            match self.session().await {
                Ok(()) => return Ok(()),
                Err(Stop::Fatal(e)) => return Err(e),
                Err(Stop::Retry(error)) => {
                    let delay = self.backoff.next_delay();
                    tracing::warn!(
                        server = %self.opts.server,
                        %error,
                        retry_in_ms = delay.as_millis() as u64,
                        "sync stream ended; reconnecting"
                    );
                    self.emit(SyncEvent::Disconnected { error });
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// One connection: returns `Ok` only when `once` is satisfied.
    async fn session(&mut self) -> Result<(), Stop> {
        let state = self.writer.restart().await?;
        // Answers held back by a session that ended inside a checkpoint.
        self.record_answers().await?;
        self.upload_single = false;
        let channel = self.endpoint.connect().await.map_err(|e| {
            Stop::Retry(format!(
                "cannot connect to {}: {}",
                self.opts.server,
                error_chain(&e)
            ))
        })?;
        let client = SyncClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let client_id = state.client_id.clone();
        let mut request = tonic::Request::new(SyncRequest {
            shapes: self
                .opts
                .shapes
                .iter()
                .map(|spec| shape_request(spec.as_str()))
                .collect(),
            cursors: state.cursors,
            epoch: state.epoch,
            client_id: state.client_id,
        });
        request
            .metadata_mut()
            .insert("authorization", self.auth.clone());
        let mut stream = stream::open(channel, request, MAX_MESSAGE_BYTES)
            .await
            .map_err(classify)?;
        tracing::info!(server = %self.opts.server, "sync stream open");
        self.emit(SyncEvent::Connected);

        let mut stream_state = StreamState::default();
        let mut upload: Option<upload::InFlight> = None;
        let mut poll = tokio::time::interval(self.opts.outbox_poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = stream.message() => {
                    let Some(response) = message.map_err(classify)? else {
                        return Err(Stop::Retry("the service closed the stream".into()));
                    };
                    if self.apply(response, &mut stream_state).await? {
                        self.record_answers().await?;
                        if self.caught_up(&stream_state, upload.is_some()).await? {
                            return Ok(());
                        }
                    }
                }
                answer = upload::wait(&mut upload) => {
                    upload = None;
                    let answered = self.answered(answer)?;
                    if !stream_state.in_checkpoint {
                        self.record_answers().await?;
                    }
                    if answered && self.answers.is_empty() {
                        upload = self.start_upload(&client, &client_id).await?;
                    }
                    if self.caught_up(&stream_state, upload.is_some()).await? {
                        return Ok(());
                    }
                }
                _ = poll.tick(), if upload.is_none() && self.answers.is_empty() => {
                    upload = self.start_upload(&client, &client_id).await?;
                }
            }
        }
    }

    /// Counts a data batch of `ops` ops that was handed to the writer.
    fn data_queued(
        &mut self,
        ops: u64,
        queued: Result<(), ClientError>,
        stream_state: &mut StreamState,
    ) -> Result<(), Stop> {
        queued?;
        self.summary.rows_received += ops;
        stream_state.rows_pending += ops;
        stream_state.in_checkpoint = true;
        self.emit(SyncEvent::Progress {
            rows_pending: stream_state.rows_pending,
        });
        Ok(())
    }

    /// Applies one stream message; returns whether it completed a checkpoint.
    async fn apply(
        &mut self,
        incoming: Incoming,
        stream_state: &mut StreamState,
    ) -> Result<bool, Stop> {
        let response = match incoming {
            Incoming::Data { encoded, ops } => {
                let queued = self.writer.data_encoded(encoded).await;
                self.data_queued(ops, queued, stream_state)?;
                return Ok(false);
            }
            Incoming::Message(response) => response,
        };
        let Some(message) = response.message else {
            tracing::debug!("ignoring an empty or unknown message from the service");
            return Ok(false);
        };
        match message {
            Message::Schema(schema) => {
                tracing::debug!(version = %schema.version, tables = schema.tables.len(), "schema");
                self.writer.schema(schema).await?;
            }
            Message::Data(batch) => {
                let ops = batch.ops.len() as u64;
                let queued = self.writer.data(batch).await;
                self.data_queued(ops, queued, stream_state)?;
            }
            Message::Reset(reset) => {
                tracing::info!(bucket = %reset.bucket, removed = reset.removed, reason = %reset.reason, "bucket reset");
                self.emit(SyncEvent::BucketReset {
                    bucket: reset.bucket.clone(),
                    removed: reset.removed,
                    reason: reset.reason.clone(),
                });
                stream_state.in_checkpoint = true;
                self.writer.reset(reset).await?;
            }
            Message::Checkpoint(checkpoint) => {
                // Answers that came during the checkpoint's data are recorded
                // in its transaction; kept here until it commits.
                let (outcome, recorded) = self
                    .writer
                    .checkpoint(checkpoint, self.answers.clone())
                    .await?;
                self.answers.clear();
                self.report(recorded);
                return self.checkpointed(outcome, stream_state);
            }
            Message::Keepalive(_) => {}
        }
        Ok(false)
    }

    /// Reports a checkpoint's outcome; `Ok(true)` when it was applied.
    fn checkpointed(
        &mut self,
        outcome: CheckpointOutcome,
        stream_state: &mut StreamState,
    ) -> Result<bool, Stop> {
        match outcome {
            CheckpointOutcome::Applied { state, rows } => {
                tracing::debug!(op_id = state.op_id, lsn = %format_lsn(state.lsn), rows, "checkpoint applied");
                self.summary.checkpoints += 1;
                self.backoff.reset();
                stream_state.rows_pending = 0;
                stream_state.in_checkpoint = false;
                stream_state.checkpointed = true;
                self.emit(SyncEvent::Checkpoint {
                    op_id: state.op_id,
                    lsn: state.lsn,
                    rows_applied: rows,
                });
                self.summary.last = Some(state);
                Ok(true)
            }
            CheckpointOutcome::Mismatch(mismatches) => {
                let mut names = Vec::new();
                for m in mismatches {
                    tracing::warn!(
                        bucket = %m.bucket,
                        expected_checksum = m.expected_checksum,
                        expected_count = m.expected_count,
                        checksum = m.checksum,
                        count = m.count,
                        "bucket checksum mismatch; dropping the bucket to download it again"
                    );
                    self.emit(SyncEvent::ChecksumMismatch {
                        bucket: m.bucket.clone(),
                    });
                    names.push(m.bucket);
                }
                Err(Stop::Retry(format!(
                    "checksum mismatch in {}",
                    names.join(", ")
                )))
            }
        }
    }
}

/// An error with its sources, which is where transport errors say what failed.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
