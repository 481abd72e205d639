//! Last writer wins, per column, between two devices of one user that write
//! offline: edits of different columns both survive; edits of the same
//! column resolve to the later clock, whichever device uploads first.

use anyhow::{Context, ensure};
use outpost_tests::writer::{client_id, ledger, outbox_groups};
use outpost_tests::{Advance, ShapeQuery, TestDb, int, sync_once, text, wait_settled, write_local};
use std::path::Path;
use std::time::Duration;

const SETUP: &str = "
CREATE TABLE todos (
    id bigint PRIMARY KEY,
    owner text NOT NULL,
    title text NOT NULL,
    done boolean NOT NULL DEFAULT false
);
INSERT INTO todos VALUES
  (1, 'alice', 'buy milk', false),
  (2, 'alice', 'call mum', false),
  (3, 'bob', 'bobs', false);
";

const SCHEMA: &str = r#"
[shapes.my_todos]
table = "todos"
where = "owner = auth.sub"

[tables.todos]
insert = "new.owner = auth.sub"
update = "old.owner = auth.sub AND new.owner = auth.sub"
delete = "old.owner = auth.sub"
"#;

const WAIT: Duration = Duration::from_secs(30);

fn shape() -> ShapeQuery {
    ShapeQuery::new("todos", &["id", "owner", "title", "done"]).where_eq("owner", "alice")
}

/// The latest clock of the groups waiting in the outbox at `path`.
fn last_clock(path: &Path) -> anyhow::Result<u64> {
    let groups = outbox_groups(path)?;
    groups
        .iter()
        .flat_map(|g| g.hlcs.iter().copied())
        .max()
        .with_context(|| format!("no group waits in the outbox of {}", path.display()))
}

/// Uploads the outbox of `path` with a one-shot sync, which returns once
/// every group is answered and brought back by a checkpoint.
async fn upload(server: &str, token: &str, path: &Path, groups: u64) -> anyhow::Result<()> {
    let summary = sync_once(server, token, path, WAIT)
        .await?
        .with_context(|| format!("syncing {}", path.display()))?;
    ensure!(
        summary.groups_uploaded == groups && summary.groups_rejected == 0,
        "{}: expected {groups} groups applied and none rejected: {summary:?}",
        path.display()
    );
    Ok(())
}

/// The title of row `id` in Postgres.
async fn pg_title(pg: &tokio_postgres::Client, id: i64) -> anyhow::Result<String> {
    Ok(pg
        .query_one("SELECT title FROM todos WHERE id = $1", &[&id])
        .await?
        .try_get(0)?)
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_lww_columns() -> anyhow::Result<()> {
    let db = TestDb::start(SETUP, SCHEMA).await?;
    let service = outpost::service::start(db.service_config()).await?;
    let server = format!("http://{}", service.addr);
    let oracle = db.oracle();
    let pg = db.client().await?;
    let token = db.token("alice")?;
    let (a, b) = (db.replica_path("phone"), db.replica_path("laptop"));
    let settle = |path: &Path| {
        let (oracle, server, token, path) = (&oracle, &server, &token, path.to_path_buf());
        async move {
            let once = Advance::Once { server, token };
            wait_settled(oracle, &[shape()], &path, &once, WAIT)
                .await
                .with_context(|| format!("settling {}", path.display()))
        }
    };

    // Both devices hold the rows, then go offline.
    settle(&a).await?;
    settle(&b).await?;
    ensure!(
        client_id(&a)? != client_id(&b)?,
        "two installations, two client ids"
    );

    // Different columns of the same row.
    write_local(&a, "UPDATE todos SET title = 'buy oat milk' WHERE id = 1")?;
    write_local(&b, "UPDATE todos SET done = 1 WHERE id = 1")?;
    upload(&server, &token, &a, 1).await?;
    upload(&server, &token, &b, 1).await?;
    let row = pg
        .query_one("SELECT title, done FROM todos WHERE id = 1", &[])
        .await?;
    let (title, done): (String, bool) = (row.try_get(0)?, row.try_get(1)?);
    ensure!(
        title == "buy oat milk" && done,
        "both edits must survive in Postgres: title {title:?}, done {done}"
    );
    settle(&a).await?;
    settle(&b).await?;
    for path in [&a, &b] {
        let rows = outpost_tests::replica_rows(path, &shape())?;
        ensure!(
            rows.value(1, "title") == Some(&text("buy oat milk"))
                && rows.value(1, "done") == Some(&int(1)),
            "{}: row 1 is {:?}",
            path.display(),
            rows.by_id(1)
        );
    }

    // The same column, B after A; B uploads first, so A's older write
    // arrives last and must lose.
    write_local(&a, "UPDATE todos SET title = 'A: eggs' WHERE id = 2")?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    write_local(&b, "UPDATE todos SET title = 'B: bread' WHERE id = 2")?;
    let (clock_a, clock_b) = (last_clock(&a)?, last_clock(&b)?);
    ensure!(
        clock_b > clock_a,
        "B wrote after A, so its clock must be later: A {clock_a}, B {clock_b}"
    );
    upload(&server, &token, &b, 1).await?;
    upload(&server, &token, &a, 1).await?;
    let title = pg_title(&pg, 2).await?;
    ensure!(
        title == "B: bread",
        "the later write (B, clock {clock_b}) must win over A's (clock {clock_a}) that arrived \
         after it; Postgres has {title:?}"
    );
    settle(&a).await?;
    settle(&b).await?;

    // Again, A uploading first this time: the later write wins either way.
    write_local(&a, "UPDATE todos SET title = 'A: jam' WHERE id = 2")?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    write_local(&b, "UPDATE todos SET title = 'B: butter' WHERE id = 2")?;
    let (clock_a, clock_b) = (last_clock(&a)?, last_clock(&b)?);
    ensure!(
        clock_b > clock_a,
        "B wrote after A: A {clock_a}, B {clock_b}"
    );
    upload(&server, &token, &a, 1).await?;
    ensure!(
        pg_title(&pg, 2).await? == "A: jam",
        "A's write is newer than what Postgres held"
    );
    upload(&server, &token, &b, 1).await?;
    let title = pg_title(&pg, 2).await?;
    ensure!(
        title == "B: butter",
        "B's later write must win; Postgres has {title:?}"
    );
    settle(&a).await?;
    settle(&b).await?;
    for path in [&a, &b] {
        let rows = outpost_tests::replica_rows(path, &shape())?;
        ensure!(
            rows.value(2, "title") == Some(&text("B: butter")),
            "{}: row 2 is {:?}",
            path.display(),
            rows.by_id(2)
        );
    }

    // Every group was applied once: three per device.
    for path in [&a, &b] {
        let entries = ledger(&pg, &client_id(path)?).await?;
        ensure!(
            entries.len() == 3 && entries.iter().all(|e| e.status == "applied"),
            "{}: the service's ledger holds {entries:?}",
            path.display()
        );
    }
    service.shutdown().await?;
    Ok(())
}
