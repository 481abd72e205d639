//! One Postgres transaction inserts 200,000 rows (half of them alice's), a
//! second one updates every one of alice's rows. A client syncing all along
//! only ever holds whole transactions (every checkpoint it applies shows
//! none, all or all-updated of alice's rows), ends equal to the oracle, and a
//! new client syncing from zero afterwards gets exactly the oracle too.

use anyhow::{Context, ensure};
use outpost_client::Replica;
use outpost_tests::{
    Advance, BackgroundClient, ShapeQuery, TestDb, check_events, wait_for_replica,
};
use std::path::Path;
use std::time::{Duration, Instant};

const SETUP: &str = "
CREATE TABLE items (id bigint PRIMARY KEY, owner text NOT NULL, v int NOT NULL, payload text NOT NULL);
INSERT INTO items SELECT g, 'alice', 0, 'before ' || g FROM generate_series(1, 10) g;
";

const SCHEMA: &str = r#"
[shapes.my_items]
table = "items"
where = "owner = auth.sub"
"#;

const COLUMNS: &[&str] = &["id", "owner", "v", "payload"];
const ROWS: i64 = 200_000;
/// Alice's rows before the big insert.
const BEFORE: i64 = 10;
const WAIT: Duration = Duration::from_secs(80);

fn shape(user: &str) -> ShapeQuery {
    ShapeQuery::new("items", COLUMNS).where_eq("owner", user)
}

/// Alice's rows at the replica's last checkpoint: (count, min v, max v, rows
/// whose payload is not of their version).
fn summary(path: &Path) -> anyhow::Result<Option<(i64, i64, i64, i64)>> {
    let replica = match Replica::open_read_only(path) {
        Ok(r) => r,
        Err(outpost_client::ClientError::NotAReplica { .. }) => return Ok(None),
        Err(e) => return Err(e).context("opening the replica"),
    };
    let conn = replica.connection();
    let exists: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'items'",
        [],
        |r| r.get(0),
    )?;
    if exists == 0 {
        return Ok(None);
    }
    let row = conn.query_row(
        "SELECT count(*), coalesce(min(v), -1), coalesce(max(v), -1),
                sum(CASE WHEN v = 1 AND payload NOT LIKE '% updated' THEN 1
                         WHEN v = 0 AND payload LIKE '% updated' THEN 1 ELSE 0 END)
         FROM items WHERE owner = 'alice'",
        [],
        |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get::<_, Option<i64>>(3)?.unwrap_or(0),
            ))
        },
    )?;
    Ok(Some(row))
}

/// Polls the replica until alice holds `count` rows at version `v`; fails if
/// it ever shows a state no transaction boundary had.
async fn watch_atomic(
    path: &Path,
    client: &mut BackgroundClient,
    allowed: &[(i64, i64)],
    target: (i64, i64),
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Some((count, min_v, max_v, torn)) = summary(path)? {
            let state = (count, min_v.max(0));
            ensure!(
                min_v == max_v && torn == 0 && allowed.contains(&state),
                "the replica shows a partial transaction: {count} rows of alice, v from {min_v} to {max_v}, \
                 {torn} rows with a payload of another version; whole states are {allowed:?}"
            );
            if state == target {
                return Ok(());
            }
        }
        client.check_running().await?;
        ensure!(
            started.elapsed() < WAIT,
            "the replica did not reach {target:?} (count, v): {}",
            client.describe()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn large_transaction() -> anyhow::Result<()> {
    let db = TestDb::start(SETUP, SCHEMA).await?;
    let service = outpost::service::start(db.service_config()).await?;
    let server = format!("http://{}", service.addr);
    let oracle = db.oracle();
    let token = db.token("alice")?;
    let path = db.replica_path("alice");
    let mut client = BackgroundClient::start(&server, &token, &path);
    wait_for_replica(&oracle, &shape("alice"), &path, Advance::Background, WAIT)
        .await
        .map_err(|e| e.context(client.describe()))?;

    let pg = db.client().await?;
    let started = Instant::now();
    pg.batch_execute(&format!(
        "INSERT INTO items SELECT g, CASE WHEN g % 2 = 0 THEN 'alice' ELSE 'bob' END, 0, 'row ' || g
         FROM generate_series({}, {}) g",
        BEFORE + 1,
        BEFORE + ROWS
    ))
    .await?;
    let alice_rows = BEFORE + ROWS / 2;
    watch_atomic(
        &path,
        &mut client,
        &[(BEFORE, 0), (alice_rows, 0)],
        (alice_rows, 0),
    )
    .await
    .context("after the big insert")?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "insert synced"
    );

    let started = Instant::now();
    pg.batch_execute(
        "UPDATE items SET v = 1, payload = payload || ' updated' WHERE owner = 'alice'",
    )
    .await?;
    watch_atomic(
        &path,
        &mut client,
        &[(alice_rows, 0), (alice_rows, 1)],
        (alice_rows, 1),
    )
    .await
    .context("after the big update")?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "update synced"
    );

    let synced = wait_for_replica(&oracle, &shape("alice"), &path, Advance::Background, WAIT)
        .await
        .map_err(|e| e.context(client.describe()))?;
    ensure!(
        synced.rows.len() as i64 == alice_rows,
        "alice holds {} rows, expected {alice_rows}",
        synced.rows.len()
    );
    client.check_running().await?;
    let counts = check_events(client.events())?;
    tracing::info!(?counts, "events");
    client.stop().await;

    // A new client from zero.
    let fresh = db.replica_path("alice-fresh");
    let once = Advance::Once {
        server: &server,
        token: &token,
    };
    let synced = wait_for_replica(&oracle, &shape("alice"), &fresh, once, WAIT)
        .await
        .context("a fresh replica of alice")?;
    ensure!(
        synced.rows_received == alice_rows as u64,
        "the fresh replica received {} rows for alice's {alice_rows}",
        synced.rows_received
    );

    service.shutdown().await?;
    Ok(())
}
