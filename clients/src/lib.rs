//! The Outpost client: keeps a typed SQLite replica of the user's shapes in
//! sync with an Outpost service over gRPC.
//!
//! ```text
//! service ──Sync stream──▶ session (tonic) ──commands──▶ replica writer thread ──▶ SQLite file
//!            schema, data,     backoff, auth,                 one transaction per
//!            resets, checkpoints   cursors                    checkpoint
//! ```
//!
//! - [`Replica`]: the SQLite file: typed tables, bucket state, checksums.
//! - [`sync`] / [`sync_with_events`]: the session loop that connects, applies
//!   and reconnects.
//! - [`inspect`]: read-only views of a replica for tools and demos.
//!
//! Invariant: a replica only ever holds complete checkpoints whose checksums
//! matched the service's, whatever happens to the process or the connection.

mod error;
pub mod inspect;
mod replica;
mod session;

pub use error::ClientError;
pub use replica::{BucketState, CheckpointState, Replica, TableState};
pub use session::{SyncEvent, SyncOptions, SyncSummary, sync, sync_with_events};

/// Formats a Postgres LSN the way Postgres prints it (`16/B374D848`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}
