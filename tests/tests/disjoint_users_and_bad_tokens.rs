//! Two users see disjoint rows, each equal to their oracle; tokens signed with
//! the wrong secret, expired tokens and unsigned tokens are refused and leave
//! no rows in the replica.

use anyhow::{bail, ensure};
use outpost_client::ClientError;
use outpost_tests::{
    Advance, ShapeQuery, TestDb, replica_rows, sync_once, unix_now, wait_for_replica,
};
use std::collections::BTreeSet;
use std::time::Duration;

const SETUP: &str = "
CREATE TABLE items (id bigint PRIMARY KEY, owner text NOT NULL, title text);
INSERT INTO items SELECT g, (ARRAY['alice', 'bob', 'carol'])[1 + g % 3], 'item ' || g
  FROM generate_series(1, 300) g;
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
async fn disjoint_users_and_bad_tokens() -> anyhow::Result<()> {
    let db = TestDb::start(SETUP, SCHEMA).await?;
    let service = outpost::service::start(db.service_config()).await?;
    let server = format!("http://{}", service.addr);
    let oracle = db.oracle();

    let mut seen = Vec::new();
    for user in ["alice", "bob"] {
        let token = db.token(user)?;
        let path = db.replica_path(user);
        let advance = Advance::Once {
            server: &server,
            token: &token,
        };
        let synced = wait_for_replica(&oracle, &shape(user), &path, advance, WAIT).await?;
        ensure!(
            synced.rows.len() == 100,
            "{user} has {} rows, expected 100",
            synced.rows.len()
        );
        seen.push(synced.rows.ids().into_iter().collect::<BTreeSet<i64>>());
    }
    let common: Vec<_> = seen[0].intersection(&seen[1]).collect();
    ensure!(common.is_empty(), "alice and bob share rows {common:?}");

    let now = unix_now();
    let claims = serde_json::json!({ "sub": "alice", "exp": now + 3600 });
    let bad_tokens = [
        (
            "wrong secret",
            outpost::auth::sign_hs256("not-the-secret", &claims)?,
        ),
        (
            "expired",
            outpost::auth::sign_hs256(
                &db.secret,
                &serde_json::json!({ "sub": "alice", "exp": now - 3600 }),
            )?,
        ),
        ("unsigned", outpost::auth::unsigned_token(&claims)),
    ];
    for (what, token) in bad_tokens {
        let path = db.replica_path(&format!("refused-{}", what.replace(' ', "-")));
        match sync_once(&server, &token, &path, WAIT).await? {
            Err(ClientError::Unauthenticated(message)) => {
                tracing::info!(what, %message, "refused as expected");
            }
            Err(other) => bail!("the {what} token was refused with the wrong error: {other}"),
            Ok(summary) => bail!("the {what} token was accepted: {summary:?}"),
        }
        let rows = replica_rows(&path, &shape("alice"))?;
        ensure!(
            rows.is_empty(),
            "the {what} token's replica holds {} rows",
            rows.len()
        );
    }

    service.shutdown().await?;
    Ok(())
}
