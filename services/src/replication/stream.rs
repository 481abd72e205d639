//! The logical replication stream: CopyBoth framing, XLogData and primary
//! keepalive messages in, standby status updates out.
//!
//! Invariants:
//! - [`ReplicationStream::next`] is cancellation-safe: it only awaits socket
//!   reads into the buffer kept in the stream, and removes a frame from that
//!   buffer only in the same synchronous step that returns it. Dropping the
//!   future (e.g. in `tokio::select!`) loses no bytes.
//! - The stream never answers the server on its own: keepalives that request
//!   a reply are returned to the caller, which decides what to acknowledge.
//!   The walsender closes the connection after `wal_sender_timeout` without
//!   status updates, and on a clean shutdown waits until the reported
//!   *write* position reaches what it sent; reporting the received position
//!   as `write` while keeping `flush` at the durable position satisfies both
//!   without acknowledging anything that is not durable.
//! - Message payloads are `Bytes` slices of the read buffer: holding on to a
//!   decoded value keeps its read chunk (128 KiB or the frame size) alive.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::conn::{ReplicationConn, log_notice, server_error};
use super::pgoutput::{self, PgOutput};
use super::wire::{self, Backend};
use super::{Lsn, ReplicationError};

/// Microseconds between the Unix epoch and the Postgres epoch (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// One event of the replication stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationEvent {
    /// A pgoutput message carried by XLogData.
    Message {
        /// WAL position of the data in this message.
        wal_start: Lsn,
        /// The server's current end of WAL.
        wal_end: Lsn,
        message: PgOutput,
    },
    /// Primary keepalive.
    Keepalive {
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// The server asks for a status update now, or it will disconnect.
        reply_requested: bool,
    },
}

/// A connection in CopyBoth mode after `START_REPLICATION`.
pub struct ReplicationStream {
    /// The connection, with its read buffer (which is what makes `next`
    /// cancellation-safe) and run-time parameters (kept for [`Self::stop`]).
    conn: ReplicationConn,
    /// The server sent CopyDone: no more data will come.
    server_done: bool,
}

impl std::fmt::Debug for ReplicationStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationStream")
            .field("server_done", &self.server_done)
            .finish_non_exhaustive()
    }
}

impl ReplicationStream {
    pub(super) fn new(conn: ReplicationConn) -> Self {
        ReplicationStream {
            conn,
            server_done: false,
        }
    }

    /// The next event. `None` once the server has ended the COPY
    /// (CopyDone). A server that stops streaming without CopyDone (it shuts
    /// down) or closes the connection gives a transient error.
    ///
    /// Cancellation-safe. Sends nothing to the server.
    pub async fn next(&mut self) -> Result<Option<ReplicationEvent>, ReplicationError> {
        loop {
            if self.server_done {
                return Ok(None);
            }
            let msg = self.conn.wire.read_message("streaming").await?;
            if let Some(event) = self.event_of(msg)? {
                return Ok(Some(event));
            }
        }
    }

    /// The next event when the connection has already read all of it, without
    /// waiting for the socket: `None` when [`Self::next`] would have to wait
    /// (or the stream has ended, which `next` then reports). Lets the caller
    /// hand on everything one socket read brought in as one batch.
    pub fn try_next(&mut self) -> Result<Option<ReplicationEvent>, ReplicationError> {
        loop {
            if self.server_done {
                return Ok(None);
            }
            let Some(msg) = self.conn.wire.try_parse()? else {
                return Ok(None);
            };
            if let Some(event) = self.event_of(msg)? {
                return Ok(Some(event));
            }
        }
    }

    /// What one backend message means for the stream: an event, or nothing
    /// to report (a notice, a parameter status, the end of the COPY).
    fn event_of(&mut self, msg: Backend) -> Result<Option<ReplicationEvent>, ReplicationError> {
        match msg {
            Backend::Message(Message::CopyData(body)) => {
                parse_copy_data(body.into_bytes()).map(Some)
            }
            Backend::Message(Message::CopyDone) => {
                self.server_done = true;
                Ok(None)
            }
            Backend::Message(Message::ErrorResponse(e)) => {
                Err(server_error(wire::server_error(e.fields())))
            }
            Backend::Message(Message::NoticeResponse(n)) => {
                log_notice(n.fields());
                Ok(None)
            }
            Backend::Message(Message::ParameterStatus(_)) => Ok(None),
            Backend::Message(Message::CommandComplete(_)) => Err(ReplicationError::Closed {
                during: "streaming (the server ended replication, it is shutting down)",
            }),
            other => Err(ReplicationError::Protocol(format!(
                "unexpected {} in the replication stream",
                wire::describe(&other)
            ))),
        }
    }

    /// Sends a standby status update: everything before `write` is
    /// received, before `flush` is durable (Postgres may discard it and will
    /// not send it again: it becomes the slot's `confirmed_flush_lsn`),
    /// before `apply` is applied. `reply_requested` asks the server for a
    /// keepalive in return.
    ///
    /// Not cancellation-safe: do not drop the future halfway.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<(), ReplicationError> {
        let mut body = Vec::with_capacity(34);
        body.put_u8(b'r');
        body.put_u64(write.0);
        body.put_u64(flush.0);
        body.put_u64(apply.0);
        body.put_i64(pg_now());
        body.put_u8(u8::from(reply_requested));
        frontend::CopyData::new(&body[..])?.write(self.conn.wire.wbuf());
        self.conn.wire.flush().await
    }

    /// Ends streaming (CopyDone), discards what the server still sends, and
    /// gives the connection back for further commands. Postgres streams
    /// only once per connection: to stream again, connect again.
    pub async fn stop(mut self) -> Result<ReplicationConn, ReplicationError> {
        frontend::copy_done(self.conn.wire.wbuf());
        self.conn.wire.flush().await?;
        let mut error = None;
        loop {
            match self.conn.wire.read_message("ending replication").await? {
                Backend::Message(Message::CopyData(_)) => {}
                Backend::Message(Message::CopyDone) => self.server_done = true,
                Backend::Message(Message::CommandComplete(_) | Message::ParameterStatus(_)) => {}
                Backend::Message(Message::NoticeResponse(n)) => log_notice(n.fields()),
                Backend::Message(Message::ErrorResponse(e)) => {
                    error = Some(server_error(wire::server_error(e.fields())));
                }
                Backend::Message(Message::ReadyForQuery(_)) => break,
                other => {
                    return Err(ReplicationError::Protocol(format!(
                        "unexpected {} while ending replication",
                        wire::describe(&other)
                    )));
                }
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(self.conn),
        }
    }
}

/// Parses the payload of one CopyData message of the stream.
pub(super) fn parse_copy_data(data: Bytes) -> Result<ReplicationEvent, ReplicationError> {
    let be_u64 = |at: usize| -> Option<u64> {
        let b = data.get(at..at + 8)?;
        Some(u64::from_be_bytes(b.try_into().ok()?))
    };
    match data.first() {
        // XLogData: start, end, send time (8 bytes each), then the message.
        Some(b'w') => {
            let (Some(start), Some(end), true) = (be_u64(1), be_u64(9), data.len() >= 25) else {
                return Err(ReplicationError::Protocol(format!(
                    "XLogData of {} bytes is shorter than its header",
                    data.len()
                )));
            };
            let message = pgoutput::decode(data.slice(25..)).inspect_err(|e| {
                tracing::error!(wal_start = %Lsn(start), error = %e, "undecodable pgoutput message");
            })?;
            Ok(ReplicationEvent::Message {
                wal_start: Lsn(start),
                wal_end: Lsn(end),
                message,
            })
        }
        // Primary keepalive: end of WAL, send time, reply requested.
        Some(b'k') => match (be_u64(1), data.get(17)) {
            (Some(end), Some(&reply)) => Ok(ReplicationEvent::Keepalive {
                wal_end: Lsn(end),
                reply_requested: reply != 0,
            }),
            _ => Err(ReplicationError::Protocol(format!(
                "keepalive of {} bytes is too short",
                data.len()
            ))),
        },
        Some(&tag) => Err(ReplicationError::Protocol(format!(
            "unknown replication message {:?}",
            tag as char
        ))),
        None => Err(ReplicationError::Protocol(
            "empty CopyData in the replication stream".into(),
        )),
    }
}

/// Now, in microseconds since the Postgres epoch.
fn pg_now() -> i64 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    unix - PG_EPOCH_OFFSET_MICROS
}
