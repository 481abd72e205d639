//! The Outpost client: keeps a typed SQLite replica of the user's shapes in
//! sync with an Outpost service over gRPC.
//!
//! ```text
//! service ──Sync stream──▶ session (tonic) ──commands──▶ replica writer thread ──▶ SQLite file
//!            schema, data,     backoff, auth,                 one transaction per      ▲
//!            resets, checkpoints   cursors                    checkpoint               │
//!         ◀──Write──────────── op groups from the outbox ◀──── triggers ◀── app (LocalDb)
//! ```
//!
//! - [`LocalDb`]: the app's connection: plain SQL on the synced tables; its
//!   writes are captured into the outbox, one op group per transaction.
//! - [`Replica`]: the SQLite file: typed tables, bucket state, checksums,
//!   pending writes and rejections.
//! - [`sync`] / [`sync_with_events`]: the session loop that connects, applies
//!   and reconnects.
//! - [`inspect`]: read-only views of a replica for tools and demos.
//!
//! # Writing
//!
//! Open the replica with [`LocalDb::open`] (or run `outpost-client exec`) and
//! write the synced tables with plain SQL, online or offline; the change is
//! visible at once. Every SQLite transaction becomes one op group, applied
//! by the service all-or-nothing; the session uploads groups in commit order
//! while it is connected. A connection opened any other way can read the
//! replica but not write a synced table ("no such function:
//! outpost_capture"), and writes through [`Replica::connection`] are not
//! uploaded.
//!
//! - [`Replica::pending`] lists the groups not confirmed yet;
//! - a group the service refuses is listed in `_outpost_rejections` (one row
//!   per op: table, key, reason code and message, the values it tried to
//!   write; see [`Replica::rejections`]) and its rows go back to the server's
//!   values, with the app's later writes still applied on top; the app may
//!   delete rejection rows once it has shown them;
//! - an applied write stays visible as written until a checkpoint at or past
//!   its commit LSN brings the server's values, which include it (a
//!   `counter` column shows the server's value plus the deltas still
//!   pending);
//! - an INSERT leaves its NULL columns to the Postgres defaults;
//! - changing a primary key is uploaded as a DELETE and an INSERT.
//!
//! Invariants: the server data in a replica is only ever complete checkpoints
//! whose checksums matched the service's, whatever happens to the process or
//! the connection; on top of it, every local write the service has not
//! confirmed or refused yet stays applied, and is uploaded exactly once in
//! effect (groups are idempotent by client id and seq).

mod error;
pub mod inspect;
mod local_db;
mod replica;
mod session;

pub use error::ClientError;
pub use local_db::LocalDb;
pub use replica::{
    BucketState, CheckpointState, PendingGroup, Rejection, Replica, TableState, WriteStatus,
};
pub use session::{SyncEvent, SyncOptions, SyncSummary, sync, sync_with_events};

/// Formats a Postgres LSN the way Postgres prints it (`16/B374D848`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}
