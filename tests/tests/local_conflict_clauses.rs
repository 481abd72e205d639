//! Apps write synced tables with every form of SQLite's conflict handling:
//! `INSERT … ON CONFLICT DO UPDATE` (an upsert that updates), `UPDATE OR
//! ABORT`, `INSERT OR REPLACE` over a row with local changes, `INSERT OR
//! IGNORE`. Each local write succeeds, uploads, and the replica ends equal
//! to Postgres — including a row whose groups were all refused, which must
//! show the server's values again.
//!
//! Every problem is collected and reported at once.

use anyhow::Context;
use outpost_tests::writer::{pending_groups, rejections};
use outpost_tests::{Advance, ShapeQuery, TestDb, sync_once, wait_settled, write_local};
use std::path::Path;
use std::time::Duration;

const SETUP: &str = "
CREATE TABLE items (
    id bigint PRIMARY KEY,
    owner text NOT NULL,
    title text NOT NULL CHECK (title <> ''),
    n int NOT NULL DEFAULT 0
);
INSERT INTO items VALUES
  (1, 'alice', 'one', 0), (2, 'alice', 'two', 0), (3, 'alice', 'three', 0), (4, 'alice', 'four', 0);
";

const SCHEMA: &str = r#"
[shapes.my_items]
table = "items"
where = "owner = auth.sub"

[tables.items]
insert = "new.owner = auth.sub"
update = "old.owner = auth.sub AND new.owner = auth.sub"
delete = "old.owner = auth.sub"
"#;

const WAIT: Duration = Duration::from_secs(30);

fn shape() -> ShapeQuery {
    ShapeQuery::new("items", &["id", "owner", "title", "n"]).where_eq("owner", "alice")
}

/// The local writes: (what they show, SQL).
const WRITES: [(&str, &str); 8] = [
    (
        "an upsert that updates row 2",
        "INSERT INTO items (id, owner, title, n) VALUES (2, 'alice', 'upserted', 0)
         ON CONFLICT (id) DO UPDATE SET title = excluded.title",
    ),
    (
        "a second upsert of row 2 (the row has local changes)",
        "INSERT INTO items (id, owner, title, n) VALUES (2, 'alice', 'upserted again', 0)
         ON CONFLICT (id) DO UPDATE SET title = excluded.title",
    ),
    (
        "UPDATE OR ABORT of row 3",
        "UPDATE OR ABORT items SET title = 'abort 1' WHERE id = 3",
    ),
    (
        "a second UPDATE OR ABORT of row 3 (the row has local changes)",
        "UPDATE OR ABORT items SET title = 'abort 2' WHERE id = 3",
    ),
    (
        "INSERT OR IGNORE of a new row 5",
        "INSERT OR IGNORE INTO items (id, owner, title, n) VALUES (5, 'alice', 'five', 0)",
    ),
    (
        "an update of row 1 that Postgres refuses (CHECK)",
        "UPDATE items SET title = '' WHERE id = 1",
    ),
    (
        "INSERT OR REPLACE of row 1 (local changes) that the write rules refuse",
        "INSERT OR REPLACE INTO items (id, owner, title, n) VALUES (1, 'bob', 'stolen', 0)",
    ),
    (
        "INSERT OR REPLACE of row 4",
        "INSERT OR REPLACE INTO items (id, owner, title, n) VALUES (4, 'alice', 'replaced', 0)",
    ),
];

/// What Postgres holds once every write is answered.
const EXPECTED: &str =
    "1|alice|one\n2|alice|upserted again\n3|alice|abort 2\n4|alice|replaced\n5|alice|five";

async fn pg_rows(db: &TestDb) -> anyhow::Result<String> {
    let pg = db.client().await?;
    let rows = pg
        .query("SELECT id, owner, title FROM items ORDER BY id", &[])
        .await?;
    let lines: Vec<String> = rows
        .iter()
        .map(|r| -> anyhow::Result<String> {
            Ok(format!(
                "{}|{}|{}",
                r.try_get::<_, i64>(0)?,
                r.try_get::<_, String>(1)?,
                r.try_get::<_, String>(2)?
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(lines.join("\n"))
}

fn local_rows(path: &Path) -> anyhow::Result<String> {
    let rows = outpost_tests::replica_rows(path, &shape())?;
    Ok(format!("{:?}", rows.rows.values().collect::<Vec<_>>()))
}

#[tokio::test(flavor = "multi_thread")]
async fn local_conflict_clauses() -> anyhow::Result<()> {
    let db = TestDb::start(SETUP, SCHEMA).await?;
    let service = outpost::service::start(db.service_config()).await?;
    let server = format!("http://{}", service.addr);
    let oracle = db.oracle();
    let token = db.token("alice")?;
    let path = db.replica_path("alice");
    let once = Advance::Once {
        server: &server,
        token: &token,
    };
    wait_settled(&oracle, &[shape()], &path, &once, WAIT)
        .await
        .context("initial sync")?;

    let mut problems = Vec::new();
    for (what, sql) in WRITES {
        if let Err(e) = write_local(&path, sql) {
            problems.push(format!("{what}: the local write failed: {e:#}"));
        }
    }
    tracing::info!(rows = %local_rows(&path)?, "the replica before the upload");

    match sync_once(&server, &token, &path, WAIT).await? {
        Ok(summary) => tracing::info!(?summary, "uploaded"),
        Err(e) => problems.push(format!("the one-shot sync failed: {e}")),
    }
    let refused: Vec<String> = rejections(&path)?
        .iter()
        .map(|r| format!("{} {} {}: {}", r.kind, r.key, r.reason_code, r.message))
        .collect();
    let pg = pg_rows(&db).await?;
    if pg != EXPECTED {
        problems.push(format!(
            "Postgres holds\n{pg}\n  expected\n{EXPECTED}\n  refused ops: {refused:#?}"
        ));
    }
    let pending = pending_groups(&path)?;
    if !pending.is_empty() {
        problems.push(format!("groups still pending: {pending:?}"));
    }
    if let Err(e) = wait_settled(&oracle, &[shape()], &path, &once, Duration::from_secs(10)).await {
        problems.push(format!(
            "the replica does not settle equal to Postgres: {e:#}"
        ));
    }
    service.shutdown().await?;
    anyhow::ensure!(
        problems.is_empty(),
        "{} problems:\n- {}",
        problems.len(),
        problems.join("\n- ")
    );
    Ok(())
}
