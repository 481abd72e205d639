//! Groups the service refuses (a write rule, a CHECK constraint, a UNIQUE
//! constraint) are rolled back alone: the groups around them are applied,
//! nothing of a refused group reaches Postgres, the replica lists the
//! refusals with their reasons and shows the server's values again.

use anyhow::{Context, ensure};
use outpost_tests::writer::{client_id, ledger, outbox_groups, pending_groups, rejections};
use outpost_tests::{
    Advance, ShapeQuery, TestDb, int, replica_rows, sync_once, text, wait_settled, write_local,
};
use std::time::Duration;

const SETUP: &str = "
CREATE TABLE todos (
    id bigint PRIMARY KEY,
    owner text NOT NULL,
    title text NOT NULL CHECK (title <> ''),
    slug text NOT NULL UNIQUE,
    done boolean NOT NULL DEFAULT false,
    shared boolean NOT NULL DEFAULT false
);
INSERT INTO todos VALUES
  (1, 'alice', 'one', 'one', false, false),
  (2, 'alice', 'two', 'two', false, false),
  (3, 'alice', 'three', 'three', false, false),
  (10, 'bob', 'bobs', 'bobs', false, true),
  (11, 'bob', 'private', 'bob-private', false, false);
";

const SCHEMA: &str = r#"
[shapes.todos]
table = "todos"
where = "owner = auth.sub OR shared"

[tables.todos]
insert = "new.owner = auth.sub"
update = "old.owner = auth.sub AND new.owner = auth.sub"
delete = "old.owner = auth.sub"
"#;

const WAIT: Duration = Duration::from_secs(30);

fn shape() -> ShapeQuery {
    ShapeQuery::new("todos", &["id", "owner", "title", "slug", "done", "shared"])
        .filtered("owner = 'alice' OR shared")
}

/// The local groups, in the order they are written and sent.
const GROUPS: [&str; 5] = [
    // 1: fine.
    "UPDATE todos SET done = 1 WHERE id = 1;
     INSERT INTO todos (id, owner, title, slug, done, shared) VALUES (21, 'alice', 'g1 new', 'g1-new', 0, 0)",
    // 2: the second op updates bob's shared row: permission_denied.
    "UPDATE todos SET done = 1 WHERE id = 2;
     UPDATE todos SET title = 'hijacked' WHERE id = 10",
    // 3: the second op breaks the CHECK constraint: check_violation.
    "INSERT INTO todos (id, owner, title, slug, done, shared) VALUES (22, 'alice', 'g3 new', 'g3-new', 0, 0);
     UPDATE todos SET title = '' WHERE id = 3",
    // 4: the second op reuses the slug of bob's private row (which alice
    //    cannot see): unique_violation.
    "UPDATE todos SET done = 1 WHERE id = 3;
     INSERT INTO todos (id, owner, title, slug, done, shared) VALUES (23, 'alice', 'dup', 'bob-private', 0, 0)",
    // 5: fine; it changes row 2 again after the refused group 2.
    "UPDATE todos SET title = 'g5 two' WHERE id = 2;
     INSERT INTO todos (id, owner, title, slug, done, shared) VALUES (24, 'alice', 'g5 new', 'g5-new', 0, 0)",
];

/// For each refused group (by index): its reason code and a part of the
/// message.
const REFUSED: [(usize, &str, &str); 3] = [
    (1, "permission_denied", "update rule"),
    (2, "check_violation", "todos_title_check"),
    (3, "unique_violation", "todos_slug_key"),
];

#[tokio::test(flavor = "multi_thread")]
async fn rejections_do_not_block() -> anyhow::Result<()> {
    let db = TestDb::start(SETUP, SCHEMA).await?;
    let service = outpost::service::start(db.service_config()).await?;
    let server = format!("http://{}", service.addr);
    let oracle = db.oracle();
    let pg = db.client().await?;
    let token = db.token("alice")?;
    let path = db.replica_path("alice");
    let once = Advance::Once {
        server: &server,
        token: &token,
    };
    wait_settled(&oracle, &[shape()], &path, &once, WAIT)
        .await
        .context("initial sync")?;
    ensure!(
        replica_rows(&path, &shape())?.ids() == vec![1, 2, 3, 10],
        "alice holds her rows and bob's shared row"
    );

    // Offline: five groups.
    for sql in GROUPS {
        let changed = write_local(&path, sql)?;
        ensure!(changed == 2, "{sql}: {changed} rows changed");
    }
    let seqs: Vec<u64> = outbox_groups(&path)?.iter().map(|g| g.seq).collect();
    ensure!(seqs.len() == GROUPS.len(), "outbox groups: {seqs:?}");
    let local = replica_rows(&path, &shape())?;
    ensure!(
        local.value(10, "title") == Some(&text("hijacked"))
            && local.value(3, "title") == Some(&text(""))
            && local.by_id(23).is_some(),
        "the app sees its writes at once: {local:?}"
    );

    let summary = sync_once(&server, &token, &path, WAIT)
        .await?
        .context("syncing the groups")?;
    ensure!(
        summary.groups_uploaded == 2 && summary.groups_rejected == 3,
        "two groups applied, three refused: {summary:?}"
    );

    // Postgres: groups 1 and 5, nothing of 2, 3 and 4.
    let rows = pg
        .query("SELECT id, title, slug, done FROM todos ORDER BY id", &[])
        .await?;
    let got: Vec<(i64, String, String, bool)> = rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
        .collect::<Result<_, tokio_postgres::Error>>()?;
    let row = |id: i64, title: &str, slug: &str, done: bool| {
        (id, title.to_string(), slug.to_string(), done)
    };
    let expected = vec![
        row(1, "one", "one", true),
        row(2, "g5 two", "two", false),
        row(3, "three", "three", false),
        row(10, "bobs", "bobs", false),
        row(11, "private", "bob-private", false),
        row(21, "g1 new", "g1-new", false),
        row(24, "g5 new", "g5-new", false),
    ];
    ensure!(
        got == expected,
        "Postgres after the uploads:\n  got      {got:?}\n  expected {expected:?}"
    );

    // The ledger: in order, each with its result.
    let entries = ledger(&pg, &client_id(&path)?).await?;
    let statuses: Vec<(i64, &str, Option<&str>)> = entries
        .iter()
        .map(|e| (e.seq, e.status.as_str(), e.reason_code.as_deref()))
        .collect();
    let expected: Vec<(i64, &str, Option<&str>)> = seqs
        .iter()
        .enumerate()
        .map(|(i, &seq)| match REFUSED.iter().find(|r| r.0 == i) {
            Some((_, code, _)) => (seq as i64, "rejected", Some(*code)),
            None => (seq as i64, "applied", None),
        })
        .collect();
    ensure!(
        statuses == expected,
        "the service's ledger:\n  got      {statuses:?}\n  expected {expected:?}"
    );

    // The replica lists every op of the refused groups with the reason.
    let refused = rejections(&path)?;
    ensure!(
        refused.len() == 2 * REFUSED.len(),
        "two ops per refused group: {refused:#?}"
    );
    for (group, code, message) in REFUSED {
        let ops: Vec<_> = refused.iter().filter(|r| r.seq == seqs[group]).collect();
        ensure!(ops.len() == 2, "group {}: {ops:#?}", group + 1);
        for (i, op) in ops.iter().enumerate() {
            ensure!(
                op.op as usize == i
                    && op.op_index == 1
                    && op.table == "todos"
                    && op.reason_code == code
                    && op.message.contains(message),
                "group {}, op {i}: expected {code} (message with {message:?}) on op 1: {op:#?}",
                group + 1
            );
        }
    }
    let keys: Vec<(&str, &str)> = refused
        .iter()
        .map(|r| (r.kind.as_str(), r.key.as_str()))
        .collect();
    ensure!(
        keys == [
            ("UPDATE", "[2]"),
            ("UPDATE", "[10]"),
            ("INSERT", "[22]"),
            ("UPDATE", "[3]"),
            ("UPDATE", "[3]"),
            ("INSERT", "[23]"),
        ],
        "the refused ops: {keys:?}"
    );
    ensure!(
        pending_groups(&path)?.is_empty(),
        "nothing is pending after a one-shot sync"
    );

    // The rows the refused groups touched show the server's values again,
    // with the later applied group still on top (row 2).
    let local = replica_rows(&path, &shape())?;
    ensure!(
        local.ids() == vec![1, 2, 3, 10, 21, 24],
        "rows of the replica: {:?}",
        local.ids()
    );
    ensure!(
        local.value(10, "title") == Some(&text("bobs"))
            && local.value(3, "title") == Some(&text("three"))
            && local.value(3, "done") == Some(&int(0))
            && local.value(2, "done") == Some(&int(0))
            && local.value(2, "title") == Some(&text("g5 two")),
        "rows touched by refused groups: 2 {:?}, 3 {:?}, 10 {:?}",
        local.by_id(2),
        local.by_id(3),
        local.by_id(10)
    );
    wait_settled(&oracle, &[shape()], &path, &once, WAIT)
        .await
        .context("the replica after the uploads")?;
    service.shutdown().await?;
    Ok(())
}
