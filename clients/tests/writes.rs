//! Uploading local writes against an in-process gRPC server that answers
//! `Write` calls as scripted: order and seqs, the three answers, retries
//! after failures, offline writes, and a client stopped mid-upload.

mod common;

use common::{
    A, AbortOnDrop, B, Fake, Script, WriteScript, answer_each, applied, bucket, checkpoint, data,
    duplicate, initial, lsn, rejected, removes, schema, serve, serve_on, todos, unused_addr,
    with_timeout,
};
use outpost_client::{
    ClientError, LocalDb, PendingGroup, Replica, SyncEvent, SyncOptions, WriteStatus, sync,
    sync_with_events,
};
use outpost_proto::v1::{SyncResponse, write_op};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tonic::Status;

fn options(server: &str, db: &Path) -> SyncOptions {
    SyncOptions {
        once: true,
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
        outbox_poll_interval: Duration::from_millis(20),
        ..SyncOptions::new(server, "tok", db)
    }
}

/// A replica that holds the initial download (buckets a and b, checkpoint 10).
async fn synced_replica(dir: &tempfile::TempDir) -> PathBuf {
    let db = dir.path().join("replica.db");
    let fake = Fake::new(vec![Script::Send(initial())]);
    let (url, _server) = serve(fake).await;
    with_timeout(sync(options(&url, &db)))
        .await
        .expect("initial sync");
    db
}

/// The local transactions of the replica at `db` not confirmed yet.
fn pending_groups(db: &Path) -> Vec<PendingGroup> {
    Replica::open_read_only(db)
        .expect("open")
        .pending()
        .expect("pending")
}

fn write(db: &Path, sql: &str) {
    LocalDb::open(db)
        .expect("local")
        .execute_group(sql)
        .expect("write");
}

/// A live stream that resumes at checkpoint 10, and its sender.
fn resumed_stream() -> (
    UnboundedSender<SyncResponse>,
    UnboundedReceiver<SyncResponse>,
) {
    let (tx, rx) = unbounded_channel();
    tx.send(schema()).expect("send");
    tx.send(checkpoint(10, vec![bucket("a", A), bucket("b", B)]))
        .expect("send");
    (tx, rx)
}

fn drain(events: &mut UnboundedReceiver<SyncEvent>) -> Vec<SyncEvent> {
    let mut out = Vec::new();
    while let Ok(e) = events.try_recv() {
        out.push(e);
    }
    out
}

#[tokio::test]
async fn groups_upload_in_order_and_once_waits_for_their_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = synced_replica(&dir).await;
    write(&db, "UPDATE todos SET title = 'uno' WHERE id = 1");
    write(
        &db,
        "INSERT INTO todos VALUES (4, 'four'); UPDATE todos SET title = 'tres' WHERE id = 3",
    );
    write(&db, "DELETE FROM todos WHERE id = 2");
    assert_eq!(
        todos(&db),
        vec![(1, "uno".into()), (3, "tres".into()), (4, "four".into())]
    );

    let (tx, rx) = resumed_stream();
    let fake = Fake::new(vec![Script::Live(rx)]);
    // The service applies the groups; its stream then brings the rows back.
    fake.answer_writes(move |request| {
        let a: &[(i64, &str)] = &[(1, "uno")];
        let b: &[(i64, &str)] = &[(3, "tres"), (4, "four")];
        for m in [
            data("a", a),
            removes("a", &[2]),
            data("b", b),
            checkpoint(20, vec![bucket("a", a), bucket("b", b)]),
        ] {
            let _ = tx.send(m);
        }
        answer_each(request, |seq| applied(seq, lsn(20)))
    });
    let (url, _server) = serve(fake.clone()).await;
    let (events_tx, mut events) = unbounded_channel();
    let summary = with_timeout(sync_with_events(options(&url, &db), events_tx))
        .await
        .expect("sync");
    assert_eq!((summary.groups_uploaded, summary.groups_rejected), (3, 0));
    assert_eq!(summary.last.as_ref().map(|c| c.op_id), Some(20));

    let writes = fake.writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    let call = &writes[0];
    let replica = Replica::open_read_only(&db).expect("open");
    assert_eq!(call.authorization.as_deref(), Some("Bearer tok"));
    assert_eq!(call.request.client_id, replica.client_id());
    let seqs = call.seqs();
    assert_eq!(seqs.len(), 3);
    assert!(seqs.windows(2).all(|s| s[0] < s[1]), "{seqs:?}");
    let kinds: Vec<Vec<i32>> = call
        .request
        .groups
        .iter()
        .map(|g| g.ops.iter().map(|o| o.kind).collect())
        .collect();
    use write_op::Kind::{Delete, Insert, Update};
    assert_eq!(
        kinds,
        vec![
            vec![Update as i32],
            vec![Insert as i32, Update as i32],
            vec![Delete as i32]
        ]
    );

    assert!(replica.pending().expect("pending").is_empty());
    assert_eq!(
        todos(&db),
        vec![(1, "uno".into()), (3, "tres".into()), (4, "four".into())]
    );
    let results: Vec<(u64, WriteStatus)> = drain(&mut events)
        .into_iter()
        .filter_map(|e| match e {
            SyncEvent::WriteResult { seq, status, .. } => Some((seq, status)),
            _ => None,
        })
        .collect();
    assert_eq!(
        results,
        seqs.iter()
            .map(|&s| (s, WriteStatus::Applied))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn applied_duplicate_and_rejected_groups() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = synced_replica(&dir).await;
    write(&db, "UPDATE todos SET title = 'uno' WHERE id = 1");
    write(&db, "UPDATE todos SET title = 'tres' WHERE id = 3");
    write(&db, "INSERT INTO todos VALUES (5, 'five')");
    write(&db, "UPDATE todos SET title = 'deux' WHERE id = 2");

    let (tx, rx) = resumed_stream();
    let fake = Fake::new(vec![Script::Live(rx)]);
    fake.answer_writes(move |request| {
        let a: &[(i64, &str)] = &[(1, "uno"), (2, "deux")];
        let b: &[(i64, &str)] = &[(3, "tres")];
        for m in [
            data("a", a),
            data("b", b),
            checkpoint(20, vec![bucket("a", a), bucket("b", b)]),
        ] {
            let _ = tx.send(m);
        }
        let seqs: Vec<u64> = request.groups.iter().map(|g| g.seq).collect();
        answer_each(request, |seq| match seqs.iter().position(|&s| s == seq) {
            Some(0) | Some(3) => applied(seq, lsn(20)),
            Some(1) => duplicate(seq, lsn(20)),
            _ => rejected(seq, "permission_denied", "you may not add todos here"),
        })
    });
    let (url, _server) = serve(fake.clone()).await;
    let (events_tx, mut events) = unbounded_channel();
    let summary = with_timeout(sync_with_events(options(&url, &db), events_tx))
        .await
        .expect("sync");
    assert_eq!((summary.groups_uploaded, summary.groups_rejected), (3, 1));

    // The refused insert is gone; the groups after it went through.
    assert_eq!(
        todos(&db),
        vec![(1, "uno".into()), (2, "deux".into()), (3, "tres".into())]
    );
    let replica = Replica::open_read_only(&db).expect("open");
    let rejections = replica.rejections().expect("rejections");
    assert_eq!(rejections.len(), 1);
    let r = &rejections[0];
    assert_eq!(r.seq, fake.writes()[0].seqs()[2]);
    assert_eq!(
        (r.kind.as_str(), r.table.as_str(), r.key.as_str()),
        ("INSERT", "todos", "[5]")
    );
    assert_eq!(r.reason_code, "permission_denied");
    assert_eq!(r.message, "you may not add todos here");
    assert_eq!(r.attempted.as_deref(), Some(r#"{"id":5,"title":"five"}"#));
    assert!(replica.pending().expect("pending").is_empty());

    let statuses: Vec<(WriteStatus, Option<String>)> = drain(&mut events)
        .into_iter()
        .filter_map(|e| match e {
            SyncEvent::WriteResult { status, reason, .. } => Some((status, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        statuses,
        vec![
            (WriteStatus::Applied, None),
            (WriteStatus::Duplicate, None),
            (
                WriteStatus::Rejected,
                Some("permission_denied: you may not add todos here".into())
            ),
            (WriteStatus::Applied, None),
        ]
    );
}

#[tokio::test]
async fn a_failed_write_call_is_sent_again_with_the_same_seqs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = synced_replica(&dir).await;
    write(&db, "UPDATE todos SET title = 'uno' WHERE id = 1");
    write(&db, "UPDATE todos SET title = 'dos' WHERE id = 2");

    let (tx, rx) = resumed_stream();
    let fake = Fake::new(vec![Script::Live(rx)]);
    fake.push_write(WriteScript::Fail(Status::unavailable("connection reset")));
    fake.push_write(WriteScript::Fail(Status::internal("transaction aborted")));
    fake.answer_writes(move |request| {
        let a: &[(i64, &str)] = &[(1, "uno"), (2, "dos")];
        let _ = tx.send(data("a", a));
        let _ = tx.send(checkpoint(20, vec![bucket("a", a), bucket("b", B)]));
        answer_each(request, |seq| applied(seq, lsn(20)))
    });
    let (url, _server) = serve(fake.clone()).await;
    let (events_tx, mut events) = unbounded_channel();
    let summary = with_timeout(sync_with_events(options(&url, &db), events_tx))
        .await
        .expect("sync");
    assert_eq!(summary.groups_uploaded, 2);
    let writes = fake.writes();
    assert_eq!(writes.len(), 3);
    assert_eq!(writes[0].seqs().len(), 2);
    assert!(writes.iter().all(|w| w.seqs() == writes[0].seqs()));
    let events = drain(&mut events);
    let failed = events
        .iter()
        .filter(|e| matches!(e, SyncEvent::WriteFailed { .. }))
        .count();
    assert_eq!(failed, 2);
    // The stream stayed up: the failures did not reconnect it.
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, SyncEvent::Connected))
            .count(),
        1
    );
    assert_eq!(todos(&db)[..2], [(1, "uno".into()), (2, "dos".into())]);
}

#[tokio::test]
async fn offline_writes_upload_in_order_once_the_service_is_reachable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = synced_replica(&dir).await;
    let addr = unused_addr();

    write(&db, "UPDATE todos SET title = 'a' WHERE id = 1");
    write(&db, "UPDATE todos SET title = 'b' WHERE id = 1");
    let run = tokio::spawn(sync(options(&format!("http://{addr}"), &db)));
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Written while the client is retrying the connection.
    write(&db, "UPDATE todos SET title = 'c' WHERE id = 1");
    assert_eq!(todos(&db)[0], (1, "c".into()));

    let (tx, rx) = resumed_stream();
    let fake = Fake::new(vec![Script::Live(rx)]);
    fake.answer_writes(move |request| {
        let a: &[(i64, &str)] = &[(1, "c"), (2, "two")];
        let _ = tx.send(data("a", a));
        let _ = tx.send(checkpoint(20, vec![bucket("a", a), bucket("b", B)]));
        answer_each(request, |seq| applied(seq, lsn(20)))
    });
    let server = {
        let fake = fake.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
            serve_on(fake, listener).await;
        })
    };
    let _server = AbortOnDrop(server);
    let summary = with_timeout(run).await.expect("join").expect("sync");
    assert_eq!(summary.groups_uploaded, 3);

    let titles: Vec<String> = fake
        .writes()
        .iter()
        .flat_map(|w| w.request.groups.clone())
        .map(|g| {
            let column = &g.ops[0].columns[0];
            match column.value.as_ref().and_then(|v| v.kind.clone()) {
                Some(outpost_proto::v1::value::Kind::Text(t)) => t,
                other => panic!("unexpected value {other:?}"),
            }
        })
        .collect();
    assert_eq!(titles, vec!["a", "b", "c"]);
    let seqs: Vec<u64> = fake.writes().iter().flat_map(|w| w.seqs()).collect();
    assert!(seqs.windows(2).all(|s| s[0] < s[1]), "{seqs:?}");
    assert_eq!(todos(&db)[0], (1, "c".into()));
}

#[tokio::test]
async fn a_client_stopped_before_the_answer_sends_the_groups_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = synced_replica(&dir).await;
    write(&db, "UPDATE todos SET title = 'uno' WHERE id = 1");
    write(&db, "DELETE FROM todos WHERE id = 3");

    // The service receives the call but the client is gone before the answer.
    let fake = Fake::new(vec![Script::Send(vec![
        schema(),
        checkpoint(10, vec![bucket("a", A), bucket("b", B)]),
    ])]);
    fake.push_write(WriteScript::Hang);
    let (url, _server) = serve(fake.clone()).await;
    let mut opts = options(&url, &db);
    opts.once = false;
    let run = tokio::spawn(sync(opts));
    with_timeout(async {
        while fake.writes().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    run.abort();
    let _ = run.await;
    let first = fake.writes()[0].seqs();
    let pending = pending_groups(&db);
    assert_eq!(
        pending
            .iter()
            .map(|g| (g.seq, g.commit_lsn))
            .collect::<Vec<_>>(),
        first.iter().map(|&s| (s, None)).collect::<Vec<_>>()
    );

    // The next start sends the same groups; the service had applied them.
    let (tx, rx) = resumed_stream();
    let fake = Fake::new(vec![Script::Live(rx)]);
    fake.answer_writes(move |request| {
        let a: &[(i64, &str)] = &[(1, "uno"), (2, "two")];
        let _ = tx.send(data("a", a));
        let _ = tx.send(removes("b", &[3]));
        let _ = tx.send(checkpoint(20, vec![bucket("a", a), bucket("b", &[])]));
        answer_each(request, |seq| duplicate(seq, lsn(20)))
    });
    let (url, _server) = serve(fake.clone()).await;
    let summary = with_timeout(sync(options(&url, &db))).await.expect("sync");
    assert_eq!(summary.groups_uploaded, 2);
    assert_eq!(fake.writes().len(), 1);
    assert_eq!(fake.writes()[0].seqs(), first);
    assert_eq!(todos(&db), vec![(1, "uno".into()), (2, "two".into())]);
    assert!(pending_groups(&db).is_empty());
}

#[tokio::test]
async fn a_service_that_takes_no_writes_keeps_them_and_keeps_syncing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = synced_replica(&dir).await;
    write(&db, "UPDATE todos SET title = 'uno' WHERE id = 1");

    // With `once`, the sync ends with advice.
    let fake = Fake::new(vec![Script::Send(vec![
        schema(),
        checkpoint(10, vec![bucket("a", A), bucket("b", B)]),
    ])]);
    let (url, _server) = serve(fake.clone()).await;
    let err = with_timeout(sync(options(&url, &db)))
        .await
        .expect_err("refused");
    assert!(matches!(err, ClientError::WritesRefused(_)), "{err:?}");
    assert!(err.to_string().contains("stay in the outbox"), "{err}");

    // Syncing forever, downloads go on while the writes wait.
    let (tx, rx) = resumed_stream();
    fake.push(Script::Live(rx));
    let mut opts = options(&url, &db);
    opts.once = false;
    let (events_tx, mut events) = unbounded_channel();
    let run = tokio::spawn(sync_with_events(opts, events_tx));
    let mut seen = Vec::new();
    with_timeout(async {
        while !seen
            .iter()
            .any(|e| matches!(e, SyncEvent::WriteFailed { .. }))
        {
            seen.push(events.recv().await.expect("event"));
        }
    })
    .await;
    let a: &[(i64, &str)] = &[(1, "one"), (2, "two"), (6, "six")];
    tx.send(data("a", &[(6, "six")])).expect("send");
    tx.send(checkpoint(11, vec![bucket("a", a), bucket("b", B)]))
        .expect("send");
    with_timeout(async {
        loop {
            if let Some(SyncEvent::Checkpoint { op_id: 11, .. }) = events.recv().await {
                break;
            }
        }
    })
    .await;
    run.abort();
    let _ = run.await;
    assert_eq!(
        todos(&db),
        vec![
            (1, "uno".into()),
            (2, "two".into()),
            (3, "three".into()),
            (6, "six".into())
        ]
    );
    assert_eq!(pending_groups(&db).len(), 1);
}

#[tokio::test]
async fn once_returns_only_when_a_checkpoint_reaches_the_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = synced_replica(&dir).await;
    write(&db, "UPDATE todos SET title = 'uno' WHERE id = 1");

    let (tx, rx) = resumed_stream();
    let fake = Fake::new(vec![Script::Live(rx)]);
    fake.answer_writes(|request| answer_each(request, |seq| applied(seq, lsn(30))));
    let (url, _server) = serve(fake.clone()).await;
    let (events_tx, mut events) = unbounded_channel();
    let mut run = Box::pin(sync_with_events(options(&url, &db), events_tx));
    with_timeout(async {
        loop {
            tokio::select! {
                r = &mut run => panic!("sync ended early: {r:?}"),
                e = events.recv() => if let Some(SyncEvent::WriteResult { .. }) = e { break },
            }
        }
    })
    .await;
    // A checkpoint short of the commit, with someone else's title: ours stays.
    let a: &[(i64, &str)] = &[(1, "theirs"), (2, "two")];
    tx.send(data("a", &[(1, "theirs")])).expect("send");
    tx.send(checkpoint(20, vec![bucket("a", a), bucket("b", B)]))
        .expect("send");
    tokio::select! {
        r = &mut run => panic!("sync ended before the commit was checkpointed: {r:?}"),
        _ = tokio::time::sleep(Duration::from_millis(300)) => {}
    }
    assert_eq!(todos(&db)[0], (1, "uno".into()));
    let pending = pending_groups(&db);
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].commit_lsn, Some(lsn(30)));

    let a: &[(i64, &str)] = &[(1, "uno"), (2, "two")];
    tx.send(data("a", &[(1, "uno")])).expect("send");
    tx.send(checkpoint(30, vec![bucket("a", a), bucket("b", B)]))
        .expect("send");
    let summary = with_timeout(run).await.expect("sync");
    assert_eq!(summary.last.as_ref().map(|c| c.lsn), Some(lsn(30)));
    assert_eq!(todos(&db)[0], (1, "uno".into()));
}

#[tokio::test]
async fn a_group_the_service_refuses_as_a_request_does_not_stall_the_outbox() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = synced_replica(&dir).await;
    write(&db, "UPDATE todos SET title = 'uno' WHERE id = 1");
    write(&db, "UPDATE todos SET title = 'huge' WHERE id = 2");
    write(&db, "UPDATE todos SET title = 'tres' WHERE id = 3");

    let (tx, rx) = resumed_stream();
    let fake = Fake::new(vec![Script::Live(rx)]);
    // The service refuses any request that carries the second group.
    let mut poison = None;
    fake.handle_writes(move |request| {
        let seqs: Vec<u64> = request.groups.iter().map(|g| g.seq).collect();
        let poison = *poison.get_or_insert_with(|| seqs[1]);
        if seqs.contains(&poison) {
            return Err(Status::invalid_argument("12000 ops in one request"));
        }
        let a: &[(i64, &str)] = &[(1, "uno"), (2, "two")];
        let b: &[(i64, &str)] = &[(3, "tres")];
        let _ = tx.send(data("a", a));
        let _ = tx.send(data("b", b));
        let _ = tx.send(checkpoint(20, vec![bucket("a", a), bucket("b", b)]));
        Ok(answer_each(request, |seq| applied(seq, lsn(20))))
    });
    let (url, _server) = serve(fake.clone()).await;
    let summary = with_timeout(sync(options(&url, &db))).await.expect("sync");
    assert_eq!((summary.groups_uploaded, summary.groups_rejected), (2, 1));
    let calls: Vec<usize> = fake.writes().iter().map(|w| w.seqs().len()).collect();
    assert_eq!(calls, vec![3, 1, 1, 1], "a batch, then one group at a time");
    assert_eq!(
        todos(&db),
        vec![(1, "uno".into()), (2, "two".into()), (3, "tres".into())]
    );
    let rejections = Replica::open_read_only(&db)
        .expect("open")
        .rejections()
        .expect("rejections");
    assert_eq!(rejections.len(), 1);
    assert_eq!(rejections[0].reason_code, "invalid_request");
    assert_eq!(rejections[0].message, "12000 ops in one request");
    assert_eq!(rejections[0].key, "[2]");
}
