//! The replica writer: a dedicated thread that owns the [`Replica`] and applies
//! the stream's messages in order, so SQLite work never blocks the async
//! runtime and network reads overlap with disk writes.
//!
//! Invariants:
//! - commands are applied in the order the stream delivered them;
//! - after a failed command the pending transaction is rolled back at once and
//!   the rest of the checkpoint is skipped; the error is answered to the
//!   `Checkpoint` (or ignored by the `Restart`) that follows;
//! - when every [`Writer`] handle is dropped (the sync future was dropped), the
//!   thread drains its queue, drops the replica (rolling back anything pending)
//!   and exits. Nothing half-applied is ever committed;
//! - the outbox commands (read groups, record answers, count the backlog) run
//!   in the same order as everything else; answers that arrive during a
//!   checkpoint's data travel with its `Checkpoint` command and commit with it.

use crate::ClientError;
use crate::replica::{CheckpointOutcome, PreparedBatch, Replica, UploadLimits, WriteOutcome};
use outpost_proto::v1::sync_response::Message;
use outpost_proto::v1::{
    BucketCursor, BucketReset, Checkpoint, DataBatch, GroupResult, OpGroup, Schema, SyncResponse,
};
use prost::Message as _;
use prost::bytes::Bytes;
use std::path::PathBuf;
use tokio::sync::{mpsc, oneshot};

/// Messages queued between the network and the writer thread.
const QUEUE: usize = 32;

/// What one `Write` request carries at most (a single group larger than this
/// still goes alone). The service takes at most 1000 groups and 10 000 ops
/// per request.
const LIMITS: UploadLimits = UploadLimits {
    groups: 100,
    ops: 10_000,
    bytes: 8 * 1024 * 1024,
};

type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

/// What the session needs to open a stream.
#[derive(Debug)]
pub(crate) struct RequestState {
    pub(crate) client_id: String,
    pub(crate) epoch: String,
    pub(crate) cursors: Vec<BucketCursor>,
}

enum Command {
    Schema(Schema),
    Data(PreparedBatch),
    Reset(BucketReset),
    /// A checkpoint, with the answers to uploaded groups to record with it.
    Checkpoint(
        Checkpoint,
        Vec<GroupResult>,
        Reply<(CheckpointOutcome, Vec<WriteOutcome>)>,
    ),
    /// Rolls back anything pending and answers the committed cursors.
    Restart(oneshot::Sender<Result<RequestState, ClientError>>),
    /// Reads the oldest op groups of the outbox (only the oldest one if set).
    Outbox(bool, Reply<Vec<OpGroup>>),
    /// Records the service's answers to uploaded groups.
    WriteResults(Vec<GroupResult>, Reply<Vec<WriteOutcome>>),
    /// Counts the groups in the outbox and those waiting for a checkpoint.
    Backlog(Reply<(u64, u64)>),
    /// Closes the replica and answers once the file is closed.
    Close(oneshot::Sender<()>),
    /// A data batch as it arrived (an encoded `SyncResponse`): the decode
    /// stage turns it into `Data`, or `Undecodable`.
    Encoded(Bytes),
    /// A data batch that could not be decoded: fails the checkpoint.
    Undecodable(ClientError),
}

/// A handle on the writer thread.
pub(crate) struct Writer {
    tx: mpsc::Sender<Command>,
}

fn gone() -> ClientError {
    ClientError::Writer("the replica thread exited".into())
}

impl Writer {
    /// Opens the replica on a new thread.
    pub(crate) async fn start(path: PathBuf) -> Result<Self, ClientError> {
        let (tx, decode_rx) = mpsc::channel(QUEUE);
        let (decoded_tx, rx) = mpsc::channel(QUEUE);
        let (spent_tx, spent_rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("outpost-decode".into())
            .spawn(move || decode_stage(decode_rx, decoded_tx, spent_rx))
            .map_err(|e| ClientError::Writer(format!("cannot start the decode thread: {e}")))?;
        let (opened_tx, opened_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("outpost-replica".into())
            .spawn(move || match Replica::open(&path) {
                Ok(replica) => {
                    let _ = opened_tx.send(Ok(()));
                    run(replica, rx, spent_tx);
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                }
            })
            .map_err(|e| ClientError::Writer(format!("cannot start the replica thread: {e}")))?;
        opened_rx.await.map_err(|_| gone())??;
        Ok(Writer { tx })
    }

    async fn send(&self, command: Command) -> Result<(), ClientError> {
        self.tx.send(command).await.map_err(|_| gone())
    }

    pub(crate) async fn schema(&self, schema: Schema) -> Result<(), ClientError> {
        self.send(Command::Schema(schema)).await
    }

    /// Queues a batch, computing its keys and row hashes on the calling
    /// thread (so the replica thread only writes).
    pub(crate) async fn data(&self, batch: DataBatch) -> Result<(), ClientError> {
        self.send(Command::Data(PreparedBatch::new(batch))).await
    }

    /// Queues a data batch as it arrived (an encoded `SyncResponse`); it is
    /// decoded and prepared on the decode thread, in order with everything
    /// else.
    pub(crate) async fn data_encoded(&self, encoded: Bytes) -> Result<(), ClientError> {
        self.send(Command::Encoded(encoded)).await
    }

    pub(crate) async fn reset(&self, reset: BucketReset) -> Result<(), ClientError> {
        self.send(Command::Reset(reset)).await
    }

    /// Verifies and commits (or rolls back) everything sent since the last
    /// checkpoint, and records `answers` with it.
    pub(crate) async fn checkpoint(
        &self,
        checkpoint: Checkpoint,
        answers: Vec<GroupResult>,
    ) -> Result<(CheckpointOutcome, Vec<WriteOutcome>), ClientError> {
        self.ask(|reply| Command::Checkpoint(checkpoint, answers, reply))
            .await
    }

    /// Discards anything pending; returns what to ask the service for.
    pub(crate) async fn restart(&self) -> Result<RequestState, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Restart(reply)).await?;
        answer.await.map_err(|_| gone())?
    }

    async fn ask<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.send(command(reply)).await?;
        answer.await.map_err(|_| gone())?
    }

    /// The oldest op groups waiting in the outbox, for one `Write` request
    /// (only the oldest group when `one`).
    pub(crate) async fn outbox(&self, one: bool) -> Result<Vec<OpGroup>, ClientError> {
        self.ask(|reply| Command::Outbox(one, reply)).await
    }

    /// Records the answers to uploaded groups.
    pub(crate) async fn write_results(
        &self,
        results: Vec<GroupResult>,
    ) -> Result<Vec<WriteOutcome>, ClientError> {
        self.ask(|reply| Command::WriteResults(results, reply))
            .await
    }

    /// (groups in the outbox, groups waiting for a checkpoint).
    pub(crate) async fn backlog(&self) -> Result<(u64, u64), ClientError> {
        self.ask(Command::Backlog).await
    }

    /// Closes the replica file and waits until it is closed.
    pub(crate) async fn close(self) {
        let (reply, answer) = oneshot::channel();
        if self.send(Command::Close(reply)).await.is_ok() {
            let _ = answer.await;
        }
    }
}

/// Decodes and prepares data batches that arrived encoded, passing every
/// command on in order: decoding a large batch costs about as much as
/// writing it, so the two overlap on separate threads.
///
/// Applied batches come back through `spent` to be freed here: their memory
/// was allocated on this thread, and freeing it on the replica thread costs
/// that thread a tenth of its time.
fn decode_stage(
    mut rx: mpsc::Receiver<Command>,
    tx: mpsc::Sender<Command>,
    mut spent: mpsc::UnboundedReceiver<PreparedBatch>,
) {
    futures::executor::block_on(async move {
        loop {
            tokio::select! {
                biased;
                Some(batch) = spent.recv() => drop(batch),
                command = rx.recv() => {
                    let Some(command) = command else { return };
                    if tx.send(decode(command)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
}

/// A command as the replica thread takes it: an encoded batch decoded and
/// prepared, anything else as it is.
fn decode(command: Command) -> Command {
    match command {
        Command::Encoded(bytes) => match SyncResponse::decode(bytes.as_ref()) {
            Ok(SyncResponse {
                message: Some(Message::Data(batch)),
            }) => Command::Data(PreparedBatch::new(batch)),
            Ok(_) => Command::Undecodable(ClientError::Protocol(
                "a data batch from the service holds something else".into(),
            )),
            Err(e) => Command::Undecodable(ClientError::Protocol(format!(
                "a data batch from the service is damaged: {e}"
            ))),
        },
        other => other,
    }
}

fn run(
    mut replica: Replica,
    mut rx: mpsc::Receiver<Command>,
    spent: mpsc::UnboundedSender<PreparedBatch>,
) {
    // The first error since the last checkpoint; later data is skipped.
    let mut failed: Option<ClientError> = None;
    while let Some(command) = rx.blocking_recv() {
        let applied = match command {
            Command::Schema(schema) if failed.is_none() => replica.apply_schema(&schema),
            Command::Data(batch) if failed.is_none() => {
                let applied = replica.apply_data(&batch).map(|_| ());
                // Freed on the thread that allocated it (or here, when that
                // thread is gone).
                let _ = spent.send(batch);
                applied
            }
            Command::Reset(reset) if failed.is_none() => replica.apply_reset(&reset),
            Command::Schema(_) | Command::Data(_) | Command::Reset(_) => Ok(()),
            // The first error since the checkpoint is the one reported.
            Command::Undecodable(e) if failed.is_none() => Err(e),
            Command::Undecodable(_) => Ok(()),
            // Decoded by the decode stage before it reaches this thread.
            Command::Encoded(_) => Err(ClientError::Writer(
                "an encoded batch skipped the decode stage".into(),
            )),
            Command::Checkpoint(checkpoint, answers, reply) => {
                let outcome = match failed.take() {
                    Some(e) => Err(e),
                    None => replica
                        .apply_checkpoint_with(&checkpoint, &answers)
                        .inspect_err(|_| {
                            rollback(&mut replica);
                        }),
                };
                let _ = reply.send(outcome);
                Ok(())
            }
            Command::Restart(reply) => {
                failed = None;
                let state = replica.rollback().and_then(|()| {
                    let (epoch, cursors) = replica.request_state()?;
                    Ok(RequestState {
                        client_id: replica.client_id().to_string(),
                        epoch,
                        cursors,
                    })
                });
                let _ = reply.send(state);
                Ok(())
            }
            Command::Outbox(one, reply) => {
                let limits = if one {
                    UploadLimits {
                        groups: 1,
                        ..LIMITS
                    }
                } else {
                    LIMITS
                };
                let _ = reply.send(replica.poll_outbox(limits));
                Ok(())
            }
            Command::WriteResults(results, reply) => {
                let _ = reply.send(replica.record_results(&results));
                Ok(())
            }
            Command::Backlog(reply) => {
                let _ = reply.send(replica.write_backlog());
                Ok(())
            }
            Command::Close(reply) => {
                drop(replica);
                let _ = reply.send(());
                return;
            }
        };
        if let Err(e) = applied {
            rollback(&mut replica);
            failed = Some(e);
        }
    }
    // Every handle is gone: `replica` drops here, rolling back what is pending.
}

fn rollback(replica: &mut Replica) {
    if let Err(e) = replica.rollback() {
        tracing::error!(error = %e, "could not roll back the replica transaction");
    }
}
