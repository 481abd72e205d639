//! The `outpost-client` binary: sync, status, query and exec against a
//! scripted in-process service.

mod common;

use common::{
    A, B, Fake, Script, answer_each, applied, bucket, checkpoint, data, initial, lsn, rejected,
    schema, serve,
};
use std::process::Output;
use std::time::Duration;
use tonic::Status;

async fn run(args: &[&str], token: Option<&str>) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_outpost-client"));
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .env_remove("OUTPOST_TOKEN");
    if let Some(token) = token {
        cmd.env("OUTPOST_TOKEN", token);
    }
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("timed out")
        .expect("run outpost-client")
}

/// Runs `query` for every todo, ordered by id.
async fn query_todos(db: &str) -> Output {
    run(
        &[
            "query",
            "--db",
            db,
            "SELECT id, title FROM todos ORDER BY id",
        ],
        None,
    )
    .await
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn sync_status_and_query() {
    let fake = Fake::new(vec![Script::Send(initial())]);
    let (url, _server) = serve(fake.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("replica.db");
    let db = db.to_str().expect("utf-8 path");

    let out = run(
        &[
            "sync", "--server", &url, "--db", db, "--shape", "todos", "--once",
        ],
        Some("tok"),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("3 rows applied"), "{stderr}");
    assert!(stderr.contains("at op 10 LSN 1/A"), "{stderr}");
    let calls = fake.calls();
    assert_eq!(calls[0].authorization.as_deref(), Some("Bearer tok"));
    assert_eq!(calls[0].request.shapes[0].name, "todos");

    let out = run(&["status", "--db", db], None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status = text(&out.stdout);
    assert!(status.contains("op 10 at LSN 1/A (epoch e1)"), "{status}");
    assert!(status.contains("buckets (2):"), "{status}");
    assert!(
        status.contains("todos") && status.contains("3 rows"),
        "{status}"
    );

    let out = query_todos(db).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "id\ttitle\n1\tone\n2\ttwo\n3\tthree\n");

    let out = run(&["query", "--db", db, "DELETE FROM todos"], None).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("read-only"));

    // Resuming sends the stored cursors and downloads nothing again.
    fake.push(Script::Send(vec![
        schema(),
        data("b", &[]),
        checkpoint(11, vec![bucket("a", A), bucket("b", B)]),
    ]));
    let out = run(
        &[
            "sync", "--server", &url, "--token", "tok", "--db", db, "--once",
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("0 rows received"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn refused_tokens_end_the_sync_with_advice() {
    let fake = Fake::new(vec![Script::Fail(Status::unauthenticated(
        "signature invalid",
    ))]);
    let (url, _server) = serve(fake.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("replica.db");
    let out = run(
        &[
            "sync",
            "--server",
            &url,
            "--db",
            db.to_str().expect("utf-8 path"),
        ],
        Some("bad"),
    )
    .await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("signature invalid") && stderr.contains("get a new token"),
        "{stderr}"
    );
    assert_eq!(fake.calls().len(), 1);

    let out = run(&["status", "--db", db.to_str().expect("utf-8 path")], None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("checkpoint:     none yet"));
}

#[tokio::test]
async fn exec_writes_locally_and_sync_uploads() {
    let fake = Fake::new(vec![Script::Send(initial())]);
    let (url, _server) = serve(fake.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("replica.db");
    let db = db.to_str().expect("utf-8 path");
    let sync_once = ["sync", "--server", &url, "--db", db, "--once"];
    let out = run(&sync_once, Some("tok")).await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = run(
        &[
            "exec",
            "--db",
            db,
            "UPDATE todos SET title = 'uno' WHERE id = 1; INSERT INTO todos VALUES (4, 'four')",
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "2 row(s) changed\n");
    let out = run(
        &["exec", "--db", db, "INSERT INTO todos VALUES (5, 'five')"],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A failing statement writes nothing.
    let out = run(
        &[
            "exec",
            "--db",
            db,
            "UPDATE todos SET title = 'x' WHERE id = 2; INSERT INTO nope VALUES (1)",
        ],
        None,
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no such table"),
        "{}",
        text(&out.stderr)
    );

    let out = run(&["status", "--db", db], None).await;
    let status = text(&out.stdout);
    assert!(
        status.contains("outbox:         2 group(s), 3 op(s) to upload"),
        "{status}"
    );
    let out = query_todos(db).await;
    assert_eq!(
        text(&out.stdout),
        "id\ttitle\n1\tuno\n2\ttwo\n3\tthree\n4\tfour\n5\tfive\n"
    );

    // The service applies the first group and refuses the second.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(schema()).expect("send");
    tx.send(checkpoint(10, vec![bucket("a", A), bucket("b", B)]))
        .expect("send");
    fake.push(Script::Live(rx));
    fake.answer_writes(move |request| {
        let a: &[(i64, &str)] = &[(1, "uno"), (2, "two"), (4, "four")];
        let _ = tx.send(data("a", &[(1, "uno"), (4, "four")]));
        let _ = tx.send(checkpoint(20, vec![bucket("a", a), bucket("b", B)]));
        let first = request.groups[0].seq;
        answer_each(request, |seq| {
            if seq == first {
                applied(seq, lsn(20))
            } else {
                rejected(seq, "check_violation", "title too short")
            }
        })
    });
    let out = run(&sync_once, Some("tok")).await;
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("uploaded 2 local write group(s), 1 rejected"),
        "{stderr}"
    );
    assert!(
        stderr.contains("check_violation: title too short"),
        "{stderr}"
    );
    assert!(stderr.contains("at op 20"), "{stderr}");

    let out = run(&["status", "--db", db], None).await;
    let status = text(&out.stdout);
    assert!(status.contains("outbox:         0 group(s)"), "{status}");
    assert!(
        status.contains("awaiting checkpoint: 0 group(s)"),
        "{status}"
    );
    assert!(status.contains("rejections (1):"), "{status}");
    assert!(
        status.contains("INSERT todos [5]  check_violation: title too short"),
        "{status}"
    );
    let out = query_todos(db).await;
    assert_eq!(
        text(&out.stdout),
        "id\ttitle\n1\tuno\n2\ttwo\n3\tthree\n4\tfour\n"
    );

    let missing = dir.path().join("missing.db");
    let out = run(
        &[
            "exec",
            "--db",
            missing.to_str().expect("utf-8 path"),
            "DELETE FROM todos",
        ],
        None,
    )
    .await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("is not an Outpost replica"));
    assert!(!missing.exists());
}
