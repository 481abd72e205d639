//! A client that synced 20,000 rows and stopped resumes from its cursors: ten
//! changes later a one-shot sync receives about ten rows, not the table. The
//! same holds across a clean restart of the service on the same data
//! directory (with changes made while it was down, and with none): the
//! service keeps its store and epoch, so nothing is downloaded again.

use anyhow::{Context, ensure};
use outpost_client::Replica;
use outpost_tests::{Advance, ShapeQuery, Synced, TestDb, wait_for_replica};
use std::path::Path;
use std::time::Duration;

const SETUP: &str = "
CREATE TABLE items (id bigint PRIMARY KEY, owner text NOT NULL, title text NOT NULL, n int NOT NULL DEFAULT 0);
INSERT INTO items SELECT g, CASE WHEN g <= 20000 THEN 'alice' ELSE 'bob' END, 'item ' || g, 0
  FROM generate_series(1, 21000) g;
";

const SCHEMA: &str = r#"
[shapes.my_items]
table = "items"
where = "owner = auth.sub"
"#;

const COLUMNS: &[&str] = &["id", "owner", "title", "n"];
const WAIT: Duration = Duration::from_secs(60);
/// Row operations a resumed session may receive for ten changed rows.
const SMALL: u64 = 12;

/// Ten changes to alice's shape: inserts, updates (one row twice), deletes,
/// a row leaving to bob and one arriving from bob; `round` keeps keys apart.
fn ten_changes(round: i64) -> String {
    let base = 100_000 * round;
    format!(
        "BEGIN;
         INSERT INTO items (id, owner, title) VALUES ({a}, 'alice', 'new a'), ({b}, 'alice', 'new b');
         COMMIT;
         UPDATE items SET title = 'changed', n = n + 1 WHERE id = {u1};
         UPDATE items SET n = n + 1 WHERE id = {u1};
         UPDATE items SET title = 'changed too' WHERE id = {u2};
         DELETE FROM items WHERE id IN ({d1}, {d2});
         UPDATE items SET owner = 'bob' WHERE id = {leave};
         UPDATE items SET owner = 'alice' WHERE id = {arrive};
         UPDATE items SET title = 'bob only' WHERE id = {bob};",
        a = base + 1,
        b = base + 2,
        u1 = 10 + round,
        u2 = 1000 + round,
        d1 = 2000 + round,
        d2 = 3000 + round,
        leave = 4000 + round,
        arrive = 20_100 + round,
        bob = 20_500 + round,
    )
}

fn shape() -> ShapeQuery {
    ShapeQuery::new("items", COLUMNS).where_eq("owner", "alice")
}

fn epoch(path: &Path) -> anyhow::Result<String> {
    let replica = Replica::open_read_only(path).context("opening alice's replica")?;
    let checkpoint = replica
        .checkpoint()?
        .context("alice's replica has no checkpoint")?;
    Ok(checkpoint.epoch)
}

async fn sync(db: &TestDb, server: &str, token: &str, what: &str) -> anyhow::Result<Synced> {
    let path = db.replica_path("alice");
    let once = Advance::Once { server, token };
    let synced = wait_for_replica(&db.oracle(), &shape(), &path, once, WAIT)
        .await
        .with_context(|| format!("syncing alice {what}"))?;
    tracing::info!(
        what,
        rows_received = synced.rows_received,
        syncs = synced.syncs,
        "synced"
    );
    Ok(synced)
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_without_redownload() -> anyhow::Result<()> {
    let db = TestDb::start(SETUP, SCHEMA).await?;
    let service = outpost::service::start(db.service_config()).await?;
    let server = format!("http://{}", service.addr);
    let token = db.token("alice")?;
    let pg = db.client().await?;
    let path = db.replica_path("alice");

    let synced = sync(&db, &server, &token, "from zero").await?;
    ensure!(
        synced.rows.len() == 20_000 && synced.rows_received == 20_000,
        "the first sync: {} rows, {} received",
        synced.rows.len(),
        synced.rows_received
    );
    let first_epoch = epoch(&path)?;

    pg.batch_execute(&ten_changes(1)).await?;
    let synced = sync(&db, &server, &token, "after ten changes").await?;
    ensure!(
        (1..=SMALL).contains(&synced.rows_received),
        "resuming after ten changes received {} rows (expected about 10, at most {SMALL}; the shape holds {})",
        synced.rows_received,
        synced.rows.len()
    );

    // A clean restart of the service on the same data directory, with ten
    // changes made while it is down.
    service.shutdown().await?;
    pg.batch_execute(&ten_changes(2)).await?;
    let service = outpost::service::start(db.service_config()).await?;
    let server = format!("http://{}", service.addr);
    let synced = sync(
        &db,
        &server,
        &token,
        "after a service restart and ten changes",
    )
    .await?;
    ensure!(
        (1..=SMALL).contains(&synced.rows_received),
        "resuming after a service restart and ten changes received {} rows \
         (expected about 10, at most {SMALL}; the shape holds {}): the service re-sent its store",
        synced.rows_received,
        synced.rows.len()
    );
    ensure!(
        epoch(&path)? == first_epoch,
        "the service's store epoch changed across a clean restart"
    );

    // Another restart without any change: nothing at all to receive.
    service.shutdown().await?;
    let service = outpost::service::start(db.service_config()).await?;
    let server = format!("http://{}", service.addr);
    let synced = sync(&db, &server, &token, "after a restart without changes").await?;
    ensure!(
        synced.rows_received == 0,
        "resuming after a restart without changes received {} rows, expected none",
        synced.rows_received
    );

    // And live changes still flow after the restarts.
    pg.batch_execute(&ten_changes(3)).await?;
    let synced = sync(&db, &server, &token, "after ten more changes").await?;
    ensure!(
        (1..=SMALL).contains(&synced.rows_received),
        "resuming after ten more changes received {} rows (expected about 10, at most {SMALL})",
        synced.rows_received
    );
    ensure!(
        epoch(&path)? == first_epoch,
        "the service's store epoch changed across clean restarts"
    );

    service.shutdown().await?;
    Ok(())
}
