//! The session loop against an in-process gRPC server that plays scripted
//! streams: what the client sends, what it applies, when it reconnects and
//! when it gives up.

mod common;

use common::{
    A, AbortOnDrop, B, Fake, Script, bucket, checkpoint, data, initial, schema, serve, serve_on,
    todos, unused_addr, with_timeout,
};
use outpost_client::{ClientError, Replica, SyncEvent, SyncOptions, sync, sync_with_events};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::Status;

fn options(server: &str, db: &Path) -> SyncOptions {
    SyncOptions {
        once: true,
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
        ..SyncOptions::new(server, "tok", db)
    }
}

fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("replica.db")
}

#[tokio::test]
async fn initial_sync_is_applied_and_once_returns() {
    let fake = Fake::new(vec![Script::Send(initial())]);
    let (url, _server) = serve(fake.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = db_path(&dir);

    let summary = with_timeout(sync(options(&url, &db))).await.expect("sync");
    assert_eq!(summary.checkpoints, 1);
    assert_eq!(summary.rows_received, 3);
    assert_eq!(summary.last.as_ref().map(|c| c.op_id), Some(10));

    assert_eq!(
        todos(&db),
        vec![(1, "one".into()), (2, "two".into()), (3, "three".into())]
    );
    let replica = Replica::open_read_only(&db).expect("open");
    let cp = replica.checkpoint().expect("checkpoint").expect("some");
    assert_eq!(
        (cp.op_id, cp.lsn, cp.epoch.as_str()),
        (10, 0x1_0000_000a, "e1")
    );
    let buckets = replica.buckets().expect("buckets");
    assert_eq!(buckets.len(), 2);
    assert!(buckets.iter().all(|b| b.op_id == 10));

    let calls = fake.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].authorization.as_deref(), Some("Bearer tok"));
    assert!(calls[0].request.cursors.is_empty());
    assert_eq!(calls[0].request.epoch, "");
    assert_eq!(calls[0].request.client_id, replica.client_id());
    assert!(!replica.client_id().is_empty());
}

#[tokio::test]
async fn second_run_resumes_from_stored_cursors_and_epoch() {
    let fake = Fake::new(vec![Script::Send(initial())]);
    let (url, _server) = serve(fake.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = db_path(&dir);
    let mut opts = options(&url, &db);
    opts.shapes = vec!["todos".into(), "lists".into()];
    with_timeout(sync(opts.clone())).await.expect("first sync");

    fake.push(Script::Send(vec![
        schema(),
        checkpoint(11, vec![bucket("a", A), bucket("b", B)]),
    ]));
    let summary = with_timeout(sync(opts)).await.expect("second sync");
    assert_eq!(summary.rows_received, 0, "resumed without re-downloading");
    assert_eq!(summary.last.as_ref().map(|c| c.op_id), Some(11));

    let calls = fake.calls();
    assert_eq!(calls.len(), 2);
    let second = &calls[1].request;
    let cursors: Vec<(&str, u64)> = second
        .cursors
        .iter()
        .map(|c| (c.bucket.as_str(), c.op_id))
        .collect();
    assert_eq!(cursors, vec![("a", 10), ("b", 10)]);
    assert_eq!(second.epoch, "e1");
    assert_eq!(second.client_id, calls[0].request.client_id);
    let shapes: Vec<&str> = second.shapes.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(shapes, vec!["todos", "lists"]);
}

#[tokio::test]
async fn checksum_mismatch_reconnects_asking_for_the_bucket_from_zero() {
    let fake = Fake::new(vec![Script::Send(initial())]);
    let (url, _server) = serve(fake.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = db_path(&dir);
    with_timeout(sync(options(&url, &db)))
        .await
        .expect("first sync");

    // The service claims a checksum for a that the data does not produce.
    let a2: &[(i64, &str)] = &[(1, "one"), (2, "two"), (4, "four")];
    let mut wrong = bucket("a", a2);
    wrong.checksum = wrong.checksum.wrapping_add(1);
    fake.push(Script::Send(vec![
        schema(),
        data("a", &[(4, "four")]),
        checkpoint(12, vec![wrong, bucket("b", B)]),
    ]));
    // On reconnection it sends a from zero.
    fake.push(Script::Send(vec![
        schema(),
        data("a", a2),
        checkpoint(12, vec![bucket("a", a2), bucket("b", B)]),
    ]));
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    let summary = with_timeout(sync_with_events(options(&url, &db), events_tx))
        .await
        .expect("sync");
    assert_eq!(summary.checkpoints, 1);
    assert_eq!(summary.rows_received, 4);

    let calls = fake.calls();
    assert_eq!(calls.len(), 3);
    let cursors: Vec<(&str, u64)> = calls[2]
        .request
        .cursors
        .iter()
        .map(|c| (c.bucket.as_str(), c.op_id))
        .collect();
    assert_eq!(cursors, vec![("b", 10)], "a is asked for from zero");

    let mut events = Vec::new();
    while let Ok(e) = events_rx.try_recv() {
        events.push(e);
    }
    assert!(events.contains(&SyncEvent::ChecksumMismatch { bucket: "a".into() }));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, SyncEvent::Disconnected { error } if error.contains("checksum")))
    );
    assert!(events.contains(&SyncEvent::Checkpoint {
        op_id: 12,
        lsn: 0x1_0000_000c,
        rows_applied: 3
    }));
    assert_eq!(
        todos(&db),
        vec![
            (1, "one".into()),
            (2, "two".into()),
            (3, "three".into()),
            (4, "four".into())
        ]
    );
}

#[tokio::test]
async fn unauthenticated_is_an_error_without_retry() {
    let fake = Fake::new(vec![Script::Fail(Status::unauthenticated("token expired"))]);
    let (url, _server) = serve(fake.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(&url, &dir.path().join("replica.db"));
    opts.once = false;
    let err = with_timeout(sync(opts)).await.expect_err("refused");
    assert!(matches!(err, ClientError::Unauthenticated(_)), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("token expired") && message.contains("get a new token"));
    assert_eq!(fake.calls().len(), 1);
}

#[tokio::test]
async fn transient_failures_are_retried() {
    // Unavailable, then a stream that ends before its checkpoint: neither is fatal,
    // and the half-received data of the second is not applied twice.
    let mut partial = initial();
    partial.truncate(2);
    let fake = Fake::new(vec![
        Script::Fail(Status::unavailable("starting up")),
        Script::SendAndClose(partial),
        Script::Send(initial()),
    ]);
    let (url, _server) = serve(fake.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = db_path(&dir);
    let summary = with_timeout(sync(options(&url, &db))).await.expect("sync");
    assert_eq!(fake.calls().len(), 3);
    assert_eq!(summary.rows_received, 2 + 3);
    assert_eq!(todos(&db).len(), 3);
    let replica = Replica::open_read_only(&db).expect("open");
    assert_eq!(
        replica
            .buckets()
            .expect("buckets")
            .iter()
            .map(|b| b.count)
            .collect::<Vec<_>>(),
        vec![2, 1]
    );
}

#[tokio::test]
async fn connection_refused_is_retried_until_the_service_is_up() {
    let addr = unused_addr();
    let fake = Fake::new(vec![Script::Send(initial())]);
    let server = {
        let fake = fake.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
            serve_on(fake, listener).await;
        })
    };
    let _server = AbortOnDrop(server);
    let dir = tempfile::tempdir().expect("tempdir");
    let db = db_path(&dir);
    let summary = with_timeout(sync(options(&format!("http://{addr}"), &db)))
        .await
        .expect("sync");
    assert_eq!(summary.checkpoints, 1);
    assert_eq!(fake.calls().len(), 1);
}

#[tokio::test]
async fn dropping_the_sync_future_keeps_the_last_checkpoint() {
    let fake = Fake::new(vec![Script::Send(initial())]);
    let (url, _server) = serve(fake.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = db_path(&dir);
    with_timeout(sync(options(&url, &db)))
        .await
        .expect("first sync");

    // Data without a checkpoint, then the caller gives up.
    fake.push(Script::Send(vec![schema(), data("a", &[(5, "five")])]));
    let mut opts = options(&url, &db);
    opts.once = false;
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut run = Box::pin(sync_with_events(opts, events_tx));
    with_timeout(async {
        loop {
            tokio::select! {
                r = &mut run => panic!("sync ended: {r:?}"),
                e = events_rx.recv() => if let Some(SyncEvent::Progress { .. }) = e { break },
            }
        }
    })
    .await;
    drop(run);

    // The pending row was never committed, and the file is usable again at once.
    fake.push(Script::Send(vec![
        schema(),
        checkpoint(10, vec![bucket("a", A), bucket("b", B)]),
    ]));
    with_timeout(sync(options(&url, &db)))
        .await
        .expect("sync again");
    assert_eq!(todos(&db).len(), 3);
}

#[tokio::test]
async fn bad_addresses_and_tokens_fail_before_connecting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = db_path(&dir);
    for server in ["localhost:4000", "https://localhost:4000", "not a url"] {
        let err = sync(options(server, &db)).await.expect_err(server);
        assert!(matches!(err, ClientError::InvalidServer { .. }), "{err:?}");
    }
    let mut opts = options("http://127.0.0.1:1", &db);
    opts.token = " ".into();
    let err = sync(opts).await.expect_err("empty token");
    assert!(matches!(err, ClientError::InvalidToken(_)), "{err:?}");
}

/// A million rows through gRPC into the replica. Run with
/// `cargo test -p outpost-client --release --test session -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: a million rows"]
async fn large_initial_sync_over_grpc() {
    let rows: i64 = 1_000_000;
    let title = "a title of typical length for a todo item";
    let mut messages = vec![schema()];
    let mut all = Vec::with_capacity(rows as usize);
    for chunk in (0..rows).collect::<Vec<_>>().chunks(1000) {
        let batch: Vec<(i64, &str)> = chunk.iter().map(|&id| (id, title)).collect();
        messages.push(data("all", &batch));
        all.extend(batch);
    }
    messages.push(checkpoint(1, vec![bucket("all", &all)]));
    let fake = Fake::new(vec![Script::Send(messages)]);
    let (url, _server) = serve(fake).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let start = std::time::Instant::now();
    let summary = sync(options(&url, &db_path(&dir))).await.expect("sync");
    assert_eq!(summary.rows_received, rows as u64);
    println!("{rows} rows over gRPC in {:?}", start.elapsed());
}
