//! The logical replication client: the only way Outpost talks the
//! replication protocol to Postgres.
//!
//! ```text
//!  ReplicationConn::connect ──▶ identify_system / create_slot / slot_info /
//!   (replication=database)      ensure_publication / simple_query
//!            │
//!            └─ start_replication(slot, lsn, publication) ──▶ ReplicationStream
//!                                                              next() ──▶ ReplicationEvent
//!                                                              send_status(write, flush, apply)
//! ```
//!
//! - `conn`: startup (`replication=database`) and simple queries;
//!   `auth`: trust, cleartext, md5, SCRAM-SHA-256; `commands`: slots,
//!   publications, `IDENTIFY_SYSTEM`, `START_REPLICATION`.
//! - `stream`: the CopyBoth stream: XLogData and keepalives in, standby
//!   status updates out.
//! - [`pgoutput`]: the decoder of pgoutput messages (protocol version 1).
//!
//! Invariants and choices:
//! - Every session is started with `DateStyle=ISO`, `TimeZone=UTC`,
//!   `IntervalStyle=postgres`, `extra_float_digits=3` and
//!   `client_encoding=UTF8`: the walsender formats row values with these
//!   settings, so values always arrive in one predictable text form.
//! - [`ReplicationStream::next`] is cancellation-safe and never answers the
//!   server by itself: the caller decides what is acknowledged (only what is
//!   durable, see the design notes) and when.
//! - Errors say whether retrying can help ([`ReplicationError::is_transient`]):
//!   lost connections and server shutdowns are transient; bad credentials,
//!   malformed data, missing publications and rejected commands are not.
//! - Acknowledged is not the same as never sent again: Postgres may replay
//!   transactions at or below the acknowledged flush position after it
//!   restarts (Postgres 15 writes `confirmed_flush_lsn` to disk only with
//!   other slot changes), so consumers skip commits they already stored.
//! - Postgres streams once per connection: after [`ReplicationStream::stop`]
//!   the connection runs commands, and a new connection streams again.
//! - No TLS: connections are plain TCP or Unix sockets. `sslmode=require` is
//!   refused with a clear error rather than silently sent in clear text.

mod auth;
mod commands;
mod conn;
pub mod pgoutput;
mod stream;
mod wire;

#[cfg(test)]
mod tests;

pub use conn::ReplicationConn;
pub use pgoutput::{
    Begin, Commit, DecodeError, DecodeErrorKind, Delete, Insert, LogicalMessage, Origin, PgOutput,
    Relation, RelationColumn, Truncate, Tuple, TupleValue, TypeMsg, Update, decode,
};
pub use stream::{ReplicationEvent, ReplicationStream};

pub use crate::lsn::Lsn;

/// The answer to `IDENTIFY_SYSTEM`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemInfo {
    /// The cluster's unique system identifier.
    pub systemid: String,
    pub timeline: u32,
    /// The current WAL flush position.
    pub xlogpos: Lsn,
    /// The database of this connection.
    pub dbname: Option<String>,
}

/// A slot created by [`ReplicationConn::create_slot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedSlot {
    /// The first LSN the slot streams from: everything before is in the
    /// exported snapshot, everything from it on is in the stream.
    pub consistent_point: Lsn,
    /// The exported snapshot, usable with `SET TRANSACTION SNAPSHOT` while
    /// the creating connection runs no other command.
    pub snapshot_name: String,
}

/// A row of `pg_replication_slots`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// Output plugin (None for a physical slot).
    pub plugin: Option<String>,
    /// Database of a logical slot.
    pub database: Option<String>,
    /// Some session is streaming from the slot right now.
    pub active: bool,
    /// Process streaming from the slot, when active.
    pub active_pid: Option<i32>,
    pub temporary: bool,
    /// Everything before this is acknowledged and will not be sent again.
    pub confirmed_flush_lsn: Option<Lsn>,
    /// Oldest WAL the slot keeps.
    pub restart_lsn: Option<Lsn>,
}

/// An error or fatal message sent by the server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerError {
    /// Non-localized severity (`ERROR`, `FATAL`, `PANIC`).
    pub severity: String,
    /// SQLSTATE code.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, " hint: {hint}")?;
        }
        Ok(())
    }
}

/// Errors of the replication client.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The connection settings cannot be used.
    #[error("invalid replication connection settings: {0}")]
    Config(String),
    /// No host could be reached.
    #[error("could not connect to Postgres at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// Reading from or writing to the connection failed.
    #[error("replication connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection or ended the replication stream
    /// without being asked to (e.g. it is shutting down).
    #[error("the server closed the replication connection while {during}")]
    Closed { during: &'static str },
    /// The server rejected the credentials, or the client cannot offer
    /// what the server asks for.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The server reported an error.
    #[error("Postgres error: {0}")]
    Server(Box<ServerError>),
    /// The server sent something this client does not understand.
    #[error("replication protocol error: {0}")]
    Protocol(String),
    /// A pgoutput message could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A slot or publication name that cannot be used.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// The publication does not exist and may not be created.
    #[error("publication {0:?} does not exist")]
    PublicationMissing(String),
    /// The publication exists but does not publish what is needed.
    #[error(
        "publication {publication:?} does not cover what is synced: {}; alter it (e.g. ALTER PUBLICATION {publication} ADD TABLE ...) or use another publication",
        problems.join("; ")
    )]
    PublicationIncomplete {
        publication: String,
        /// Tables (qualified names) that are not in the publication.
        missing_tables: Vec<String>,
        /// Every problem, as text (missing tables and operations).
        problems: Vec<String>,
    },
}

impl ReplicationError {
    /// Whether retrying (with a new connection) may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ReplicationError::Connect { .. }
            | ReplicationError::Io(_)
            | ReplicationError::Closed { .. } => true,
            ReplicationError::Server(e) => is_transient_sqlstate(&e.code),
            ReplicationError::Config(_)
            | ReplicationError::Auth(_)
            | ReplicationError::Protocol(_)
            | ReplicationError::Decode(_)
            | ReplicationError::InvalidName { .. }
            | ReplicationError::PublicationMissing(_)
            | ReplicationError::PublicationIncomplete { .. } => false,
        }
    }

    /// The SQLSTATE of a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ReplicationError::Server(e) => Some(&e.code),
            _ => None,
        }
    }
}

/// Server errors that a later attempt may not get: connection problems,
/// shutdowns, resource exhaustion, a slot still held by a dying session,
/// serialization failures.
fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "55006" | "40001" | "40P01" | "58000" | "58030"
        )
}
