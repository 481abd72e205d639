//! End-to-end test harness of Outpost's read path: a real Postgres cluster, the
//! real service (in process or as the `outpost` binary), real gRPC clients and
//! real SQLite replica files.
//!
//! - [`TestDb`]: a throwaway cluster with one database, a schema directory, a
//!   data directory, a token secret and the files of the replicas.
//! - [`Oracle`] and [`ShapeQuery`]: the shape evaluated by Postgres itself,
//!   converted to wire values exactly as the service converts them.
//! - [`replica_rows`] / [`read_replica`]: the same rows read from a replica.
//! - [`wait_for_replica`]: waits until a replica has caught up with the current
//!   WAL position and equals its oracle, and fails with a readable diff.
//! - [`ServiceProcess`]: the `outpost` binary as a child process that can be
//!   killed with SIGKILL and started again on the same port and data directory.
//! - [`BackgroundClient`]: a long-running client session.
//!
//! Invariant: everything a test starts is torn down when the value that owns
//! it drops (clusters stopped and removed, child processes killed, client
//! sessions aborted, temporary directories deleted), even when a test panics.

mod client;
mod oracle;
mod process;
mod replica;
mod testdb;
mod wait;

pub use client::{BackgroundClient, sync_once};
pub use oracle::{KeyPart, Oracle, Rows, ShapeQuery, diff_rows, show_value};
pub use process::{ServiceProcess, free_port, outpost_binary};
pub use replica::{ReplicaState, read_replica, replica_rows};
pub use testdb::TestDb;
pub use wait::{Advance, Synced, wait_for_replica};

/// Installs a `tracing` subscriber that writes to the test output (once per
/// test binary); `RUST_LOG` overrides the default filter.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,h2=warn,hyper=warn,tower=warn,tokio_postgres=warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Parses an LSN as Postgres prints it (`16/B374D848`).
pub fn parse_lsn(text: &str) -> anyhow::Result<u64> {
    let (hi, lo) = text
        .trim()
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("not an LSN: {text:?}"))?;
    let hi = u64::from_str_radix(hi, 16)?;
    let lo = u64::from_str_radix(lo, 16)?;
    Ok((hi << 32) | lo)
}

/// Seconds since the Unix epoch, for token `exp` claims.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The wire value of a text.
pub fn text(s: &str) -> outpost_proto::v1::Value {
    wire(outpost_proto::v1::value::Kind::Text(s.to_string()))
}

/// The wire value of an integer.
pub fn int(i: i64) -> outpost_proto::v1::Value {
    wire(outpost_proto::v1::value::Kind::Integer(i))
}

/// The wire value of a real.
pub fn real(f: f64) -> outpost_proto::v1::Value {
    wire(outpost_proto::v1::value::Kind::Real(f))
}

/// The wire value of a blob.
pub fn blob(b: &[u8]) -> outpost_proto::v1::Value {
    wire(outpost_proto::v1::value::Kind::Blob(b.to_vec()))
}

/// The wire value of NULL.
pub fn null() -> outpost_proto::v1::Value {
    wire(outpost_proto::v1::value::Kind::Null(true))
}

fn wire(kind: outpost_proto::v1::value::Kind) -> outpost_proto::v1::Value {
    outpost_proto::v1::Value { kind: Some(kind) }
}
