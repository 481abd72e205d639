//! Postgres restarts under a running service: the service reconnects by
//! itself and changes made after the restart reach a syncing client.

use anyhow::ensure;
use outpost_tests::{Advance, BackgroundClient, ShapeQuery, TestDb, wait_for_replica};
use std::time::Duration;

const SETUP: &str = "
CREATE TABLE items (id bigint PRIMARY KEY, owner text NOT NULL, title text);
INSERT INTO items SELECT g, (ARRAY['alice', 'bob'])[1 + g % 2], 'item ' || g FROM generate_series(1, 50) g;
";

const SCHEMA: &str = r#"
[shapes.my_items]
table = "items"
columns = ["id", "owner", "title"]
where = "owner = auth.sub"
"#;

const WAIT: Duration = Duration::from_secs(45);

#[tokio::test(flavor = "multi_thread")]
async fn postgres_restart() -> anyhow::Result<()> {
    let mut db = TestDb::start(SETUP, SCHEMA).await?;
    let service = outpost::service::start(db.service_config()).await?;
    let server = format!("http://{}", service.addr);
    let oracle = db.oracle();
    let shape = ShapeQuery::new("items", &["id", "owner", "title"]).where_eq("owner", "alice");
    let path = db.replica_path("alice");
    let mut client = BackgroundClient::start(&server, &db.token("alice")?, &path);

    let rows = wait_for_replica(&oracle, &shape, &path, Advance::Background, WAIT)
        .await
        .map_err(|e| e.context(client.describe()))?
        .rows;
    ensure!(rows.len() == 25, "alice's initial rows: {}", rows.len());

    db.client()
        .await?
        .batch_execute("INSERT INTO items VALUES (101, 'alice', 'before restart')")
        .await?;
    wait_for_replica(&oracle, &shape, &path, Advance::Background, WAIT)
        .await
        .map_err(|e| e.context(client.describe()))?;

    db.restart_postgres()?;

    let pg = db.client().await?;
    pg.batch_execute("INSERT INTO items VALUES (102, 'alice', 'after restart')")
        .await?;
    pg.batch_execute("UPDATE items SET title = 'updated after restart' WHERE id = 1")
        .await?;
    pg.batch_execute("DELETE FROM items WHERE id = 3").await?;
    pg.batch_execute("UPDATE items SET owner = 'alice' WHERE id = 2")
        .await?;
    let rows = wait_for_replica(&oracle, &shape, &path, Advance::Background, WAIT)
        .await
        .map_err(|e| e.context(client.describe()))?
        .rows;
    ensure!(
        rows.by_id(102).is_some() && rows.by_id(2).is_some(),
        "rows after the restart: {:?}",
        rows.ids()
    );
    ensure!(
        rows.by_id(3).is_none(),
        "row 3 was deleted after the restart"
    );

    client.check_running().await?;
    client.stop().await;
    service.shutdown().await?;
    Ok(())
}
