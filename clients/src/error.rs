//! The errors of the client library.
//!
//! Each message says what went wrong and what to do about it. The session loop
//! sorts errors into two classes: *definite* errors that retrying cannot fix
//! (a refused token, a bad server address, a broken replica file) end
//! [`crate::sync`]; *transient* errors (the service is unreachable, the stream
//! broke, the service sent something the replica could not apply, another
//! connection held the replica's write lock too long) are retried
//! with backoff and reported as [`crate::SyncEvent::Disconnected`].

use std::path::PathBuf;

/// Why syncing or reading the replica failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The service did not accept the token (gRPC `Unauthenticated`).
    #[error("the service refused the token: {0}; get a new token")]
    Unauthenticated(String),

    /// The token is valid but does not grant what was asked (gRPC `PermissionDenied`).
    #[error("the service denied access: {0}; check that the token grants the requested shapes")]
    PermissionDenied(String),

    /// The service rejected the request itself (`InvalidArgument`, `NotFound`).
    #[error("the service rejected the sync request: {0}; check the shape names")]
    InvalidRequest(String),

    /// The server at the address does not speak the Outpost sync protocol.
    #[error(
        "the server does not implement the Outpost sync protocol: {0}; check the server address"
    )]
    Unimplemented(String),

    /// The service refused a `Write` request as a whole (not one group of it):
    /// writes are not enabled, or the request is not acceptable to it. The
    /// local writes stay in the outbox.
    #[error(
        "the service refused the local writes: {0}; they stay in the outbox and are sent again by the next sync"
    )]
    WritesRefused(String),

    /// The server address cannot be used.
    #[error("invalid server address {url:?}: {reason}; use an address like http://localhost:4000")]
    InvalidServer {
        /// The address as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },

    /// The token cannot travel in a gRPC header.
    #[error("the token cannot be sent in a request header: {0}; check it for stray characters")]
    InvalidToken(String),

    /// The service sent a message the replica cannot apply. Transient: the
    /// session reconnects, and the pending data is rolled back.
    #[error("the service sent data the replica cannot apply: {0}")]
    Protocol(String),

    /// The replica's SQLite database failed.
    #[error(
        "the replica database failed: {0}; check the file, its permissions and free disk space"
    )]
    Sqlite(#[from] rusqlite::Error),

    /// The file exists but holds no Outpost replica.
    #[error(
        "{path} is not an Outpost replica ({reason}); run `outpost-client sync` with this --db first"
    )]
    NotAReplica {
        /// The file that was opened.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },

    /// The replica's stored state is not what this client writes.
    #[error("the replica holds invalid state: {0}; delete the file and sync again")]
    CorruptReplica(String),

    /// The query given to [`crate::inspect::write_query`] would modify the replica.
    #[error("only read-only queries are allowed here: {0}")]
    NotReadOnly(String),

    /// SQL given to [`crate::LocalDb::execute_group`] cannot run as one group.
    #[error("{0}")]
    InvalidStatement(String),

    /// The thread that writes the replica could not start or stopped.
    #[error("the replica writer stopped: {0}")]
    Writer(String),

    /// Writing output failed.
    #[error("could not write output: {0}")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// Whether the session loop retries after this error (with backoff)
    /// instead of returning it.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            ClientError::Protocol(_) => true,
            // Another connection held the write lock past the busy timeout.
            ClientError::Sqlite(e) => matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            _ => false,
        }
    }
}
