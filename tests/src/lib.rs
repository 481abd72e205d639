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
//! - [`TcpProxy`]: a TCP proxy between clients and the service whose
//!   connections can be cut and restored.
//! - [`check_events`]: checks a client's events for checkpoints that go back
//!   or apply rows twice, and for checksum mismatches.
//! - [`test_seed`]: the seed of a randomized test (`OUTPOST_TEST_SEED` replays).
//! - [`HoldProxy`]: a TCP proxy that keeps back what the service sends, then
//!   resets every connection: replies lost after their request arrived.
//! - [`writer`]: local writes through the capturing connection, the replica's
//!   outbox, pending groups and rejections, the service's ledger, and
//!   [`wait_settled`].
//!
//! Invariant: everything a test starts is torn down when the value that owns
//! it drops (clusters stopped and removed, child processes killed, client
//! sessions aborted, temporary directories deleted), even when a test panics.

mod client;
mod events;
mod hold_proxy;
mod oracle;
mod process;
mod proxy;
mod replica;
mod testdb;
mod wait;
pub mod writer;

pub use client::{BackgroundClient, sync_once};
pub use events::{EventCounts, check_events};
pub use hold_proxy::HoldProxy;
pub use oracle::{KeyPart, Oracle, Rows, ShapeQuery, diff_rows, show_value};
pub use process::{ServiceProcess, free_port, outpost_binary};
pub use proxy::TcpProxy;
pub use replica::{ReplicaState, read_replica, replica_rows};
pub use testdb::TestDb;
pub use wait::{Advance, Synced, wait_for_replica};
pub use writer::{wait_settled, write_local, write_local_async};

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

/// The seed of a randomized test: `OUTPOST_TEST_SEED` when set (to replay a
/// failure), otherwise a random one. It is printed, so every failing run can
/// be replayed.
pub fn test_seed(test: &str) -> u64 {
    let seed = std::env::var("OUTPOST_TEST_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: seed {seed} (replay with OUTPOST_TEST_SEED={seed})");
    tracing::info!(test, seed, "test seed");
    seed
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
