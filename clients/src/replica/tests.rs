//! The replica against real SQLite files: reference counting, checksums,
//! resets, migrations and what other connections can see.

use super::*;
use crate::replica::CheckpointOutcome;
use outpost_proto::v1::{
    BucketChecksum, BucketReset, Checkpoint, ColumnSchema, DataBatch, RowOp, Schema, TableSchema,
    Value, row_op, value::Kind,
};
use outpost_proto::{bucket_checksum_add, row_hash};

pub(super) fn int(i: i64) -> Value {
    Value {
        kind: Some(Kind::Integer(i)),
    }
}
pub(super) fn text(s: &str) -> Value {
    Value {
        kind: Some(Kind::Text(s.into())),
    }
}
pub(super) fn null() -> Value {
    Value {
        kind: Some(Kind::Null(true)),
    }
}

pub(super) fn schema(version: &str, extra_column: bool) -> Schema {
    let col = |name: &str, ty: &str| ColumnSchema {
        name: name.into(),
        pg_type: String::new(),
        sqlite_type: ty.into(),
        nullable: true,
        merge: "lww".into(),
    };
    let mut columns = vec![col("id", "INTEGER"), col("title", "TEXT")];
    if extra_column {
        columns.push(col("done", "INTEGER"));
    }
    Schema {
        version: version.into(),
        tables: vec![TableSchema {
            name: "todos".into(),
            columns,
            primary_key: vec![0],
        }],
    }
}

pub(super) fn put(id: i64, title: &str) -> RowOp {
    RowOp {
        op_id: 0,
        kind: row_op::Kind::Put as i32,
        table: "todos".into(),
        key: vec![int(id)],
        values: vec![int(id), text(title)],
    }
}
pub(super) fn remove(id: i64) -> RowOp {
    RowOp {
        op_id: 0,
        kind: row_op::Kind::Remove as i32,
        table: "todos".into(),
        key: vec![int(id)],
        values: vec![],
    }
}
pub(super) fn batch(bucket: &str, ops: Vec<RowOp>) -> DataBatch {
    DataBatch {
        bucket: bucket.into(),
        ops,
    }
}

/// The checksum a bucket holding these (id, title) rows must have.
pub(super) fn expected(bucket: &str, rows: &[(i64, &str)]) -> BucketChecksum {
    let checksum = rows.iter().fold(0, |acc, (id, title)| {
        bucket_checksum_add(
            acc,
            row_hash("todos", &[int(*id)], &[int(*id), text(title)]),
        )
    });
    BucketChecksum {
        bucket: bucket.into(),
        checksum,
        count: rows.len() as u64,
    }
}

pub(super) fn checkpoint(op_id: u64, buckets: Vec<BucketChecksum>) -> Checkpoint {
    Checkpoint {
        op_id,
        lsn: op_id * 10,
        epoch: "e1".into(),
        buckets,
    }
}

pub(super) fn titles(replica: &Replica) -> Vec<(i64, String)> {
    let mut stmt = replica
        .connection()
        .prepare("SELECT id, title FROM todos ORDER BY id")
        .expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

pub(super) fn applied(outcome: CheckpointOutcome) -> u64 {
    match outcome {
        CheckpointOutcome::Applied { rows, .. } => rows,
        other => panic!("expected the checkpoint to apply, got {other:?}"),
    }
}

pub(super) fn open() -> (tempfile::TempDir, Replica) {
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = Replica::open(&dir.path().join("replica.db")).expect("open");
    (dir, replica)
}

#[test]
fn rows_are_reference_counted_across_buckets() {
    let (_dir, mut r) = open();
    r.apply_schema(&schema("v1", false)).expect("schema");
    r.apply_batch(&batch("a", vec![put(1, "one"), put(2, "two")]))
        .expect("data a");
    r.apply_batch(&batch("b", vec![put(2, "two")]))
        .expect("data b");
    let cp = checkpoint(
        5,
        vec![
            expected("a", &[(1, "one"), (2, "two")]),
            expected("b", &[(2, "two")]),
        ],
    );
    assert_eq!(applied(r.apply_checkpoint(&cp).expect("checkpoint")), 3);
    assert_eq!(titles(&r).len(), 2);

    // Row 2 leaves bucket a but b still holds it.
    r.apply_batch(&batch("a", vec![remove(2)]))
        .expect("remove a");
    let cp = checkpoint(
        6,
        vec![expected("a", &[(1, "one")]), expected("b", &[(2, "two")])],
    );
    applied(r.apply_checkpoint(&cp).expect("checkpoint"));
    assert_eq!(titles(&r), vec![(1, "one".into()), (2, "two".into())]);

    // An update through b, then b removes it: the row is gone.
    r.apply_batch(&batch("b", vec![put(2, "deux")]))
        .expect("update");
    let cp = checkpoint(7, vec![expected("b", &[(2, "deux")])]);
    applied(r.apply_checkpoint(&cp).expect("checkpoint"));
    assert_eq!(titles(&r)[1], (2, "deux".into()));
    r.apply_batch(&batch("b", vec![remove(2), remove(99)]))
        .expect("remove b");
    let cp = checkpoint(8, vec![expected("b", &[])]);
    applied(r.apply_checkpoint(&cp).expect("checkpoint"));
    assert_eq!(titles(&r), vec![(1, "one".into())]);

    let buckets = r.buckets().expect("buckets");
    assert_eq!(buckets.len(), 2);
    assert_eq!((buckets[0].op_id, buckets[0].count), (6, 1));
    assert_eq!((buckets[1].op_id, buckets[1].count), (8, 0));
    assert_eq!(
        r.checkpoint().expect("state"),
        Some(CheckpointState {
            op_id: 8,
            lsn: 80,
            epoch: "e1".into()
        })
    );
}

#[test]
fn checksum_mismatch_rolls_back_and_drops_the_bucket() {
    let (_dir, mut r) = open();
    r.apply_schema(&schema("v1", false)).expect("schema");
    r.apply_batch(&batch("a", vec![put(1, "one")])).expect("a");
    r.apply_batch(&batch("c", vec![put(3, "three")]))
        .expect("c");
    let cp = checkpoint(
        5,
        vec![expected("a", &[(1, "one")]), expected("c", &[(3, "three")])],
    );
    applied(r.apply_checkpoint(&cp).expect("checkpoint"));

    r.apply_batch(&batch("a", vec![put(2, "two")])).expect("a2");
    r.apply_batch(&batch("b", vec![put(4, "four")])).expect("b");
    let mut wrong = expected("a", &[(1, "one"), (2, "two")]);
    wrong.checksum ^= 1;
    let cp = checkpoint(6, vec![wrong, expected("b", &[(4, "four")])]);
    match r.apply_checkpoint(&cp).expect("checkpoint") {
        CheckpointOutcome::Mismatch(m) => {
            assert_eq!(m.len(), 1);
            assert_eq!(m[0].bucket, "a");
            assert_eq!(m[0].count, 2);
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    // Bucket a is dropped, b's pending data is rolled back, c is untouched.
    assert_eq!(titles(&r), vec![(3, "three".into())]);
    let buckets = r.buckets().expect("buckets");
    assert_eq!(buckets.len(), 1);
    assert_eq!((buckets[0].bucket.as_str(), buckets[0].op_id), ("c", 5));
    let (epoch, cursors) = r.request_state().expect("request");
    assert_eq!(epoch, "e1");
    assert_eq!(cursors.len(), 1);
    assert_eq!(r.checkpoint().expect("state").map(|c| c.op_id), Some(5));
}

#[test]
fn reset_drops_one_bucket_only() {
    let (_dir, mut r) = open();
    r.apply_schema(&schema("v1", false)).expect("schema");
    r.apply_batch(&batch("a", vec![put(1, "one"), put(2, "two")]))
        .expect("a");
    r.apply_batch(&batch("b", vec![put(2, "two"), put(3, "three")]))
        .expect("b");
    let cp = checkpoint(
        5,
        vec![
            expected("a", &[(1, "one"), (2, "two")]),
            expected("b", &[(2, "two"), (3, "three")]),
        ],
    );
    applied(r.apply_checkpoint(&cp).expect("checkpoint"));

    r.apply_reset(&BucketReset {
        bucket: "a".into(),
        reason: "compacted".into(),
        removed: false,
    })
    .expect("reset");
    let cp = checkpoint(6, vec![expected("b", &[(2, "two"), (3, "three")])]);
    applied(r.apply_checkpoint(&cp).expect("checkpoint"));
    assert_eq!(titles(&r), vec![(2, "two".into()), (3, "three".into())]);
    let buckets = r.buckets().expect("buckets");
    assert_eq!(buckets.len(), 1);
    assert_eq!(buckets[0].bucket, "b");
    let held: i64 = r
        .connection()
        .query_row(
            "SELECT count(*) FROM _outpost_rows WHERE bucket = 'a'",
            [],
            |row| row.get(0),
        )
        .expect("count");
    assert_eq!(held, 0);
}

#[test]
fn schema_change_adds_a_column() {
    let (dir, mut r) = open();
    r.apply_schema(&schema("v1", false)).expect("schema");
    r.apply_batch(&batch("a", vec![put(1, "one")])).expect("a");
    applied(
        r.apply_checkpoint(&checkpoint(5, vec![expected("a", &[(1, "one")])]))
            .expect("checkpoint"),
    );
    drop(r);

    let mut r = Replica::open(&dir.path().join("replica.db")).expect("reopen");
    r.apply_schema(&schema("v2", true)).expect("schema v2");
    let mut op = put(2, "two");
    op.values.push(int(1));
    r.apply_batch(&batch("b", vec![op])).expect("b");
    let b = BucketChecksum {
        bucket: "b".into(),
        checksum: row_hash("todos", &[int(2)], &[int(2), text("two"), int(1)]),
        count: 1,
    };
    applied(
        r.apply_checkpoint(&checkpoint(6, vec![b]))
            .expect("checkpoint"),
    );
    let done: Vec<Option<i64>> = r
        .connection()
        .prepare("SELECT done FROM todos ORDER BY id")
        .expect("prepare")
        .query_map([], |row| row.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(done, vec![None, Some(1)]);
    assert_eq!(r.schema_version().expect("version").as_deref(), Some("v2"));

    // A PUT with the old column count is refused.
    let err = r
        .apply_batch(&batch("b", vec![put(3, "three")]))
        .expect_err("too few values");
    assert!(matches!(err, ClientError::Protocol(_)), "{err}");
}

#[test]
fn readers_see_nothing_until_the_checkpoint_commits() {
    let (dir, mut r) = open();
    let reader = Connection::open(dir.path().join("replica.db")).expect("reader");
    // A schema between checkpoints commits at once and holds no write lock.
    r.apply_schema(&schema("v1", false)).expect("schema");
    reader
        .execute_batch("BEGIN IMMEDIATE; ROLLBACK;")
        .expect("the write lock is free");
    let count = |c: &Connection| -> i64 {
        c.query_row("SELECT count(*) FROM todos", [], |row| row.get(0))
            .expect("count")
    };
    r.apply_batch(&batch("a", vec![put(1, "one"), put(2, "two")]))
        .expect("a");
    assert_eq!(count(&reader), 0);
    let cursor: i64 = reader
        .query_row("SELECT count(*) FROM _outpost_buckets", [], |row| {
            row.get(0)
        })
        .expect("buckets");
    assert_eq!(cursor, 0);
    applied(
        r.apply_checkpoint(&checkpoint(
            2,
            vec![expected("a", &[(1, "one"), (2, "two")])],
        ))
        .expect("checkpoint"),
    );
    assert_eq!(count(&reader), 2);
}

#[test]
fn dropping_the_replica_rolls_back_pending_data() {
    let (dir, mut r) = open();
    r.apply_schema(&schema("v1", false)).expect("schema");
    applied(
        r.apply_checkpoint(&checkpoint(1, vec![]))
            .expect("checkpoint"),
    );
    let client_id = r.client_id().to_string();
    r.apply_batch(&batch("a", vec![put(1, "one")])).expect("a");
    drop(r);
    let r = Replica::open(&dir.path().join("replica.db")).expect("reopen");
    assert_eq!(r.client_id(), client_id);
    assert!(titles(&r).is_empty());
    assert!(r.buckets().expect("buckets").is_empty());
    assert_eq!(r.checkpoint().expect("state").map(|c| c.op_id), Some(1));
}

#[test]
fn invalid_rows_are_protocol_errors() {
    let (_dir, mut r) = open();
    r.apply_schema(&schema("v1", false)).expect("schema");
    applied(
        r.apply_checkpoint(&checkpoint(1, vec![]))
            .expect("checkpoint"),
    );
    let mut unknown = put(1, "x");
    unknown.table = "nope".into();
    let mut bad_key = put(1, "x");
    bad_key.key.push(int(2));
    let mut bad_kind = put(1, "x");
    bad_kind.kind = 7;
    let mut key_differs = put(1, "x");
    key_differs.key = vec![int(2)];
    for op in [unknown, bad_key, bad_kind, key_differs] {
        let err = r.apply_batch(&batch("a", vec![op])).expect_err("invalid");
        assert!(matches!(err, ClientError::Protocol(_)), "{err}");
        r.rollback().expect("rollback");
    }
    // A NULL title is a value like any other.
    let mut op = put(1, "x");
    op.values[1] = null();
    r.apply_batch(&batch("a", vec![op])).expect("null value");
}

#[test]
fn read_only_open_requires_a_replica() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("other.db");
    assert!(matches!(
        Replica::open_read_only(&path),
        Err(ClientError::NotAReplica { .. })
    ));
    Connection::open(&path)
        .expect("plain")
        .execute_batch("CREATE TABLE t (x)")
        .expect("create");
    assert!(matches!(
        Replica::open_read_only(&path),
        Err(ClientError::NotAReplica { .. })
    ));
    let replica_path = dir.path().join("replica.db");
    let mut r = Replica::open(&replica_path).expect("open");
    r.apply_schema(&schema("v1", false)).expect("schema");
    applied(
        r.apply_checkpoint(&checkpoint(1, vec![]))
            .expect("checkpoint"),
    );
    let ro = Replica::open_read_only(&replica_path).expect("read-only");
    assert_eq!(ro.client_id(), r.client_id());
    assert_eq!(
        ro.tables().expect("tables"),
        vec![TableState {
            name: "todos".into(),
            rows: 0
        }]
    );
}

/// A large initial download in one checkpoint. Run with
/// `cargo test -p outpost-client --release -- --ignored large_initial_sync --nocapture`.
#[test]
#[ignore = "slow: a million rows"]
fn large_initial_sync() {
    let rows: i64 = std::env::var("OUTPOST_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let (_dir, mut r) = open();
    r.apply_schema(&schema("v1", false)).expect("schema");
    let start = std::time::Instant::now();
    let mut checksum = 0u64;
    let title = "a title of typical length for a todo item";
    for chunk in (0..rows).collect::<Vec<_>>().chunks(1000) {
        let ops: Vec<RowOp> = chunk.iter().map(|&id| put(id, title)).collect();
        for op in &ops {
            checksum = bucket_checksum_add(checksum, row_hash("todos", &op.key, &op.values));
        }
        r.apply_batch(&batch("all", ops)).expect("data");
    }
    let applied_at = start.elapsed();
    let cp = checkpoint(
        1,
        vec![BucketChecksum {
            bucket: "all".into(),
            checksum,
            count: rows as u64,
        }],
    );
    assert_eq!(
        applied(r.apply_checkpoint(&cp).expect("checkpoint")),
        rows as u64
    );
    println!(
        "{rows} rows: applied in {applied_at:?}, committed in {:?}",
        start.elapsed()
    );
}

#[test]
fn the_log_is_copied_into_the_file_beside_the_commits_and_removed_on_close() {
    let (dir, mut r) = open();
    let db = dir.path().join("replica.db");
    let wal = dir.path().join("replica.db-wal");
    r.apply_schema(&schema("v1", false)).expect("schema");
    // Well over the 1000 log frames that wake the WAL thread.
    let title = "x".repeat(200);
    let rows: Vec<(i64, &str)> = (1..=30_000).map(|id| (id, title.as_str())).collect();
    for chunk in rows.chunks(1000) {
        let ops = chunk.iter().map(|(id, t)| put(*id, t)).collect();
        r.apply_batch(&batch("a", ops)).expect("data");
    }
    let cp = checkpoint(1, vec![expected("a", &rows)]);
    assert_eq!(
        applied(r.apply_checkpoint(&cp).expect("checkpoint")),
        30_000
    );

    // The rows (about 7 MB) reach the database file with no further commit.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::metadata(&db).expect("db").len() < 6_000_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the log was not checkpointed: db {} bytes, log {} bytes",
            std::fs::metadata(&db).expect("db").len(),
            std::fs::metadata(&wal).map_or(0, |m| m.len())
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The writer's commits no longer checkpoint themselves.
    let auto: i64 = r
        .connection()
        .query_row("PRAGMA wal_autocheckpoint", [], |row| row.get(0))
        .expect("pragma");
    assert_eq!(auto, 0);
    assert_eq!(titles(&r).len(), 30_000);

    drop(r);
    assert!(!wal.exists(), "the log outlived the replica");
    let reopened = Replica::open(&db).expect("reopen");
    assert_eq!(titles(&reopened).len(), 30_000);
}
