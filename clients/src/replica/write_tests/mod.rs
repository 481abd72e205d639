//! Local writes against real SQLite files: capture by the triggers, op
//! groups, the clock, counters and migrations; [`answers`]: the service's
//! answers and rows with local changes under incoming server data.

mod answers;

use super::*;
use crate::LocalDb;
use outpost_proto::v1::{
    BucketChecksum, Checkpoint, ColumnSchema, DataBatch, GroupResult, RowOp, Schema, TableSchema,
    Value, group_result, row_op, value::Kind, write_op,
};
use outpost_proto::{bucket_checksum_add, row_hash};

fn int(i: i64) -> Value {
    Value {
        kind: Some(Kind::Integer(i)),
    }
}
fn text(s: &str) -> Value {
    Value {
        kind: Some(Kind::Text(s.into())),
    }
}

/// todos (id INTEGER PRIMARY KEY, title TEXT, done INTEGER, votes INTEGER counter).
fn schema() -> Schema {
    let col = |name: &str, ty: &str, merge: &str| ColumnSchema {
        name: name.into(),
        pg_type: String::new(),
        sqlite_type: ty.into(),
        nullable: true,
        merge: merge.into(),
    };
    Schema {
        version: "v1".into(),
        tables: vec![TableSchema {
            name: "todos".into(),
            columns: vec![
                col("id", "INTEGER", "lww"),
                col("title", "TEXT", "lww"),
                col("done", "INTEGER", "lww"),
                col("votes", "INTEGER", "counter"),
            ],
            primary_key: vec![0],
        }],
    }
}

type Row = (i64, &'static str, i64, i64);

fn values(r: &Row) -> Vec<Value> {
    vec![int(r.0), text(r.1), int(r.2), int(r.3)]
}

fn put(r: &Row) -> RowOp {
    RowOp {
        op_id: 0,
        kind: row_op::Kind::Put as i32,
        table: "todos".into(),
        key: vec![int(r.0)],
        values: values(r),
    }
}

/// Applies `rows` as the whole content of bucket `all`, closed by a checkpoint at `lsn`.
fn server_state(r: &mut Replica, lsn: u64, changed: &[Row], all: &[Row]) {
    r.apply_batch(&DataBatch {
        bucket: "all".into(),
        ops: changed.iter().map(put).collect(),
    })
    .expect("data");
    let checksum = all.iter().fold(0, |acc, row| {
        bucket_checksum_add(acc, row_hash("todos", &[int(row.0)], &values(row)))
    });
    let outcome = r
        .apply_checkpoint(&Checkpoint {
            op_id: lsn,
            lsn,
            epoch: "e1".into(),
            buckets: vec![BucketChecksum {
                bucket: "all".into(),
                checksum,
                count: all.len() as u64,
            }],
        })
        .expect("checkpoint");
    assert!(
        matches!(outcome, CheckpointOutcome::Applied { .. }),
        "{outcome:?}"
    );
}

/// A checkpoint at `lsn` that changes nothing.
fn empty_checkpoint(r: &mut Replica, lsn: u64) {
    r.apply_checkpoint(&Checkpoint {
        op_id: lsn,
        lsn,
        epoch: "e1".into(),
        buckets: vec![],
    })
    .expect("checkpoint");
}

const ONE: Row = (1, "one", 0, 5);

const ALL: UploadLimits = UploadLimits {
    groups: 100,
    ops: usize::MAX,
    bytes: usize::MAX,
};
const TWO: Row = (2, "two", 0, 0);

/// A replica holding rows 1 and 2 at LSN 10, and an app connection.
fn setup() -> (tempfile::TempDir, Replica, LocalDb) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("replica.db");
    let mut r = Replica::open(&path).expect("open");
    r.apply_schema(&schema()).expect("schema");
    server_state(&mut r, 10, &[ONE, TWO], &[ONE, TWO]);
    let db = LocalDb::open(&path).expect("local");
    (dir, r, db)
}

fn rows(db: &Connection) -> Vec<(i64, String, i64, i64)> {
    db.prepare("SELECT id, title, done, votes FROM todos ORDER BY id")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

type OutboxRow = (String, String, Option<String>, Option<String>);

fn outbox(db: &Connection) -> Vec<OutboxRow> {
    db.prepare("SELECT kind, key, columns, before FROM _outpost_outbox ORDER BY id")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

fn result(seq: u64, status: group_result::Status, commit_lsn: u64) -> GroupResult {
    GroupResult {
        seq,
        status: status as i32,
        commit_lsn,
        reason_code: String::new(),
        message: String::new(),
        op_index: 0,
    }
}

fn rejected(seq: u64, code: &str) -> GroupResult {
    GroupResult {
        reason_code: code.into(),
        message: format!("refused: {code}"),
        ..result(seq, group_result::Status::Rejected, 0)
    }
}

fn count(db: &Connection, table: &str) -> i64 {
    db.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .expect("count")
}

#[test]
fn triggers_capture_inserts_updates_and_deletes() {
    let (_dir, r, db) = setup();
    db.execute("INSERT INTO todos VALUES (3, 'three', 0, 1)", [])
        .expect("insert");
    db.execute(
        "UPDATE todos SET title = 'uno', done = done WHERE id = 1",
        [],
    )
    .expect("update");
    db.execute("UPDATE todos SET done = 0 WHERE id = 1", [])
        .expect("no-op update");
    db.execute("DELETE FROM todos WHERE id = 2", [])
        .expect("delete");
    assert_eq!(
        outbox(&db),
        vec![
            (
                "INSERT".into(),
                "[3]".into(),
                Some(r#"{"done":0,"id":3,"title":"three","votes":1}"#.into()),
                None
            ),
            (
                "UPDATE".into(),
                "[1]".into(),
                Some(r#"{"title":"uno"}"#.into()),
                Some(r#"{"title":"one"}"#.into())
            ),
            (
                "DELETE".into(),
                "[2]".into(),
                None,
                Some(r#"{"done":0,"id":2,"title":"two","votes":0}"#.into())
            ),
        ]
    );
    // Three autocommit statements: three groups, in order, with their ops.
    let groups = r.outbox_groups(ALL).expect("groups");
    assert_eq!(groups.len(), 3);
    assert!(groups.windows(2).all(|g| g[0].seq < g[1].seq));
    let insert = &groups[0].ops[0];
    assert_eq!(insert.kind, write_op::Kind::Insert as i32);
    assert_eq!(insert.table, "todos");
    assert_eq!(insert.key, vec![int(3)]);
    let names: Vec<&str> = insert.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["id", "title", "done", "votes"], "schema order");
    let update = &groups[1].ops[0];
    assert_eq!(update.kind, write_op::Kind::Update as i32);
    assert_eq!(update.columns[0].value, Some(text("uno")));
    assert_eq!(update.before[0].value, Some(text("one")));
    assert!(update.hlc > insert.hlc);
    let delete = &groups[2].ops[0];
    assert_eq!(delete.kind, write_op::Kind::Delete as i32);
    assert!(delete.columns.is_empty());
    assert_eq!(delete.before.len(), 4);
    // An insert leaves its NULL columns to the server's defaults.
    db.execute("INSERT INTO todos (id, title) VALUES (7, 'seven')", [])
        .expect("insert");
    let groups = r.outbox_groups(ALL).expect("groups");
    let names: Vec<&str> = groups[3].ops[0]
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, vec!["id", "title"]);
    db.execute("DELETE FROM todos WHERE id = 7", [])
        .expect("delete");
    // The app sees its writes at once.
    assert_eq!(
        rows(&db),
        vec![(1, "uno".into(), 0, 5), (3, "three".into(), 0, 1)]
    );
}

#[test]
fn one_transaction_is_one_group() {
    let (_dir, r, mut db) = setup();
    let tx = db.transaction().expect("begin");
    tx.execute("UPDATE todos SET title = 'a' WHERE id = 1", [])
        .expect("update");
    tx.execute("UPDATE todos SET title = 'b' WHERE id = 2", [])
        .expect("update");
    tx.commit().expect("commit");
    let tx = db.transaction().expect("begin");
    tx.execute("UPDATE todos SET done = 1", []).expect("update");
    tx.commit().expect("commit");
    let tx = db.transaction().expect("begin");
    tx.execute("UPDATE todos SET done = 0", []).expect("update");
    tx.rollback().expect("rollback");

    let groups = r.outbox_groups(ALL).expect("groups");
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0].ops.len(), 2);
    assert_eq!(groups[1].ops.len(), 2);
    assert!(groups[0].seq < groups[1].seq);
    let txids: i64 = db
        .query_row(
            "SELECT count(DISTINCT txid) FROM _outpost_outbox",
            [],
            |row| row.get(0),
        )
        .expect("txids");
    assert_eq!(txids, 2);
    assert_eq!(r.write_backlog().expect("backlog"), (2, 0));
    // The batch limits hold: one group at most, or one past the byte budget.
    let limits = |groups, ops, bytes| UploadLimits { groups, ops, bytes };
    assert_eq!(
        r.outbox_groups(limits(1, 100, usize::MAX))
            .expect("groups")
            .len(),
        1
    );
    assert_eq!(
        r.outbox_groups(limits(100, 100, 1)).expect("groups").len(),
        1
    );
    assert_eq!(
        r.outbox_groups(limits(100, 3, usize::MAX))
            .expect("groups")
            .len(),
        1
    );
    assert_eq!(
        r.outbox_groups(limits(100, 4, usize::MAX))
            .expect("groups")
            .len(),
        2
    );
    assert_eq!(
        r.outbox_groups(limits(100, 1, usize::MAX))
            .expect("groups")
            .len(),
        1
    );
}

#[test]
fn server_data_is_not_captured_and_foreign_connections_cannot_write() {
    let (dir, mut r, db) = setup();
    server_state(
        &mut r,
        20,
        &[(1, "uno", 1, 5), (3, "three", 0, 0)],
        &[(1, "uno", 1, 5), TWO, (3, "three", 0, 0)],
    );
    assert_eq!(count(&db, "_outpost_outbox"), 0);
    assert_eq!(count(&db, "_outpost_shadow"), 0);

    let plain = Connection::open(dir.path().join("replica.db")).expect("plain");
    let err = plain
        .execute("UPDATE todos SET title = 'x' WHERE id = 1", [])
        .expect_err("no capture functions");
    assert!(
        err.to_string()
            .contains("no such function: outpost_capture"),
        "{err}"
    );
    let mut attached = Connection::open(dir.path().join("replica.db")).expect("attached");
    LocalDb::attach(&mut attached).expect("attach");
    attached
        .execute("UPDATE todos SET title = 'x' WHERE id = 1", [])
        .expect("captured");
    assert_eq!(count(&db, "_outpost_outbox"), 1);
}

#[test]
fn the_clock_is_monotonic_across_connections_and_restarts() {
    let (dir, _r, db) = setup();
    let path = dir.path().join("replica.db");
    db.execute("UPDATE todos SET title = 'a' WHERE id = 1", [])
        .expect("update");
    db.execute("UPDATE todos SET title = 'b' WHERE id = 1", [])
        .expect("update");
    let hlcs: Vec<i64> = db
        .prepare("SELECT hlc FROM _outpost_outbox ORDER BY id")
        .expect("prepare")
        .query_map([], |row| row.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert!(hlcs[0] < hlcs[1]);
    // A clock value from the future (another device's clock, or ours before
    // it was set back) is never gone below, even after a restart.
    let future = hlcs[1] + (3_600_000 << 16);
    db.execute(
        "UPDATE _outpost_state SET value = ?1 WHERE key = 'hlc'",
        [future],
    )
    .expect("set");
    drop(db);
    let db = LocalDb::open(&path).expect("reopen");
    db.execute("UPDATE todos SET title = 'c' WHERE id = 1", [])
        .expect("update");
    let last: i64 = db
        .query_row("SELECT max(hlc) FROM _outpost_outbox", [], |row| row.get(0))
        .expect("max");
    assert_eq!(last, future + 1);
    let stored: i64 = db
        .query_row(
            "SELECT value FROM _outpost_state WHERE key = 'hlc'",
            [],
            |row| row.get(0),
        )
        .expect("stored");
    assert_eq!(stored, last);
}

#[test]
fn counters_travel_as_deltas() {
    let (_dir, r, db) = setup();
    db.execute("UPDATE todos SET votes = 8 WHERE id = 1", [])
        .expect("update");
    db.execute("UPDATE todos SET votes = 6, title = 't' WHERE id = 1", [])
        .expect("update");
    let groups = r.outbox_groups(ALL).expect("groups");
    let first = &groups[0].ops[0];
    assert_eq!(first.columns[0].name, "votes");
    assert_eq!(first.columns[0].value, Some(int(3)));
    assert_eq!(first.before[0].value, Some(int(5)));
    let second = &groups[1].ops[0];
    let names: Vec<&str> = second.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["title", "votes"]);
    assert_eq!(second.columns[1].value, Some(int(-2)));
    assert_eq!(second.columns[0].value, Some(text("t")));
}

#[test]
fn key_changes_and_replaces_are_a_delete_and_an_insert() {
    let (_dir, _r, db) = setup();
    db.execute("UPDATE todos SET id = 9 WHERE id = 1", [])
        .expect("rekey");
    db.execute(
        "INSERT OR REPLACE INTO todos VALUES (2, 'new two', 1, 0)",
        [],
    )
    .expect("replace");
    let kinds: Vec<(String, String)> = outbox(&db)
        .into_iter()
        .map(|(kind, key, _, _)| (kind, key))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("DELETE".into(), "[1]".into()),
            ("INSERT".into(), "[9]".into()),
            ("DELETE".into(), "[2]".into()),
            ("INSERT".into(), "[2]".into()),
        ]
    );
}

#[test]
fn triggers_follow_migrations_and_are_left_alone_otherwise() {
    let (_dir, mut r, db) = setup();
    let version = |c: &Connection| -> i64 {
        c.query_row("PRAGMA schema_version", [], |row| row.get(0))
            .expect("version")
    };
    let before = version(&db);
    r.apply_schema(&schema()).expect("same schema");
    assert_eq!(version(&db), before, "unchanged triggers are not rewritten");

    let mut wider = schema();
    wider.version = "v2".into();
    wider.tables[0].columns.push(ColumnSchema {
        name: "it's".into(),
        pg_type: String::new(),
        sqlite_type: "TEXT".into(),
        nullable: true,
        merge: "lww".into(),
    });
    r.apply_schema(&wider).expect("migration");
    db.execute("UPDATE todos SET \"it's\" = 'new' WHERE id = 1", [])
        .expect("update");
    let columns: String = db
        .query_row("SELECT columns FROM _outpost_outbox", [], |row| row.get(0))
        .expect("outbox");
    assert_eq!(columns, r#"{"it's":"new"}"#);
}

/// A polled outbox found empty is not read again until another connection
/// commits; a local write made after that is found at the next poll, and the
/// groups stay until they are answered.
#[test]
fn polling_an_idle_outbox_finds_new_writes() {
    let (_dir, mut r, db) = setup();
    assert!(r.poll_outbox(ALL).expect("poll").is_empty());
    assert!(r.poll_outbox(ALL).expect("poll").is_empty());
    db.execute("INSERT INTO todos VALUES (3, 'three', 0, 1)", [])
        .expect("insert");
    let groups = r.poll_outbox(ALL).expect("poll");
    assert_eq!(groups.len(), 1);
    assert_eq!(r.poll_outbox(ALL).expect("poll again"), groups);
    // Server data committed by the replica itself does not hide a write.
    server_state(&mut r, 20, &[], &[ONE, TWO]);
    db.execute("UPDATE todos SET title = 'uno' WHERE id = 1", [])
        .expect("update");
    assert_eq!(r.poll_outbox(ALL).expect("poll").len(), 2);
}
