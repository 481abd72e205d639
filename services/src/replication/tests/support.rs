//! Shared fixtures of the live tests: clusters, connections and readers of
//! the replication stream with timeouts.

use std::time::Duration;

use crate::pgcluster::{PgCluster, PgClusterOptions};

use super::super::*;

/// How long a test waits for something the server should send promptly.
pub(super) const WAIT: Duration = Duration::from_secs(30);

/// A cluster with one fresh database `db`.
pub(super) fn cluster_with(options: PgClusterOptions) -> PgCluster {
    let pg = PgCluster::start_with(options).expect("start postgres");
    pg.create_database("db").expect("create database");
    pg
}

pub(super) fn cluster() -> PgCluster {
    cluster_with(PgClusterOptions::default())
}

/// Connection settings for database `db` as the superuser.
pub(super) fn config(pg: &PgCluster) -> tokio_postgres::Config {
    pg.url("db").parse().expect("parse url")
}

pub(super) async fn connect(pg: &PgCluster) -> ReplicationConn {
    ReplicationConn::connect(&config(pg))
        .await
        .expect("replication connection")
}

/// An ordinary SQL session on database `db`.
pub(super) async fn sql(pg: &PgCluster) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&pg.url("db"), tokio_postgres::NoTls)
        .await
        .expect("sql connection");
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "test sql connection ended");
        }
    });
    client
}

/// Creates a publication `pub` for `tables` and a slot `slot`, and starts
/// streaming from the slot's consistent point.
pub(super) async fn stream(pg: &PgCluster, tables: &[&str]) -> ReplicationStream {
    let mut conn = connect(pg).await;
    let tables: Vec<(String, String)> = tables
        .iter()
        .map(|t| ("public".to_string(), t.to_string()))
        .collect();
    conn.ensure_publication("pub", &tables, true)
        .await
        .expect("publication");
    conn.create_slot("slot", false).await.expect("create slot");
    conn.start_replication("slot", Lsn::ZERO, "pub")
        .await
        .expect("start replication")
}

/// The next pgoutput message, skipping keepalives.
pub(super) async fn next_message(stream: &mut ReplicationStream) -> PgOutput {
    loop {
        let event = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("no message in time")
            .expect("stream error")
            .expect("stream ended");
        if let ReplicationEvent::Message { message, .. } = event {
            return message;
        }
    }
}

/// One transaction: its Begin, the messages inside (Relation and Type
/// messages left out), and its Commit.
pub(super) async fn next_transaction(
    stream: &mut ReplicationStream,
) -> (Begin, Vec<PgOutput>, Commit) {
    let begin = match next_message(stream).await {
        PgOutput::Begin(b) => b,
        other => panic!("expected Begin, got {other:?}"),
    };
    let mut body = Vec::new();
    loop {
        match next_message(stream).await {
            PgOutput::Commit(c) => return (begin, body, c),
            PgOutput::Relation(_) | PgOutput::Type(_) => {}
            other => body.push(other),
        }
    }
}

/// A text value.
pub(super) fn t(s: &str) -> TupleValue {
    TupleValue::Text(bytes::Bytes::copy_from_slice(s.as_bytes()))
}

/// Retries `start_replication` while the slot is still held by a session
/// that is going away (SQLSTATE 55006).
pub(super) async fn restart_stream(pg: &PgCluster, start: Lsn) -> ReplicationStream {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let conn = connect(pg).await;
        match conn.start_replication("slot", start, "pub").await {
            Ok(s) => return s,
            Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("start replication: {e}"),
        }
    }
}
