//! Sharing through a membership table, end to end: a shared list's rows
//! arrive in the member's replica; revoking the membership (live, or while
//! the member is offline), moving a todo to a list the member cannot see,
//! archiving the list and deleting it (cascading) take every one of its rows
//! out again. Request parameters narrow a shape (and never widen it), and
//! the per-stream limits end a stream with a clear error.

use anyhow::{Context, bail, ensure};
use outpost_proto::v1::sync_client::SyncClient;
use outpost_proto::v1::sync_response::Message;
use outpost_proto::v1::{ShapeRequest, SyncRequest};
use outpost_tests::{Advance, BackgroundClient, ShapeQuery, TestDb, wait_for_replica};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

const SETUP: &str = "
CREATE TABLE lists (
    id bigint PRIMARY KEY, owner text NOT NULL, name text NOT NULL,
    archived boolean NOT NULL DEFAULT false);
CREATE TABLE list_members (
    list_id bigint NOT NULL REFERENCES lists (id) ON DELETE CASCADE,
    user_id text NOT NULL,
    PRIMARY KEY (list_id, user_id));
CREATE TABLE todos (
    id bigint PRIMARY KEY,
    list_id bigint NOT NULL REFERENCES lists (id) ON DELETE CASCADE,
    title text NOT NULL);
CREATE TABLE comments (
    id bigint PRIMARY KEY,
    todo_id bigint NOT NULL REFERENCES todos (id) ON DELETE CASCADE,
    body text NOT NULL);
INSERT INTO lists (id, owner, name) VALUES (1, 'alice', 'groceries'), (2, 'bob', 'garden'),
    (3, 'alice', 'work');
INSERT INTO todos VALUES (1, 1, 'eggs'), (2, 1, 'milk'), (3, 2, 'tomatoes'), (4, 3, 'report');
INSERT INTO comments VALUES (10, 1, 'a dozen'), (11, 2, 'oat'), (12, 2, 'two'),
    (13, 3, 'cherry'), (14, 4, 'due friday');
";

const VISIBLE: &str = "SELECT id FROM lists WHERE NOT archived AND (owner = auth.sub \
     OR id IN (SELECT list_id FROM list_members WHERE user_id = auth.sub))";

fn clauses() -> Vec<(&'static str, &'static str, String)> {
    vec![
        (
            "lists",
            "lists",
            "NOT archived AND (owner = auth.sub OR id IN \
             (SELECT list_id FROM list_members WHERE user_id = auth.sub))"
                .to_string(),
        ),
        ("todos", "todos", format!("list_id IN ({VISIBLE})")),
        (
            "comments",
            "comments",
            format!("todo_id IN (SELECT id FROM todos WHERE list_id IN ({VISIBLE}))"),
        ),
    ]
}

fn schema_toml() -> String {
    let mut out = String::new();
    for (name, table, clause) in clauses() {
        out.push_str(&format!(
            "[shapes.{name}]\ntable = \"{table}\"\nwhere = '''{clause}'''\n\n"
        ));
    }
    out.push_str(&format!(
        "[shapes.list_todos]\ntable = \"todos\"\ndefault = false\n\
         where = '''list_id = param.list_id AND list_id IN ({VISIBLE})'''\n\n"
    ));
    // Not part of the default set: list_members is read by the subqueries
    // but never sent to these clients. (Declaring it also lists the table
    // among `SchemaSource::tables`, which the service reads the catalog for.)
    out.push_str(
        "[shapes.memberships]\ntable = \"list_members\"\ndefault = false\n\
         where = \"user_id = auth.sub\"\n",
    );
    out
}

fn shapes(user: &str) -> Vec<ShapeQuery> {
    let columns: [&[&str]; 3] = [
        &["id", "owner", "name", "archived"],
        &["id", "list_id", "title"],
        &["id", "todo_id", "body"],
    ];
    clauses()
        .into_iter()
        .zip(columns)
        .map(|((_, table, clause), columns)| {
            ShapeQuery::new(table, columns)
                .filtered(clause.replace("auth.sub", &format!("'{user}'")))
        })
        .collect()
}

const WAIT: Duration = Duration::from_secs(30);

/// Waits until every shape of `user` in `path` equals the oracle.
async fn synced(db: &TestDb, user: &str, path: &Path, advance: Advance<'_>) -> anyhow::Result<()> {
    let oracle = db.oracle();
    let shapes = shapes(user);
    for shape in &shapes {
        let adv = match &advance {
            Advance::Once { server, token } => Advance::Once { server, token },
            Advance::Background => Advance::Background,
        };
        wait_for_replica(&oracle, shape, path, adv, WAIT)
            .await
            .with_context(|| format!("{user}'s {}", shape.table))?;
    }
    Ok(())
}

/// Rows of `sql` (one integer column) in the replica at `path`.
fn replica_ids(path: &Path, sql: &str) -> anyhow::Result<Vec<i64>> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut statement = conn.prepare(sql)?;
    let rows = statement.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// What of list 1 bob's replica holds: (lists, todos, comments).
fn list_one(path: &Path) -> anyhow::Result<(Vec<i64>, Vec<i64>, Vec<i64>)> {
    Ok((
        replica_ids(path, "SELECT id FROM lists WHERE id = 1")?,
        replica_ids(path, "SELECT id FROM todos WHERE id IN (1, 2) ORDER BY id")?,
        replica_ids(
            path,
            "SELECT id FROM comments WHERE id IN (10, 11, 12) ORDER BY id",
        )?,
    ))
}

fn nothing() -> (Vec<i64>, Vec<i64>, Vec<i64>) {
    (vec![], vec![], vec![])
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_rows_leave_the_replica() -> anyhow::Result<()> {
    let db = TestDb::start(SETUP, &schema_toml()).await?;
    let service = outpost::service::start(db.service_config()).await?;
    let server = format!("http://{}", service.addr);
    let pg = db.client().await?;
    let bob_db = db.replica_path("bob");
    let bob_token = db.token("bob")?;
    let bob_once = || Advance::Once {
        server: &server,
        token: &bob_token,
    };

    synced(&db, "bob", &bob_db, bob_once()).await?;
    ensure!(
        list_one(&bob_db)? == nothing(),
        "bob sees list 1 before it is shared"
    );

    let mut bob = BackgroundClient::start(&server, &bob_token, &bob_db);
    let live = |what: &'static str| {
        let (db, bob_db) = (&db, &bob_db);
        async move {
            synced(db, "bob", bob_db, Advance::Background)
                .await
                .with_context(|| what)
        }
    };

    // Shared live: the list, its todos and their comments arrive.
    pg.batch_execute("INSERT INTO list_members VALUES (1, 'bob')")
        .await?;
    live("after sharing")
        .await
        .map_err(|e| e.context(bob.describe()))?;
    ensure!(
        list_one(&bob_db)? == (vec![1], vec![1, 2], vec![10, 11, 12]),
        "after sharing, bob holds {:?}",
        list_one(&bob_db)?
    );

    // Revoked live: every row of list 1 leaves.
    pg.batch_execute("DELETE FROM list_members WHERE list_id = 1 AND user_id = 'bob'")
        .await?;
    live("after revoking")
        .await
        .map_err(|e| e.context(bob.describe()))?;
    ensure!(
        list_one(&bob_db)? == nothing(),
        "after revoking: {:?}",
        list_one(&bob_db)?
    );
    let stale: Vec<String> = {
        let conn = rusqlite::Connection::open(&bob_db)?;
        let mut s =
            conn.prepare("SELECT DISTINCT bucket FROM _outpost_rows WHERE bucket LIKE '%[1]'")?;
        s.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?
    };
    ensure!(
        stale.is_empty(),
        "bob still holds buckets of list 1: {stale:?}"
    );
    ensure!(
        bob.events().iter().any(|e| matches!(
            e,
            outpost_client::SyncEvent::BucketReset { removed: true, .. }
        )),
        "no bucket was reset as removed"
    );

    // Shared again, then revoked while bob is offline: his next session
    // resets the buckets he holds and no longer may.
    pg.batch_execute("INSERT INTO list_members VALUES (1, 'bob')")
        .await?;
    live("after sharing again").await?;
    ensure!(list_one(&bob_db)?.1 == vec![1, 2]);
    bob.stop().await;
    pg.batch_execute("DELETE FROM list_members WHERE user_id = 'bob'")
        .await?;
    synced(&db, "bob", &bob_db, bob_once()).await?;
    ensure!(
        list_one(&bob_db)? == nothing(),
        "after an offline revoke: {:?}",
        list_one(&bob_db)?
    );

    // A todo moving to a list bob cannot see takes its comments along.
    let mut bob = BackgroundClient::start(&server, &bob_token, &bob_db);
    pg.batch_execute("INSERT INTO list_members VALUES (1, 'bob')")
        .await?;
    live("sharing for the move").await?;
    pg.batch_execute("UPDATE todos SET list_id = 3 WHERE id = 2")
        .await?;
    live("after the move")
        .await
        .map_err(|e| e.context(bob.describe()))?;
    ensure!(
        list_one(&bob_db)? == (vec![1], vec![1], vec![10]),
        "after moving todo 2 away: {:?}",
        list_one(&bob_db)?
    );
    pg.batch_execute("UPDATE todos SET list_id = 1 WHERE id = 2")
        .await?;
    live("after moving back").await?;
    ensure!(list_one(&bob_db)? == (vec![1], vec![1, 2], vec![10, 11, 12]));

    // The membership's list stops qualifying (archived): everything leaves.
    pg.batch_execute("UPDATE lists SET archived = true WHERE id = 1")
        .await?;
    live("after archiving")
        .await
        .map_err(|e| e.context(bob.describe()))?;
    ensure!(
        list_one(&bob_db)? == nothing(),
        "after archiving: {:?}",
        list_one(&bob_db)?
    );
    pg.batch_execute("UPDATE lists SET archived = false WHERE id = 1")
        .await?;
    live("after unarchiving").await?;
    ensure!(list_one(&bob_db)?.2 == vec![10, 11, 12]);

    // Deleting the list cascades to its members, todos and comments.
    pg.batch_execute("DELETE FROM lists WHERE id = 1").await?;
    live("after the cascade")
        .await
        .map_err(|e| e.context(bob.describe()))?;
    ensure!(
        list_one(&bob_db)? == nothing(),
        "after the cascade: {:?}",
        list_one(&bob_db)?
    );
    // Bob's own list was there all along; the membership table never was.
    ensure!(replica_ids(&bob_db, "SELECT id FROM todos")? == vec![3]);
    ensure!(
        replica_ids(
            &bob_db,
            "SELECT count(*) FROM sqlite_master WHERE name = 'list_members'"
        )? == vec![0],
        "list_members reached the replica"
    );
    bob.stop().await;
    service.shutdown().await?;
    Ok(())
}

/// Opens a stream and collects the keys of the rows put until the first
/// checkpoint; or the stream's error.
async fn first_checkpoint(
    server: &str,
    token: &str,
    shapes: Vec<ShapeRequest>,
) -> anyhow::Result<Result<BTreeSet<(String, String)>, tonic::Status>> {
    let mut client = SyncClient::connect(server.to_string()).await?;
    let mut request = tonic::Request::new(SyncRequest {
        shapes,
        client_id: "raw".into(),
        ..SyncRequest::default()
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let mut stream = match client.sync(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => return Ok(Err(status)),
    };
    let mut rows = BTreeSet::new();
    loop {
        let next = tokio::time::timeout(WAIT, stream.message()).await?;
        match next {
            Err(status) => return Ok(Err(status)),
            Ok(None) => bail!("the stream ended before a checkpoint"),
            Ok(Some(response)) => match response.message {
                Some(Message::Data(batch)) => {
                    for op in batch.ops {
                        rows.insert((op.table.clone(), outpost_proto::key_string(&op.key)));
                    }
                }
                Some(Message::Checkpoint(_)) => return Ok(Ok(rows)),
                _ => {}
            },
        }
    }
}

fn shape(name: &str, params: &[(&str, &str)]) -> ShapeRequest {
    ShapeRequest {
        name: name.into(),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn todos(ids: &[i64]) -> BTreeSet<(String, String)> {
    ids.iter()
        .map(|i| ("todos".to_string(), format!("[{i}]")))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn parameters_narrow_and_limits_refuse() -> anyhow::Result<()> {
    let db = TestDb::start(SETUP, &schema_toml()).await?;
    let pg = db.client().await?;
    // 10 001 lists shared with `many`: with the bucket of the lists `many`
    // owns, more buckets than one stream may hold.
    pg.batch_execute(
        "INSERT INTO list_members VALUES (1, 'bob');
         INSERT INTO lists (id, owner, name) SELECT g, 'zed', 'l' || g FROM generate_series(100, 10100) g;
         INSERT INTO list_members SELECT g, 'many' FROM generate_series(100, 10100) g;",
    )
    .await?;
    let service = outpost::service::start(db.service_config()).await?;
    let server = format!("http://{}", service.addr);
    let bob = db.token("bob")?;

    let got = first_checkpoint(
        &server,
        &bob,
        vec![shape("list_todos", &[("list_id", "1")])],
    )
    .await?;
    ensure!(
        got.as_ref().ok() == Some(&todos(&[1, 2])),
        "list 1: {got:?}"
    );
    let got = first_checkpoint(
        &server,
        &bob,
        vec![
            shape("list_todos", &[("list_id", "2")]),
            shape("list_todos", &[("list_id", "1")]),
        ],
    )
    .await?;
    ensure!(
        got.as_ref().ok() == Some(&todos(&[1, 2, 3])),
        "lists 1 and 2: {got:?}"
    );
    // List 3 is alice's and not shared: the parameter cannot widen.
    let got = first_checkpoint(
        &server,
        &bob,
        vec![shape("list_todos", &[("list_id", "3")])],
    )
    .await?;
    ensure!(got.as_ref().is_ok_and(|r| r.is_empty()), "list 3: {got:?}");

    let refused = |got: Result<BTreeSet<(String, String)>, tonic::Status>| match got {
        Ok(rows) => bail!("served {rows:?}"),
        Err(status) => anyhow::Ok(status),
    };
    let status = refused(first_checkpoint(&server, &bob, vec![shape("list_todos", &[])]).await?)?;
    ensure!(status.code() == tonic::Code::InvalidArgument, "{status:?}");
    ensure!(
        status.message().contains("needs the parameter `list_id`"),
        "{status:?}"
    );
    let status = refused(
        first_checkpoint(
            &server,
            &bob,
            vec![shape("list_todos", &[("list_id", "one")])],
        )
        .await?,
    )?;
    ensure!(status.code() == tonic::Code::InvalidArgument, "{status:?}");
    let status =
        refused(first_checkpoint(&server, &bob, vec![shape("todos", &[("list_id", "1")])]).await?)?;
    ensure!(
        status.message().contains("takes no parameters"),
        "{status:?}"
    );

    let many_shapes: Vec<ShapeRequest> = (0..51).map(|_| shape("todos", &[])).collect();
    let status = refused(first_checkpoint(&server, &bob, many_shapes).await?)?;
    ensure!(status.code() == tonic::Code::InvalidArgument, "{status:?}");
    ensure!(
        status.message().contains("max_shapes_per_request"),
        "{status:?}"
    );

    let many = db.token("many")?;
    let status = refused(first_checkpoint(&server, &many, vec![shape("lists", &[])]).await?)?;
    ensure!(
        status.code() == tonic::Code::ResourceExhausted,
        "{status:?}"
    );
    ensure!(status.message().contains("10002 buckets"), "{status:?}");
    ensure!(
        status.message().contains("max_buckets_per_user"),
        "{status:?}"
    );
    service.shutdown().await?;
    Ok(())
}
