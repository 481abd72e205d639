//! The `outpost-client` binary: sync, status and query against a scripted
//! in-process service.

mod common;

use common::{A, B, Fake, Script, bucket, checkpoint, data, initial, schema, serve};
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

    let out = run(
        &[
            "query",
            "--db",
            db,
            "SELECT id, title FROM todos ORDER BY id",
        ],
        None,
    )
    .await;
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
