//! Initial sync, then live INSERT, UPDATE, DELETE and TRUNCATE reaching the
//! replicas of two users, including a row that changes owner.

use anyhow::ensure;
use outpost_tests::{Advance, BackgroundClient, ShapeQuery, TestDb, text, wait_for_replica};
use std::time::Duration;

const SETUP: &str = "
CREATE TABLE items (id bigint PRIMARY KEY, owner text NOT NULL, title text, n int NOT NULL DEFAULT 0);
INSERT INTO items (id, owner, title) VALUES
  (1, 'alice', 'a1'), (2, 'alice', 'a2'), (3, 'alice', 'a3'),
  (4, 'bob', 'b4'), (5, 'bob', 'b5'), (6, 'carol', 'c6');
";

const SCHEMA: &str = r#"
[shapes.my_items]
table = "items"
columns = ["id", "owner", "title"]
where = "owner = auth.sub"
"#;

const WAIT: Duration = Duration::from_secs(30);

fn shape(user: &str) -> ShapeQuery {
    ShapeQuery::new("items", &["id", "owner", "title"]).where_eq("owner", user)
}

#[tokio::test(flavor = "multi_thread")]
async fn initial_and_live() -> anyhow::Result<()> {
    let db = TestDb::start(SETUP, SCHEMA).await?;
    let service = outpost::service::start(db.service_config()).await?;
    let server = format!("http://{}", service.addr);
    let oracle = db.oracle();
    let pg = db.client().await?;
    let (alice_db, bob_db) = (db.replica_path("alice"), db.replica_path("bob"));
    let (alice_token, bob_token) = (db.token("alice")?, db.token("bob")?);
    let bob = || Advance::Once {
        server: &server,
        token: &bob_token,
    };

    // Initial sync: one-shot for both users.
    let alice_once = Advance::Once {
        server: &server,
        token: &alice_token,
    };
    let synced = wait_for_replica(&oracle, &shape("alice"), &alice_db, alice_once, WAIT).await?;
    ensure!(
        synced.rows.ids() == vec![1, 2, 3],
        "alice's initial rows: {:?}",
        synced.rows.ids()
    );
    let synced = wait_for_replica(&oracle, &shape("bob"), &bob_db, bob(), WAIT).await?;
    ensure!(
        synced.rows.ids() == vec![4, 5],
        "bob's initial rows: {:?}",
        synced.rows.ids()
    );

    // From here on alice streams live; bob resumes with one-shot sessions.
    let mut alice = BackgroundClient::start(&server, &alice_token, &alice_db);
    let alice_shape = shape("alice");
    let live = || wait_for_replica(&oracle, &alice_shape, &alice_db, Advance::Background, WAIT);

    pg.batch_execute("INSERT INTO items (id, owner, title) VALUES (10, 'alice', 'new')")
        .await?;
    let rows = live().await.map_err(|e| e.context(alice.describe()))?.rows;
    ensure!(
        rows.ids() == vec![1, 2, 3, 10],
        "after INSERT: {:?}",
        rows.ids()
    );

    pg.batch_execute("UPDATE items SET title = 'renamed', n = n + 1 WHERE id = 1")
        .await?;
    let rows = live().await.map_err(|e| e.context(alice.describe()))?.rows;
    ensure!(
        rows.value(1, "title") == Some(&text("renamed")),
        "after UPDATE: {:?}",
        rows.value(1, "title")
    );

    pg.batch_execute("DELETE FROM items WHERE id = 2").await?;
    let rows = live().await.map_err(|e| e.context(alice.describe()))?.rows;
    ensure!(
        rows.ids() == vec![1, 3, 10],
        "after DELETE: {:?}",
        rows.ids()
    );

    // Row 3 moves from alice to bob, row 4 from bob to alice, in one transaction.
    pg.batch_execute(
        "BEGIN; UPDATE items SET owner = 'bob' WHERE id = 3; \
         UPDATE items SET owner = 'alice', title = 'moved' WHERE id = 4; COMMIT",
    )
    .await?;
    let rows = live().await.map_err(|e| e.context(alice.describe()))?.rows;
    ensure!(
        rows.ids() == vec![1, 4, 10],
        "alice after the owner change: {:?}",
        rows.ids()
    );
    let rows = wait_for_replica(&oracle, &shape("bob"), &bob_db, bob(), WAIT)
        .await?
        .rows;
    ensure!(
        rows.ids() == vec![3, 5],
        "bob after the owner change: {:?}",
        rows.ids()
    );
    ensure!(
        rows.value(3, "owner") == Some(&text("bob")),
        "row 3's owner in bob's replica"
    );

    pg.batch_execute("TRUNCATE items").await?;
    let rows = live().await.map_err(|e| e.context(alice.describe()))?.rows;
    ensure!(rows.is_empty(), "alice after TRUNCATE: {:?}", rows.ids());
    let rows = wait_for_replica(&oracle, &shape("bob"), &bob_db, bob(), WAIT)
        .await?
        .rows;
    ensure!(rows.is_empty(), "bob after TRUNCATE: {:?}", rows.ids());

    // The stream goes on after a TRUNCATE.
    pg.batch_execute(
        "INSERT INTO items (id, owner, title) VALUES (20, 'alice', 'after'), (21, 'bob', 'after')",
    )
    .await?;
    let rows = live().await.map_err(|e| e.context(alice.describe()))?.rows;
    ensure!(
        rows.ids() == vec![20],
        "alice after TRUNCATE + INSERT: {:?}",
        rows.ids()
    );
    let rows = wait_for_replica(&oracle, &shape("bob"), &bob_db, bob(), WAIT)
        .await?
        .rows;
    ensure!(
        rows.ids() == vec![21],
        "bob after TRUNCATE + INSERT: {:?}",
        rows.ids()
    );

    alice.check_running().await?;
    alice.stop().await;
    service.shutdown().await?;
    Ok(())
}
