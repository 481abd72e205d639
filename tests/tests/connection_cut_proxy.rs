//! A TCP proxy between a client and the service cuts the client's connection
//! again and again: in the middle of its initial download, then five times
//! during a burst of changes (each time refusing connections for a while, and
//! now and then cutting the reconnect itself in the middle of its catch-up).
//! The client must reconnect with backoff and end equal to its oracle, its
//! checkpoints never going back nor applying rows twice, without a checksum
//! mismatch or a bucket reset; a last session from its cursors receives
//! nothing. A second client, connected directly, is the control.
//! `OUTPOST_TEST_SEED` replays a run.

use anyhow::{Context, ensure};
use outpost_client::SyncEvent;
use outpost_tests::{
    Advance, BackgroundClient, ShapeQuery, TcpProxy, TestDb, check_events, sync_once, test_seed,
    wait_for_replica,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const SETUP: &str = "
CREATE TABLE items (id bigint PRIMARY KEY, owner text NOT NULL, title text NOT NULL,
  n int NOT NULL DEFAULT 0, pad text);
INSERT INTO items SELECT g, (ARRAY['alice', 'bob', 'carol'])[1 + g % 3], 'item ' || g, 0,
  repeat(md5(g::text), 4)
  FROM generate_series(1, 6000) g;
";

const SCHEMA: &str = r#"
[shapes.my_items]
table = "items"
where = "owner = auth.sub"
"#;

const COLUMNS: &[&str] = &["id", "owner", "title", "n", "pad"];
const OWNERS: [&str; 3] = ["alice", "bob", "carol"];
const BURST_OPS: usize = 3000;
const MAX_ID: i64 = 7000;
const CUTS: usize = 5;
const WAIT: Duration = Duration::from_secs(60);

fn shape(user: &str) -> ShapeQuery {
    ShapeQuery::new("items", COLUMNS).where_eq("owner", user)
}

/// Random row operations in transactions of 1–5, never past `allowed`.
async fn burst(
    client: tokio_postgres::Client,
    seed: u64,
    done: Arc<AtomicUsize>,
    allowed: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xc07);
    let mut ops = 0usize;
    while ops < BURST_OPS {
        while ops >= allowed.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut sql = String::from("BEGIN;");
        for _ in 0..rng.random_range(1..=5usize) {
            let id = rng.random_range(1..=MAX_ID);
            let owner = OWNERS[rng.random_range(0..OWNERS.len())];
            match rng.random_range(0..10u32) {
                0..=2 => write!(
                    sql,
                    "INSERT INTO items (id, owner, title, pad) VALUES ({id}, '{owner}', 'ins {ops}', repeat('p', {})) \
                     ON CONFLICT (id) DO UPDATE SET title = excluded.title, n = items.n + 1;",
                    rng.random_range(0..300)
                )?,
                3..=5 => write!(
                    sql,
                    "UPDATE items SET title = 'upd {ops}', n = n + 1 WHERE id = {id};"
                )?,
                6 => write!(sql, "DELETE FROM items WHERE id = {id};")?,
                7 => write!(
                    sql,
                    "UPDATE items SET n = n + 1 WHERE id BETWEEN {id} AND {};",
                    id + 20
                )?,
                _ => write!(sql, "UPDATE items SET owner = '{owner}' WHERE id = {id};")?,
            }
            ops += 1;
        }
        sql.push_str("COMMIT;");
        client
            .batch_execute(&sql)
            .await
            .with_context(|| format!("burst transaction (seed {seed}): {sql}"))?;
        done.store(ops, Ordering::SeqCst);
        if ops % 50 < 5 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}

/// Waits until `client` streams live through `proxy`: a connection is open
/// and the client applied a checkpoint since it last connected.
async fn wait_for_live(client: &mut BackgroundClient, proxy: &TcpProxy) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let events = client.events();
        let since_connect = events
            .iter()
            .rposition(|e| matches!(e, SyncEvent::Connected))
            .map(|i| &events[i..]);
        let live = since_connect.is_some_and(|events| {
            events
                .iter()
                .any(|e| matches!(e, SyncEvent::Checkpoint { .. }))
                && !events
                    .iter()
                    .any(|e| matches!(e, SyncEvent::Disconnected { .. }))
        });
        if live && proxy.open_connections() > 0 {
            return Ok(());
        }
        client.check_running().await?;
        ensure!(
            started.elapsed() < WAIT,
            "the client did not stream live again through the proxy: {}",
            client.describe()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_cut_proxy() -> anyhow::Result<()> {
    let seed = test_seed("connection_cut_proxy");
    let mut rng = StdRng::seed_from_u64(seed);
    let db = TestDb::start(SETUP, SCHEMA).await?;
    let service = outpost::service::start(db.service_config()).await?;
    let direct = format!("http://{}", service.addr);
    let mut proxy = TcpProxy::start(service.addr).await?;
    let oracle = db.oracle();
    let (alice_token, bob_token) = (db.token("alice")?, db.token("bob")?);
    let (alice_db, bob_db) = (db.replica_path("alice"), db.replica_path("bob"));

    // The first connection is cut in the middle of the initial download
    // (alice's 2000 rows are several hundred kB).
    let initial_cut = rng.random_range(20_000..200_000);
    proxy.cut_next_after(initial_cut);
    let mut alice = BackgroundClient::start(&proxy.url(), &alice_token, &alice_db);
    let mut bob = BackgroundClient::start(&direct, &bob_token, &bob_db);
    wait_for_replica(
        &oracle,
        &shape("alice"),
        &alice_db,
        Advance::Background,
        WAIT,
    )
    .await
    .map_err(|e| {
        e.context(format!(
            "alice's initial sync (seed {seed}): {}",
            alice.describe()
        ))
    })?;
    ensure!(
        proxy.limited() == 1,
        "the initial download was not cut after {initial_cut} bytes (seed {seed}): {} bytes went down; {}",
        proxy.bytes_down(),
        alice.describe()
    );
    wait_for_replica(&oracle, &shape("bob"), &bob_db, Advance::Background, WAIT)
        .await
        .map_err(|e| e.context(format!("bob's initial sync: {}", bob.describe())))?;

    // Cut points spread over the burst.
    let mut points: Vec<usize> = (0..CUTS)
        .map(|i| {
            let slot = BURST_OPS / (CUTS + 1);
            slot * (i + 1) + rng.random_range(0..slot / 2)
        })
        .collect();
    points.sort_unstable();
    let done = Arc::new(AtomicUsize::new(0));
    let allowed = Arc::new(AtomicUsize::new(points[0]));
    let burst = tokio::spawn(burst(
        db.client().await?,
        seed,
        done.clone(),
        allowed.clone(),
    ));
    let mut cut_at = Vec::new();
    for (k, &point) in points.iter().enumerate() {
        let started = Instant::now();
        while done.load(Ordering::SeqCst) < point {
            if burst.is_finished() {
                let result = burst.await;
                anyhow::bail!("the burst ended before cut {k} (seed {seed}): {result:?}");
            }
            ensure!(
                started.elapsed() < WAIT,
                "the burst made no progress (seed {seed})"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Cut a live stream: the client is connected and applying.
        wait_for_live(&mut alice, &proxy)
            .await
            .with_context(|| format!("before cut {k} (seed {seed})"))?;
        let cut = proxy.cut();
        cut_at.push(done.load(Ordering::SeqCst));
        ensure!(
            cut >= 1,
            "cut {k} found no open connection of the client (seed {seed})"
        );
        allowed.store(
            points.get(k + 1).copied().unwrap_or(usize::MAX),
            Ordering::SeqCst,
        );
        // Connections are refused for a while; the burst goes on.
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1500))).await;
        if k % 2 == 1 {
            // The reconnect itself is cut in the middle of its catch-up.
            proxy.cut_next_after(rng.random_range(300..20_000));
        }
        proxy.restore().await?;
        tracing::info!(
            cut = k,
            connections = cut,
            at = cut_at[k],
            "connection cut and restored"
        );
    }
    burst
        .await?
        .with_context(|| format!("the burst failed (seed {seed})"))?;

    for (client, user, path) in [(&mut alice, "alice", &alice_db), (&mut bob, "bob", &bob_db)] {
        wait_for_replica(&oracle, &shape(user), path, Advance::Background, WAIT)
            .await
            .map_err(|e| {
                e.context(format!(
                    "{user}'s replica after the cuts (seed {seed}, cuts after {cut_at:?} ops): {}",
                    client.describe()
                ))
            })?;
        client.check_running().await?;
    }

    let counts = check_events(alice.events())
        .with_context(|| format!("alice's session (seed {seed}, cuts after {cut_at:?} ops)"))?;
    tracing::info!(
        ?counts,
        limited = proxy.limited(),
        accepted = proxy.accepted(),
        "alice's events"
    );
    let cuts = CUTS as u64 + proxy.limited();
    ensure!(
        counts.disconnected as u64 >= cuts,
        "alice's client saw {} disconnections for {cuts} cuts: {counts:?}",
        counts.disconnected
    );
    ensure!(
        counts.resets == 0,
        "alice's buckets were reset {} times: the client did not resume from its cursors ({counts:?})",
        counts.resets
    );
    // Backoff: a cut of at most 1.5 s must not cause a reconnect storm.
    ensure!(
        (counts.disconnected as u64) < 30 * cuts,
        "alice's client reconnected {} times for {cuts} cuts: {counts:?}",
        counts.disconnected
    );
    let bob_counts = check_events(bob.events()).context("bob's session")?;
    ensure!(
        bob_counts.disconnected == 0,
        "bob's direct connection was lost: {bob_counts:?}"
    );

    // Nothing is sent twice: a new session from alice's cursors receives no
    // row, since nothing changed.
    alice.stop().await;
    let summary = sync_once(&proxy.url(), &alice_token, &alice_db, WAIT)
        .await?
        .context("the last one-shot sync of alice")?;
    ensure!(
        summary.rows_received == 0,
        "a session resuming from alice's cursors received {} rows, expected none: {summary:?}",
        summary.rows_received
    );
    let synced = wait_for_replica(
        &oracle,
        &shape("alice"),
        &alice_db,
        Advance::Background,
        WAIT,
    )
    .await?;
    tracing::info!(rows = synced.rows.len(), "alice ends equal to the oracle");

    bob.stop().await;
    drop(proxy);
    service.shutdown().await?;
    Ok(())
}
