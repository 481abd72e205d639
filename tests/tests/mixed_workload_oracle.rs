//! Two users' apps write their replicas at random (inserts, title updates,
//! counter increments, key changes, deletes; some refused by a write rule or
//! a CHECK constraint, others by what Postgres holds by then) while a
//! Postgres connection writes the same table directly, moving rows between
//! users. One device goes offline for a while in the middle.
//! At quiescence every replica equals its oracle row for row, nothing is
//! left in an outbox or waiting for a checkpoint, and the service's ledger
//! accounts for every local transaction exactly once.

use anyhow::{Context, ensure};
use outpost_tests::writer::{client_id, ledger, rejections};
use outpost_tests::{
    Advance, BackgroundClient, ShapeQuery, TestDb, check_events, test_seed, wait_for_replica,
    wait_settled, write_local,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

const SETUP: &str = "
CREATE TABLE items (
    id bigint PRIMARY KEY,
    owner text NOT NULL,
    title text NOT NULL CHECK (title NOT LIKE 'bad%'),
    n int NOT NULL DEFAULT 0
);
INSERT INTO items SELECT g, (ARRAY['alice', 'bob', 'carol'])[1 + g % 3], 'item ' || g, 0
  FROM generate_series(1, 150) g;
";

const SCHEMA: &str = r#"
[shapes.my_items]
table = "items"
where = "owner = auth.sub"

[tables.items]
insert = "new.owner = auth.sub"
update = "old.owner = auth.sub AND new.owner = auth.sub"
delete = "old.owner = auth.sub"

[tables.items.merge]
n = "counter"
"#;

const USERS: [&str; 2] = ["alice", "bob"];
const OWNERS: [&str; 3] = ["alice", "bob", "carol"];
/// Local transactions per app.
const LOCAL_TRANSACTIONS: usize = 200;
/// Transactions of the direct Postgres writer.
const PG_TRANSACTIONS: usize = 250;
/// Every writer picks ids in 1..=MAX_ID.
const MAX_ID: i64 = 300;
const WAIT: Duration = Duration::from_secs(60);

fn shape(user: &str) -> ShapeQuery {
    ShapeQuery::new("items", &["id", "owner", "title", "n"]).where_eq("owner", user)
}

/// Inserts row `id` for `owner`, or gives it a new title when the replica
/// holds it already (one of the two statements changes a row).
fn put(sql: &mut String, id: i64, owner: &str, tag: &str) -> std::fmt::Result {
    write!(
        sql,
        "UPDATE items SET title = '{tag}' WHERE id = {id};
         INSERT INTO items (id, owner, title, n) SELECT {id}, '{owner}', '{tag}', 0
           WHERE NOT EXISTS (SELECT 1 FROM items WHERE id = {id});"
    )
}

/// One app: random local transactions of one to three writes on `path`.
/// Every write that touches a row changes a value (titles are unique,
/// counters move), so each transaction that changed rows is one op group.
/// Returns how many there were.
fn app(path: PathBuf, user: &'static str, seed: u64) -> anyhow::Result<usize> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (other, own) = if user == "alice" {
        ("bob", 2000)
    } else {
        ("alice", 3000)
    };
    let mut groups = 0usize;
    for t in 0..LOCAL_TRANSACTIONS {
        let mut sql = String::new();
        let ops = rng.random_range(1..=3u32);
        for k in 0..ops {
            let tag = format!("{user} {t}.{k}");
            let local_row = "(SELECT id FROM items ORDER BY random() LIMIT 1)";
            match rng.random_range(0..100u32) {
                // Inserts (or a new title when the replica holds the id) in
                // an id range of the user's own…
                0..=19 => put(&mut sql, own + rng.random_range(0..100i64), user, &tag)?,
                // …or in the range Postgres writes too: an id Postgres gave
                // someone else turns into a refused update there.
                20..=29 => put(&mut sql, rng.random_range(1..=MAX_ID), user, &tag)?,
                // An insert for the other user: permission_denied.
                30..=33 => put(&mut sql, 1000 + rng.random_range(0..100i64), other, &tag)?,
                // A title the CHECK constraint refuses: check_violation.
                34..=36 => write!(
                    sql,
                    "UPDATE items SET title = 'bad {tag}' WHERE id = {local_row};"
                )?,
                37..=64 => write!(
                    sql,
                    "UPDATE items SET title = '{tag}' WHERE id = {local_row};"
                )?,
                65..=81 => write!(sql, "UPDATE items SET n = n + 1 WHERE id = {local_row};")?,
                // A new primary key (a delete and an insert), when free here.
                82..=85 => {
                    let id = rng.random_range(1..=MAX_ID);
                    write!(
                        sql,
                        "UPDATE items SET id = {id}, title = '{tag}' WHERE id = {local_row}
                           AND NOT EXISTS (SELECT 1 FROM items WHERE id = {id});"
                    )?;
                }
                _ => write!(sql, "DELETE FROM items WHERE id = {local_row};")?,
            }
        }
        let changed = write_local(&path, &sql)?;
        if changed > 0 {
            groups += 1;
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(5..40)));
    }
    Ok(groups)
}

/// Direct writes to the same table in small transactions.
async fn direct_writes(pg: tokio_postgres::Client, seed: u64) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    for t in 0..PG_TRANSACTIONS {
        let mut sql = String::from("BEGIN;");
        for k in 0..rng.random_range(1..=3u32) {
            let id = rng.random_range(1..=MAX_ID);
            let owner = OWNERS[rng.random_range(0..OWNERS.len())];
            match rng.random_range(0..10u32) {
                0..=2 => write!(
                    sql,
                    "INSERT INTO items (id, owner, title) VALUES ({id}, '{owner}', 'pg {t}.{k}') \
                     ON CONFLICT (id) DO UPDATE SET title = excluded.title, n = items.n + 1;"
                )?,
                3..=5 => write!(
                    sql,
                    "UPDATE items SET title = 'pg {t}.{k}', n = n + 1 WHERE id = {id};"
                )?,
                6..=7 => write!(sql, "DELETE FROM items WHERE id = {id};")?,
                _ => write!(sql, "UPDATE items SET owner = '{owner}' WHERE id = {id};")?,
            }
        }
        sql.push_str("COMMIT;");
        pg.batch_execute(&sql)
            .await
            .with_context(|| format!("direct write: {sql}"))?;
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..30))).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn mixed_workload_oracle() -> anyhow::Result<()> {
    let seed = test_seed("mixed_workload_oracle");
    let db = TestDb::start(SETUP, SCHEMA).await?;
    let service = outpost::service::start(db.service_config()).await?;
    let server = format!("http://{}", service.addr);
    let oracle = db.oracle();
    let pg = db.client().await?;
    let paths: Vec<PathBuf> = USERS.iter().map(|u| db.replica_path(u)).collect();
    let mut clients = Vec::new();
    for (user, path) in USERS.iter().zip(&paths) {
        clients.push(BackgroundClient::start(&server, &db.token(user)?, path));
    }
    for (i, user) in USERS.iter().enumerate() {
        wait_for_replica(&oracle, &shape(user), &paths[i], Advance::Background, WAIT)
            .await
            .map_err(|e| e.context(format!("initial sync of {user}: {}", clients[i].describe())))?;
    }

    let apps: Vec<_> = USERS
        .iter()
        .zip(&paths)
        .enumerate()
        .map(|(i, (&user, path))| {
            let path = path.clone();
            let app_seed = seed.wrapping_add(1 + i as u64);
            tokio::task::spawn_blocking(move || app(path, user, app_seed))
        })
        .collect();
    let direct = tokio::spawn(direct_writes(db.client().await?, seed));

    // Meanwhile alice's device goes offline for a while: her writes pile up
    // in the outbox, then go in one session.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let alice = clients.remove(0);
    alice.stop().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    clients.insert(
        0,
        BackgroundClient::start(&server, &db.token(USERS[0])?, &paths[0]),
    );

    let mut groups = Vec::new();
    for (user, app) in USERS.iter().zip(apps) {
        groups.push(
            app.await?
                .with_context(|| format!("{user}'s app (seed {seed})"))?,
        );
    }
    direct
        .await?
        .with_context(|| format!("the direct writes (seed {seed})"))?;

    // Quiescence: nothing pending, checkpoints past the last write, rows
    // equal to the oracle.
    for (i, user) in USERS.iter().enumerate() {
        wait_settled(
            &oracle,
            &[shape(user)],
            &paths[i],
            &Advance::Background,
            WAIT,
        )
        .await
        .map_err(|e| {
            e.context(format!(
                "{user}'s replica at quiescence (seed {seed}): {}",
                clients[i].describe()
            ))
        })?;
        clients[i].check_running().await?;
    }

    // Every local transaction reached the ledger once; the refused ones are
    // the ones the replica lists.
    let mut summary = Vec::new();
    for (i, user) in USERS.iter().enumerate() {
        let entries = ledger(&pg, &client_id(&paths[i])?).await?;
        let seqs: BTreeSet<i64> = entries.iter().map(|e| e.seq).collect();
        ensure!(
            entries.len() == groups[i] && seqs.len() == groups[i],
            "{user} committed {} local transactions; the ledger holds {} (seed {seed})",
            groups[i],
            entries.len()
        );
        let refused: BTreeSet<i64> = entries
            .iter()
            .filter(|e| e.status == "rejected")
            .map(|e| e.seq)
            .collect();
        let listed: BTreeSet<i64> = rejections(&paths[i])?
            .iter()
            .map(|r| r.seq as i64)
            .collect();
        ensure!(
            refused == listed,
            "{user}: the ledger refused groups {refused:?}, the replica lists {listed:?} (seed {seed})"
        );
        let mut codes = std::collections::BTreeMap::<&str, usize>::new();
        for code in entries.iter().filter_map(|e| e.reason_code.as_deref()) {
            *codes.entry(code).or_default() += 1;
        }
        summary.push(format!(
            "{user}: {} groups, {} refused ({codes:?})",
            groups[i],
            refused.len()
        ));
        let events = clients[i].events().to_vec();
        check_events(&events).with_context(|| format!("{user}'s events (seed {seed})"))?;
    }
    tracing::info!(seed, summary = ?summary, "mixed workload settled");
    for client in clients {
        client.stop().await;
    }
    service.shutdown().await?;
    Ok(())
}
