//! A group is applied once even when its answer never reaches the client:
//!
//! - the connection dies after the service applied the group and before
//!   its reply arrives: the client sends the group again and the service
//!   answers DUPLICATE;
//! - the service is killed with SIGKILL while a client uploads a burst of
//!   local transactions, and restarted on the same port and data directory.
//!
//! Counter increments make a second application visible; an audit trigger
//! counts every write of the inserted rows.

use anyhow::{Context, ensure};
use outpost_client::{SyncEvent, WriteStatus};
use outpost_tests::writer::{client_id, ledger, ledger_count, outbox_groups};
use outpost_tests::{
    Advance, BackgroundClient, HoldProxy, ServiceProcess, ShapeQuery, TestDb, check_events,
    free_port, int, replica_rows, wait_settled, write_local, write_local_async,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const SETUP: &str = "
CREATE TABLE counters (
    id bigint PRIMARY KEY,
    owner text NOT NULL,
    n bigint NOT NULL DEFAULT 0
);
CREATE TABLE items (
    id bigint PRIMARY KEY,
    owner text NOT NULL,
    title text NOT NULL
);
CREATE TABLE item_log (seq bigserial PRIMARY KEY, item_id bigint NOT NULL, op text NOT NULL);
CREATE FUNCTION log_item() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO item_log (item_id, op) VALUES (NEW.id, TG_OP);
    RETURN NEW;
END $$;
CREATE TRIGGER items_log AFTER INSERT OR UPDATE ON items FOR EACH ROW EXECUTE FUNCTION log_item();
INSERT INTO counters VALUES (1, 'alice', 0), (2, 'bob', 0);
INSERT INTO items VALUES (1, 'alice', 'first');
";

const SCHEMA: &str = r#"
[shapes.my_counters]
table = "counters"
where = "owner = auth.sub"

[shapes.my_items]
table = "items"
where = "owner = auth.sub"

[tables.counters]
update = "old.owner = auth.sub AND new.owner = auth.sub"

[tables.counters.merge]
n = "counter"

[tables.items]
insert = "new.owner = auth.sub"
update = "old.owner = auth.sub AND new.owner = auth.sub"
"#;

const WAIT: Duration = Duration::from_secs(40);

fn shapes() -> [ShapeQuery; 2] {
    [
        ShapeQuery::new("counters", &["id", "owner", "n"]).where_eq("owner", "alice"),
        ShapeQuery::new("items", &["id", "owner", "title"]).where_eq("owner", "alice"),
    ]
}

async fn counter(pg: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(pg
        .query_one("SELECT n FROM counters WHERE id = 1", &[])
        .await?
        .try_get(0)?)
}

/// Polls until `check` holds, failing after [`WAIT`] with `what`.
async fn poll<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await? {
        ensure!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn reply_lost_applied_once() -> anyhow::Result<()> {
    let db = TestDb::start(SETUP, SCHEMA).await?;
    let service = outpost::service::start(db.service_config()).await?;
    let proxy = HoldProxy::start(service.addr).await?;
    let oracle = db.oracle();
    let pg = db.client().await?;
    let token = db.token("alice")?;
    let path = db.replica_path("alice");
    let mut client = BackgroundClient::start(&proxy.url(), &token, &path);
    for shape in &shapes() {
        outpost_tests::wait_for_replica(&oracle, shape, &path, Advance::Background, WAIT)
            .await
            .map_err(|e| e.context(format!("initial sync: {}", client.describe())))?;
    }
    let id = client_id(&path)?;

    // From here on nothing the service sends reaches the client; then the
    // app writes, and the client uploads the group.
    proxy.hold_replies();
    let up_before = proxy.bytes_up();
    write_local_async(
        &path,
        "UPDATE counters SET n = n + 1 WHERE id = 1;
         INSERT INTO items (id, owner, title) VALUES (2, 'alice', 'second')",
    )
    .await?;
    let seq = match outbox_groups(&path)?.as_slice() {
        [group] => group.seq,
        groups => anyhow::bail!("one group expected in the outbox: {groups:?}"),
    };
    poll("the service recorded the group", || async {
        Ok(ledger_count(&pg, &id).await? == 1)
    })
    .await
    .map_err(|e| e.context(client.describe()))?;
    ensure!(
        proxy.bytes_up() > up_before,
        "the request went through the proxy"
    );
    ensure!(counter(&pg).await? == 1, "the group was applied");
    // The reply (and the data after it) is held: the client cannot have
    // seen the answer.
    ensure!(
        !client
            .events()
            .iter()
            .any(|e| matches!(e, SyncEvent::WriteResult { .. })),
        "no answer can reach the client while replies are held: {}",
        client.describe()
    );
    let accepted = proxy.accepted();
    proxy.drop_connections();

    // The client reconnects and sends the group again: DUPLICATE.
    poll("the client got an answer for the group", || {
        let found = client
            .events()
            .iter()
            .any(|e| matches!(e, SyncEvent::WriteResult { seq: s, .. } if *s == seq));
        async move { Ok(found) }
    })
    .await
    .map_err(|e| e.context(client.describe()))?;
    let answers: Vec<(u64, WriteStatus)> = client
        .events()
        .iter()
        .filter_map(|e| match e {
            SyncEvent::WriteResult { seq, status, .. } => Some((*seq, *status)),
            _ => None,
        })
        .collect();
    ensure!(
        answers == [(seq, WriteStatus::Duplicate)],
        "the retried group must be answered DUPLICATE, once: {answers:?}"
    );
    ensure!(
        proxy.accepted() > accepted,
        "the client reconnected through the proxy"
    );
    for shape in shapes() {
        wait_settled(&oracle, &[shape], &path, &Advance::Background, WAIT)
            .await
            .map_err(|e| e.context(client.describe()))?;
    }
    ensure!(counter(&pg).await? == 1, "the increment counts once");
    let log: i64 = pg
        .query_one("SELECT count(*) FROM item_log WHERE item_id = 2", &[])
        .await?
        .try_get(0)?;
    ensure!(log == 1, "item 2 was written {log} times, expected once");
    let rows = replica_rows(&path, &shapes()[0])?;
    ensure!(rows.value(1, "n") == Some(&int(1)), "replica: {rows:?}");
    let entries = ledger(&pg, &id).await?;
    ensure!(
        entries.len() == 1 && entries[0].seq == seq as i64 && entries[0].status == "applied",
        "ledger: {entries:?}"
    );
    client.check_running().await?;
    check_events(client.events())?;
    client.stop().await;
    drop(proxy);
    service.shutdown().await?;
    Ok(())
}

/// Local transactions in the burst; each increments the counter and inserts
/// one item.
const BURST: usize = 200;
/// The service is killed once it has recorded this many groups.
const KILL_AT: i64 = 40;

#[tokio::test(flavor = "multi_thread")]
async fn reply_lost_kill_service_mid_upload() -> anyhow::Result<()> {
    let db = TestDb::start(SETUP, SCHEMA).await?;
    let port = free_port()?;
    let mut service = ServiceProcess::start(db.service_env(port), port).await?;
    let oracle = db.oracle();
    let pg = db.client().await?;
    let token = db.token("alice")?;
    let path = db.replica_path("alice");
    let mut client = BackgroundClient::start(&service.url(), &token, &path);
    for shape in &shapes() {
        outpost_tests::wait_for_replica(&oracle, shape, &path, Advance::Background, WAIT)
            .await
            .map_err(|e| e.context(format!("initial sync: {}", client.describe())))?;
    }
    let id = client_id(&path)?;

    // The app writes its burst on a thread of its own while the client
    // uploads.
    let written = Arc::new(AtomicUsize::new(0));
    let app = {
        let (path, written) = (path.clone(), written.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            for i in 0..BURST {
                let item = 1000 + i as i64;
                write_local(
                    &path,
                    &format!(
                        "UPDATE counters SET n = n + 1 WHERE id = 1;
                         INSERT INTO items (id, owner, title) VALUES ({item}, 'alice', 'burst {i}')"
                    ),
                )?;
                written.store(i + 1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(())
        })
    };

    poll("the service recorded some of the burst", || async {
        Ok(ledger_count(&pg, &id).await? >= KILL_AT || app.is_finished())
    })
    .await?;
    service.kill()?;
    let recorded_at_kill = ledger_count(&pg, &id).await?;
    let written_at_kill = written.load(Ordering::SeqCst);
    tracing::info!(
        recorded_at_kill,
        written_at_kill,
        "service killed mid-upload"
    );
    ensure!(
        recorded_at_kill < BURST as i64,
        "the whole burst was recorded before the kill; nothing was tested"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    service.restart().await?;
    app.await?.context("the app's burst")?;

    for shape in shapes() {
        wait_settled(&oracle, &[shape], &path, &Advance::Background, WAIT)
            .await
            .map_err(|e| {
                e.context(format!(
                    "after the kill ({recorded_at_kill} groups recorded, {written_at_kill} written): {}\n--- service log ---\n{}",
                    client.describe(),
                    service.log_tail()
                ))
            })?;
    }
    ensure!(
        counter(&pg).await? == BURST as i64,
        "Postgres holds {} increments, expected {BURST}",
        counter(&pg).await?
    );
    let items: Vec<(i64, i64, i64)> = pg
        .query(
            "SELECT item_id, count(*) FILTER (WHERE op = 'INSERT'), count(*) FILTER (WHERE op = 'UPDATE') \
             FROM item_log WHERE item_id >= 1000 GROUP BY item_id ORDER BY item_id",
            &[],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<_, tokio_postgres::Error>>()?;
    let expected: Vec<(i64, i64, i64)> = (0..BURST as i64).map(|i| (1000 + i, 1, 0)).collect();
    if items != expected {
        let wrong: Vec<_> = items
            .iter()
            .filter(|(_, inserts, updates)| (*inserts, *updates) != (1, 0))
            .take(10)
            .collect();
        anyhow::bail!(
            "every burst item must be written once: {} items logged, e.g. wrong ones (id, inserts, updates): {wrong:?}",
            items.len()
        );
    }
    let entries = ledger(&pg, &id).await?;
    ensure!(
        entries.len() == BURST && entries.iter().all(|e| e.status == "applied"),
        "the ledger holds {} groups ({} applied), expected {BURST} applied",
        entries.len(),
        entries.iter().filter(|e| e.status == "applied").count()
    );
    let rows = replica_rows(&path, &shapes()[0])?;
    ensure!(
        rows.value(1, "n") == Some(&int(BURST as i64)),
        "replica counter: {:?}",
        rows.by_id(1)
    );
    service.check_running()?;
    client.check_running().await?;
    check_events(client.events())?;
    let duplicates = client
        .events()
        .iter()
        .filter(|e| {
            matches!(
                e,
                SyncEvent::WriteResult {
                    status: WriteStatus::Duplicate,
                    ..
                }
            )
        })
        .count();
    tracing::info!(
        duplicates,
        "groups answered DUPLICATE after the restart (applied before the kill, reply lost)"
    );
    client.stop().await;
    Ok(())
}
