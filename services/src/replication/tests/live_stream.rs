//! Streaming against a real Postgres: decoded changes, TOAST, replica
//! identity, acknowledgements, cancellation and server restarts.

use std::time::Duration;

use crate::pgcluster::PgClusterOptions;

use super::super::*;
use super::support::*;

#[tokio::test]
async fn changes_are_decoded_with_their_values() {
    let pg = cluster();
    pg.psql(
        "db",
        "CREATE TABLE items (id int PRIMARY KEY, title text, price numeric, at timestamptz, \
         ratio float8, flag bool, nothing text)",
    )
    .unwrap();
    let mut stream = stream(&pg, &["items"]).await;
    let client = sql(&pg).await;
    // A session time zone far from UTC: the stream still prints UTC.
    client
        .batch_execute(
            "SET TimeZone = 'Pacific/Kiritimati';
             INSERT INTO items VALUES (1, 'été', 12.50, '2024-01-01 12:00:00+02', 0.1, true, NULL)",
        )
        .await
        .unwrap();

    let relation = match next_message(&mut stream).await {
        PgOutput::Begin(_) => match next_message(&mut stream).await {
            PgOutput::Relation(r) => r,
            other => panic!("expected Relation, got {other:?}"),
        },
        other => panic!("expected Begin, got {other:?}"),
    };
    assert_eq!(relation.namespace, "public");
    assert_eq!(relation.name, "items");
    assert_eq!(relation.replica_identity, b'd');
    let names: Vec<_> = relation.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["id", "title", "price", "at", "ratio", "flag", "nothing"]
    );
    assert!(relation.columns[0].is_key && !relation.columns[1].is_key);
    assert_eq!(relation.columns[0].type_oid, 23);
    let rel = relation.id;
    let PgOutput::Insert(insert) = next_message(&mut stream).await else {
        panic!("expected Insert");
    };
    assert_eq!(insert.relation_id, rel);
    assert_eq!(
        insert.new,
        Tuple(vec![
            t("1"),
            t("été"),
            t("12.50"),
            t("2024-01-01 10:00:00+00"),
            t("0.1"),
            t("t"),
            TupleValue::Null
        ])
    );
    let PgOutput::Commit(commit) = next_message(&mut stream).await else {
        panic!("expected Commit");
    };
    assert!(commit.end_lsn > commit.commit_lsn);

    client
        .batch_execute("UPDATE items SET title = 'b' WHERE id = 1")
        .await
        .unwrap();
    let (begin, body, commit) = next_transaction(&mut stream).await;
    assert_eq!(begin.final_lsn, commit.commit_lsn);
    assert_eq!(begin.commit_time, commit.commit_time);
    let [PgOutput::Update(update)] = body.as_slice() else {
        panic!("expected one Update, got {body:?}");
    };
    assert_eq!((&update.old, &update.key), (&None, &None));
    assert_eq!(update.new.0[1], t("b"));

    // Changing the key sends the old key.
    client
        .batch_execute("UPDATE items SET id = 2 WHERE id = 1")
        .await
        .unwrap();
    let (_, body, _) = next_transaction(&mut stream).await;
    let [PgOutput::Update(update)] = body.as_slice() else {
        panic!("expected one Update, got {body:?}");
    };
    let key = update.key.as_ref().expect("old key");
    assert_eq!(key.0[0], t("1"));
    assert!(key.0[1..].iter().all(|v| *v == TupleValue::Null));
    assert_eq!(update.new.0[0], t("2"));

    client
        .batch_execute("DELETE FROM items WHERE id = 2")
        .await
        .unwrap();
    let (_, body, _) = next_transaction(&mut stream).await;
    let [PgOutput::Delete(delete)] = body.as_slice() else {
        panic!("expected one Delete, got {body:?}");
    };
    assert_eq!(delete.relation_id, rel);
    assert_eq!(delete.old, None);
    assert_eq!(delete.key.as_ref().unwrap().0[0], t("2"));

    client
        .batch_execute("TRUNCATE items RESTART IDENTITY")
        .await
        .unwrap();
    let (_, body, _) = next_transaction(&mut stream).await;
    assert_eq!(
        body,
        vec![PgOutput::Truncate(Truncate {
            options: Truncate::RESTART_IDENTITY,
            relation_ids: vec![rel]
        })]
    );

    client
        .batch_execute("SELECT pg_logical_emit_message(true, 'p', 'x')")
        .await
        .unwrap();
    let (_, body, commit) = next_transaction(&mut stream).await;
    let [PgOutput::Message(m)] = body.as_slice() else {
        panic!("expected one Message, got {body:?}");
    };
    assert!(m.transactional);
    assert_eq!((m.prefix.as_str(), &m.content[..]), ("p", &b"x"[..]));
    assert!(m.lsn <= commit.commit_lsn);

    client
        .batch_execute("SELECT pg_logical_emit_message(false, 'q', 'now')")
        .await
        .unwrap();
    let PgOutput::Message(m) = next_message(&mut stream).await else {
        panic!("expected a non-transactional Message");
    };
    assert!(!m.transactional);
    assert_eq!((m.prefix.as_str(), &m.content[..]), ("q", &b"now"[..]));
}

#[tokio::test]
async fn unchanged_toast_and_replica_identity_full() {
    let pg = cluster();
    pg.psql(
        "db",
        "CREATE TABLE docs (id int PRIMARY KEY, n int, big text);
         ALTER TABLE docs ALTER COLUMN big SET STORAGE EXTERNAL;
         CREATE TABLE fulls (id int PRIMARY KEY, a text, b text);
         ALTER TABLE fulls REPLICA IDENTITY FULL;",
    )
    .unwrap();
    let mut stream = stream(&pg, &["docs", "fulls"]).await;
    let client = sql(&pg).await;
    client
        .batch_execute(
            "INSERT INTO docs SELECT 1, 0, string_agg(md5(i::text), '') \
             FROM generate_series(1, 640) i",
        )
        .await
        .unwrap();
    let (_, body, _) = next_transaction(&mut stream).await;
    let [PgOutput::Insert(insert)] = body.as_slice() else {
        panic!("expected one Insert, got {body:?}");
    };
    let TupleValue::Text(big) = &insert.new.0[2] else {
        panic!("big value missing");
    };
    assert_eq!(big.len(), 640 * 32);

    client
        .batch_execute("UPDATE docs SET n = 1 WHERE id = 1")
        .await
        .unwrap();
    let (_, body, _) = next_transaction(&mut stream).await;
    let [PgOutput::Update(update)] = body.as_slice() else {
        panic!("expected one Update, got {body:?}");
    };
    assert_eq!(
        update.new,
        Tuple(vec![t("1"), t("1"), TupleValue::UnchangedToast])
    );

    // One implicit transaction per statement.
    for statement in [
        "INSERT INTO fulls VALUES (1, 'a', NULL)",
        "UPDATE fulls SET b = 'b' WHERE id = 1",
        "DELETE FROM fulls WHERE id = 1",
    ] {
        client.batch_execute(statement).await.unwrap();
    }
    let (_, body, _) = next_transaction(&mut stream).await;
    assert!(matches!(&body[..], [PgOutput::Insert(_)]), "{body:?}");
    let (_, body, _) = next_transaction(&mut stream).await;
    let [PgOutput::Update(update)] = body.as_slice() else {
        panic!("expected one Update, got {body:?}");
    };
    assert_eq!(
        update.old,
        Some(Tuple(vec![t("1"), t("a"), TupleValue::Null]))
    );
    assert_eq!(update.new, Tuple(vec![t("1"), t("a"), t("b")]));
    let (_, body, _) = next_transaction(&mut stream).await;
    let [PgOutput::Delete(delete)] = body.as_slice() else {
        panic!("expected one Delete, got {body:?}");
    };
    assert_eq!(delete.old, Some(Tuple(vec![t("1"), t("a"), t("b")])));
    assert_eq!(delete.key, None);
}

#[tokio::test]
async fn acknowledged_transactions_are_not_replayed() {
    let pg = cluster_with(PgClusterOptions {
        settings: vec![("wal_sender_timeout".into(), "2s".into())],
        ..Default::default()
    });
    pg.psql("db", "CREATE TABLE items (id int PRIMARY KEY)")
        .unwrap();
    let mut stream = stream(&pg, &["items"]).await;
    let client = sql(&pg).await;

    // Keepalives come while idle.
    let keepalive = tokio::time::timeout(WAIT, async {
        loop {
            if let ReplicationEvent::Keepalive { wal_end, .. } =
                stream.next().await.unwrap().unwrap()
            {
                return wal_end;
            }
        }
    })
    .await
    .expect("no keepalive");
    assert!(keepalive > Lsn::ZERO);

    client
        .batch_execute("INSERT INTO items VALUES (1)")
        .await
        .unwrap();
    let (_, _, first) = next_transaction(&mut stream).await;
    stream
        .send_status(first.end_lsn, first.end_lsn, first.end_lsn, false)
        .await
        .unwrap();
    let mut conn = connect(&pg).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let info = conn.slot_info("slot").await.unwrap().unwrap();
        assert!(info.active);
        if info.confirmed_flush_lsn == Some(first.end_lsn) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "flush LSN not confirmed: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    client
        .batch_execute("INSERT INTO items VALUES (2)")
        .await
        .unwrap();
    let (_, body, second) = next_transaction(&mut stream).await;
    assert!(matches!(&body[..], [PgOutput::Insert(i)] if i.new.0[0] == t("2")));

    // A clean stop gives the connection back for commands, not for a
    // second stream; a new connection resumes after the acknowledged
    // transaction.
    let mut conn = stream.stop().await.unwrap();
    assert!(conn.slot_info("slot").await.unwrap().is_some());
    let err = conn
        .start_replication("slot", Lsn::ZERO, "pub")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("connect again"), "{err}");
    let mut stream = restart_stream(&pg, Lsn::ZERO).await;
    let (_, body, again) = next_transaction(&mut stream).await;
    assert_eq!(again.commit_lsn, second.commit_lsn);
    assert!(matches!(&body[..], [PgOutput::Insert(i)] if i.new.0[0] == t("2")));

    // Dropping the stream without acknowledging: the same again.
    drop(stream);
    let mut stream = restart_stream(&pg, Lsn::ZERO).await;
    let (_, _, again) = next_transaction(&mut stream).await;
    assert_eq!(again.commit_lsn, second.commit_lsn);
}

#[tokio::test]
async fn next_is_cancellation_safe() {
    let pg = cluster();
    pg.psql("db", "CREATE TABLE items (id int PRIMARY KEY, pad text)")
        .unwrap();
    let mut stream = stream(&pg, &["items"]).await;
    let client = sql(&pg).await;
    const ROWS: i32 = 3000;
    let writer = tokio::spawn(async move {
        for chunk in 0..ROWS / 10 {
            client
                .batch_execute(&format!(
                    "INSERT INTO items SELECT i, repeat('x', 3000 + i % 500) \
                     FROM generate_series({}, {}) i",
                    chunk * 10 + 1,
                    chunk * 10 + 10
                ))
                .await
                .unwrap();
        }
    });

    // Every other call is given no time at all: polled once, and dropped
    // if the message is not all there yet (a timeout polls its future
    // before its timer). The rows must still all arrive, whole and in order.
    let mut seen = 0;
    let mut cancelled = 0u32;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    for call in 0u64.. {
        if seen == ROWS {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {seen} rows");
        let event = if call % 2 == 0 {
            match tokio::time::timeout(Duration::ZERO, stream.next()).await {
                Ok(event) => event,
                Err(_) => {
                    cancelled += 1;
                    continue;
                }
            }
        } else {
            stream.next().await
        };
        if let ReplicationEvent::Message {
            message: PgOutput::Insert(i),
            ..
        } = event.unwrap().unwrap()
        {
            seen += 1;
            assert_eq!(i.new.0[0], t(&seen.to_string()));
            let TupleValue::Text(pad) = &i.new.0[1] else {
                panic!("no pad")
            };
            assert_eq!(pad.len(), 3000 + seen as usize % 500);
        }
    }
    writer.await.unwrap();
    assert!(cancelled > 0, "no call was ever cancelled");
}

#[tokio::test]
async fn postgres_restart_is_a_transient_error() {
    let pg = cluster_with(PgClusterOptions {
        settings: vec![("wal_sender_timeout".into(), "5s".into())],
        ..Default::default()
    });
    pg.psql("db", "CREATE TABLE items (id int PRIMARY KEY)")
        .unwrap();
    let mut stream = stream(&pg, &["items"]).await;
    pg.psql("db", "INSERT INTO items VALUES (1)").unwrap();
    let (_, _, commit) = next_transaction(&mut stream).await;

    let restart = tokio::task::spawn_blocking(move || {
        let mut pg = pg;
        pg.restart().map(|()| pg)
    });
    // Answer keepalives the way the service does (write = received, flush =
    // durable) so that the walsender's shutdown is not held up.
    let err = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match stream.next().await {
                Ok(Some(ReplicationEvent::Keepalive {
                    wal_end,
                    reply_requested: true,
                })) => {
                    stream
                        .send_status(wal_end, commit.end_lsn, commit.end_lsn, false)
                        .await
                        .ok();
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!("stream ended without an error"),
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("no error after the restart");
    assert!(err.is_transient(), "{err:?}");

    let pg = restart.await.unwrap().unwrap();
    pg.psql("db", "INSERT INTO items VALUES (2)").unwrap();
    let mut stream = restart_stream(&pg, Lsn::ZERO).await;
    // Postgres 15 keeps a confirmed flush position that did not move the
    // slot's restart point in memory only, so the acknowledged transaction
    // may come again after a restart (consumers skip it by commit LSN).
    loop {
        let (_, body, again) = next_transaction(&mut stream).await;
        match &body[..] {
            [PgOutput::Insert(i)] if i.new.0[0] == t("2") => break,
            [PgOutput::Insert(i)] if i.new.0[0] == t("1") => {
                assert_eq!(again.commit_lsn, commit.commit_lsn);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    // A terminated walsender is transient too.
    pg.psql(
        "db",
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'slot'",
    )
    .unwrap();
    let err = loop {
        match tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended without an error"),
            Err(e) => break e,
        }
    };
    assert!(err.is_transient(), "{err:?}");
}

/// Drains one large transaction with this client and with `pg_recvlogical`
/// from two slots at the same position and prints both times. Run with
/// `--ignored --nocapture` (preferably `--release`).
#[tokio::test]
#[ignore = "throughput measurement"]
async fn throughput_against_pg_recvlogical() {
    const ROWS: i64 = 300_000;
    let pg = cluster();
    pg.psql(
        "db",
        "CREATE TABLE items (id bigint PRIMARY KEY, title text, n numeric, at timestamptz)",
    )
    .unwrap();
    let mut stream = stream(&pg, &["items"]).await;
    let mut conn = connect(&pg).await;
    conn.create_slot("other", false).await.unwrap();
    pg.psql(
        "db",
        &format!(
            "INSERT INTO items SELECT i, md5(i::text), i * 1.5, now() \
             FROM generate_series(1, {ROWS}) i"
        ),
    )
    .unwrap();
    let end = conn.identify_system().await.unwrap().xlogpos;

    let started = std::time::Instant::now();
    let mut rows = 0;
    while rows < ROWS {
        if let PgOutput::Insert(_) = next_message(&mut stream).await {
            rows += 1;
        }
    }
    let ours = started.elapsed();

    let bindir = std::path::Path::new("/usr/lib/postgresql/15/bin");
    let started = std::time::Instant::now();
    let out = std::process::Command::new(bindir.join("pg_recvlogical"))
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "db",
            "--slot",
            "other",
        ])
        .arg(format!("--port={}", pg.port()))
        .args(["--start", "--no-loop", "-f", "/dev/null"])
        .args(["-o", "proto_version=1", "-o", "publication_names=pub"])
        .arg(format!("--endpos={end}"))
        .output()
        .unwrap();
    let theirs = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{ROWS} rows: outpost {ours:?}, pg_recvlogical {theirs:?}");
}
