//! A `counter` column incremented offline by three users, ten local
//! transactions each: every increment counts once, in Postgres and on every
//! replica, whatever order the uploads arrive in.

use anyhow::{Context, ensure};
use outpost_tests::writer::{client_id, ledger, outbox_groups};
use outpost_tests::{Advance, ShapeQuery, TestDb, int, replica_rows, wait_settled, write_local};
use std::path::PathBuf;
use std::time::Duration;

const SETUP: &str = "
CREATE TABLE posts (
    id bigint PRIMARY KEY,
    owner text NOT NULL,
    title text NOT NULL,
    likes int NOT NULL DEFAULT 0
);
INSERT INTO posts VALUES (1, 'alice', 'hello', 5), (2, 'bob', 'other', 0);
";

const SCHEMA: &str = r#"
[shapes.posts]
table = "posts"

[tables.posts]
update = "new.owner = old.owner"

[tables.posts.merge]
likes = "counter"
"#;

const USERS: [&str; 3] = ["alice", "bob", "carol"];
const INCREMENTS: i64 = 10;
const START: i64 = 5;
const WAIT: Duration = Duration::from_secs(40);

fn shape() -> ShapeQuery {
    ShapeQuery::new("posts", &["id", "owner", "title", "likes"])
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_counters() -> anyhow::Result<()> {
    let db = TestDb::start(SETUP, SCHEMA).await?;
    let service = outpost::service::start(db.service_config()).await?;
    let server = format!("http://{}", service.addr);
    let oracle = db.oracle();
    let pg = db.client().await?;
    let tokens: Vec<String> = USERS
        .iter()
        .map(|u| db.token(u))
        .collect::<Result<_, _>>()?;
    let paths: Vec<PathBuf> = USERS.iter().map(|u| db.replica_path(u)).collect();

    for (path, token) in paths.iter().zip(&tokens) {
        let once = Advance::Once {
            server: &server,
            token,
        };
        wait_settled(&oracle, &[shape()], path, &once, WAIT)
            .await
            .context("initial sync")?;
    }

    // Offline: ten separate local transactions per user.
    for path in &paths {
        for _ in 0..INCREMENTS {
            write_local(path, "UPDATE posts SET likes = likes + 1 WHERE id = 1")?;
        }
        let groups = outbox_groups(path)?;
        ensure!(
            groups.len() == INCREMENTS as usize,
            "{}: {} groups in the outbox, expected one per transaction",
            path.display(),
            groups.len()
        );
        let rows = replica_rows(path, &shape())?;
        ensure!(
            rows.value(1, "likes") == Some(&int(START + INCREMENTS)),
            "{}: the app sees its own increments at once: {:?}",
            path.display(),
            rows.by_id(1)
        );
    }

    // All three upload at once.
    let syncs = paths.iter().zip(&tokens).map(|(path, token)| {
        let (server, token, path) = (server.clone(), token.clone(), path.clone());
        tokio::spawn(async move {
            outpost_tests::sync_once(&server, &token, &path, WAIT)
                .await?
                .with_context(|| format!("syncing {}", path.display()))
        })
    });
    for (user, sync) in USERS.iter().zip(syncs.collect::<Vec<_>>()) {
        let summary = sync.await??;
        ensure!(
            summary.groups_uploaded == INCREMENTS as u64 && summary.groups_rejected == 0,
            "{user}: {summary:?}"
        );
    }

    let likes: i32 = pg
        .query_one("SELECT likes FROM posts WHERE id = 1", &[])
        .await?
        .try_get(0)?;
    let expected = START + INCREMENTS * USERS.len() as i64;
    ensure!(
        i64::from(likes) == expected,
        "Postgres holds {likes} likes, expected {expected} ({START} + {INCREMENTS} from each of {} users)",
        USERS.len()
    );
    for ((user, path), token) in USERS.iter().zip(&paths).zip(&tokens) {
        let once = Advance::Once {
            server: &server,
            token,
        };
        wait_settled(&oracle, &[shape()], path, &once, WAIT)
            .await
            .with_context(|| format!("{user}'s replica after the uploads"))?;
        let rows = replica_rows(path, &shape())?;
        ensure!(
            rows.value(1, "likes") == Some(&int(expected)),
            "{user}: {:?}",
            rows.by_id(1)
        );
        let entries = ledger(&pg, &client_id(path)?).await?;
        ensure!(
            entries.len() == INCREMENTS as usize && entries.iter().all(|e| e.status == "applied"),
            "{user}: the ledger holds {entries:?}"
        );
    }
    service.shutdown().await?;
    Ok(())
}
