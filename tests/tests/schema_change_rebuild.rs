//! A shape's `WHERE` changes while the service is stopped: on the next start
//! the compiled schema version differs, so the service rebuilds its store
//! from a new snapshot under a new epoch. Clients holding cursors of the old
//! epoch — one that kept running across the restart, one that syncs later
//! with `once` — end equal to the new oracle: rows that no longer match are
//! gone, changes made while the service was down are there. A second change
//! renames the shape: the old bucket leaves the replicas.

use anyhow::{Context, ensure};
use outpost_client::{Replica, SyncEvent};
use outpost_tests::{
    Advance, BackgroundClient, ShapeQuery, TestDb, check_events, free_port, wait_for_replica,
};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const SETUP: &str = "
CREATE TABLE items (id bigint PRIMARY KEY, owner text NOT NULL, title text NOT NULL,
  archived boolean NOT NULL DEFAULT false);
INSERT INTO items SELECT g, (ARRAY['alice', 'bob', 'carol'])[1 + g % 3], 'item ' || g, g % 4 = 0
  FROM generate_series(1, 3000) g;
";

const SCHEMA_A: &str = r#"
[shapes.my_items]
table = "items"
where = "owner = auth.sub"
"#;

const SCHEMA_B: &str = r#"
[shapes.my_items]
table = "items"
where = "owner = auth.sub AND NOT archived"
"#;

const SCHEMA_C: &str = r#"
[shapes.visible_items]
table = "items"
where = "owner = auth.sub AND NOT archived AND title <> 'hidden'"
"#;

const COLUMNS: &[&str] = &["id", "owner", "title", "archived"];
const WAIT: Duration = Duration::from_secs(60);

fn shape_a(user: &str) -> ShapeQuery {
    ShapeQuery::new("items", COLUMNS).where_eq("owner", user)
}

fn shape_b(user: &str) -> ShapeQuery {
    ShapeQuery::new("items", COLUMNS).filtered(format!("owner = '{user}' AND NOT archived"))
}

fn shape_c(user: &str) -> ShapeQuery {
    ShapeQuery::new("items", COLUMNS).filtered(format!(
        "owner = '{user}' AND NOT archived AND title <> 'hidden'"
    ))
}

fn epoch(path: &Path) -> anyhow::Result<String> {
    let replica = Replica::open_read_only(path).context("opening a replica")?;
    let checkpoint = replica
        .checkpoint()?
        .context("the replica has no checkpoint")?;
    Ok(checkpoint.epoch)
}

/// The schema version the replica last received.
fn schema_version(path: &Path) -> anyhow::Result<String> {
    let replica = Replica::open_read_only(path).context("opening a replica")?;
    replica
        .schema_version()?
        .context("the replica has no schema version")
}

/// The replica's buckets, by name.
fn buckets(path: &Path) -> anyhow::Result<Vec<String>> {
    let replica = Replica::open_read_only(path).context("opening a replica")?;
    Ok(replica.buckets()?.into_iter().map(|b| b.bucket).collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_change_rebuild() -> anyhow::Result<()> {
    let db = TestDb::start(SETUP, SCHEMA_A).await?;
    let port = free_port()?;
    let mut cfg = db.service_config();
    cfg.listen = SocketAddr::from(([127, 0, 0, 1], port));
    let server = format!("http://127.0.0.1:{port}");
    let oracle = db.oracle();
    let pg = db.client().await?;
    let (alice_token, bob_token) = (db.token("alice")?, db.token("bob")?);
    let (alice_db, bob_db) = (db.replica_path("alice"), db.replica_path("bob"));
    let bob_once = || Advance::Once {
        server: &server,
        token: &bob_token,
    };

    // Shape A: every row of the owner, archived or not.
    let service = outpost::service::start(cfg.clone()).await?;
    let mut alice = BackgroundClient::start(&server, &alice_token, &alice_db);
    wait_for_replica(
        &oracle,
        &shape_a("alice"),
        &alice_db,
        Advance::Background,
        WAIT,
    )
    .await
    .map_err(|e| e.context(alice.describe()))?;
    pg.batch_execute(
        "UPDATE items SET title = 'live' WHERE id IN (3, 6, 9);
         INSERT INTO items VALUES (5001, 'bob', 'archived live', true), (5002, 'bob', 'live', false);",
    )
    .await?;
    wait_for_replica(
        &oracle,
        &shape_a("alice"),
        &alice_db,
        Advance::Background,
        WAIT,
    )
    .await
    .map_err(|e| e.context(alice.describe()))?;
    let bob_rows = wait_for_replica(&oracle, &shape_a("bob"), &bob_db, bob_once(), WAIT)
        .await?
        .rows;
    let archived = oracle
        .rows(&shape_a("bob").filtered("owner = 'bob' AND archived"))
        .await?;
    ensure!(
        archived.len() > 100
            && archived
                .ids()
                .iter()
                .all(|id| bob_rows.by_id(*id).is_some()),
        "under shape A bob holds his {} archived rows",
        archived.len()
    );
    let epoch_a = epoch(&alice_db)?;
    let version_a = schema_version(&alice_db)?;
    ensure!(
        epoch(&bob_db)? == epoch_a,
        "alice and bob have different epochs"
    );

    // Shape B, with changes made while the service is down.
    let seen = alice.events().len();
    service.shutdown().await?;
    std::fs::write(db.schema_dir().join("app.toml"), SCHEMA_B)?;
    pg.batch_execute(
        "UPDATE items SET archived = false WHERE id = 4;
         UPDATE items SET archived = true WHERE id IN (1, 2);
         INSERT INTO items VALUES (5003, 'alice', 'down', false), (5004, 'bob', 'down', true);
         DELETE FROM items WHERE id IN (5, 7);",
    )
    .await?;
    let service = outpost::service::start(cfg.clone()).await?;
    wait_for_replica(
        &oracle,
        &shape_b("alice"),
        &alice_db,
        Advance::Background,
        WAIT,
    )
    .await
    .map_err(|e| e.context(format!("alice after the rebuild: {}", alice.describe())))?;
    let epoch_b = epoch(&alice_db)?;
    ensure!(
        epoch_b != epoch_a,
        "the service kept its epoch {epoch_a} although the shape's WHERE changed"
    );
    let version_b = schema_version(&alice_db)?;
    ensure!(
        version_b != version_a,
        "the schema version {version_a} did not change with the shape's WHERE"
    );
    let reset = alice.events()[seen..]
        .iter()
        .any(|e| matches!(e, SyncEvent::BucketReset { removed: false, .. }));
    ensure!(
        reset,
        "alice's running client got no bucket reset for the new epoch: {}",
        alice.describe()
    );
    let bob_rows = wait_for_replica(&oracle, &shape_b("bob"), &bob_db, bob_once(), WAIT)
        .await
        .context("bob's replica, synced with cursors of the old epoch")?
        .rows;
    let archived_now = oracle
        .rows(&shape_a("bob").filtered("owner = 'bob' AND archived"))
        .await?;
    let kept: Vec<i64> = archived_now
        .ids()
        .into_iter()
        .filter(|id| bob_rows.by_id(*id).is_some())
        .collect();
    ensure!(
        archived_now.len() > 100 && kept.is_empty(),
        "bob's archived rows {kept:?} are still in his replica"
    );
    ensure!(
        epoch(&bob_db)? == epoch_b,
        "bob's replica is not at the new epoch"
    );

    // Live changes flow under the new shape.
    pg.batch_execute(
        "UPDATE items SET archived = true WHERE id IN (10, 11, 12);
         UPDATE items SET archived = false WHERE id IN (16, 20);
         INSERT INTO items VALUES (5005, 'alice', 'after', false);",
    )
    .await?;
    wait_for_replica(
        &oracle,
        &shape_b("alice"),
        &alice_db,
        Advance::Background,
        WAIT,
    )
    .await
    .map_err(|e| e.context(alice.describe()))?;

    // Shape C under a new name: the old bucket leaves the replicas.
    service.shutdown().await?;
    std::fs::write(db.schema_dir().join("app.toml"), SCHEMA_C)?;
    pg.batch_execute("UPDATE items SET title = 'hidden' WHERE id IN (3, 6, 13, 14);")
        .await?;
    let old_buckets = buckets(&alice_db)?;
    let service = outpost::service::start(cfg.clone()).await?;
    wait_for_replica(
        &oracle,
        &shape_c("alice"),
        &alice_db,
        Advance::Background,
        WAIT,
    )
    .await
    .map_err(|e| e.context(format!("alice after the rename: {}", alice.describe())))?;
    wait_for_replica(&oracle, &shape_c("bob"), &bob_db, bob_once(), WAIT)
        .await
        .context("bob after the rename")?;
    let epoch_c = epoch(&alice_db)?;
    ensure!(
        epoch_c != epoch_b,
        "the service kept its epoch although the shapes changed"
    );
    let new_buckets = buckets(&alice_db)?;
    ensure!(
        old_buckets.iter().all(|b| !new_buckets.contains(b))
            && new_buckets.iter().all(|b| b.starts_with("visible_items")),
        "alice's buckets after the rename: {new_buckets:?} (before: {old_buckets:?})"
    );

    alice.check_running().await?;
    let counts = check_events(alice.events()).context("alice's session")?;
    tracing::info!(?counts, "alice's events");
    alice.stop().await;
    service.shutdown().await?;
    Ok(())
}
