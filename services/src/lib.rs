//! Outpost: keeps slices of a Postgres database on users' devices.
//!
//! The read path, one module per stage:
//!
//! ```text
//! Postgres ─pgoutput─▶ replication ─▶ ingest ─▶ store ─▶ server ─gRPC─▶ client
//!                     (one slot)     (route     (mirror +   (per-client
//!                                     by shape)  bucket log) streams)
//! ```
//!
//! `schema` compiles the schema files into bucket definitions, `snapshot`
//! loads the mirror from the snapshot exported when the slot is created, and
//! `auth` turns a bearer token into the claims that shapes are keyed by.

pub mod auth;
pub mod config;
pub mod ingest;
pub mod lsn;
pub mod pgcluster;
pub mod pgtypes;
pub mod replication;
pub mod replicator;
pub mod schema;
pub mod server;
pub mod service;
pub mod snapshot;
pub mod store;
pub mod writes;
