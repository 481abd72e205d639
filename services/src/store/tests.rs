//! Store tests: checksums follow puts and removes, readers see only committed
//! boundaries, and compaction sets the horizon.

use super::*;
use crate::lsn::Lsn;
use outpost_proto::v1::{RowOp, Value, value::Kind};
use outpost_proto::{bucket_checksum_add, row_hash};
use prost::Message;

fn op(id: i64, title: &str) -> (RowOp, u64) {
    let key = vec![Value {
        kind: Some(Kind::Integer(id)),
    }];
    let values = vec![
        key[0].clone(),
        Value {
            kind: Some(Kind::Text(title.into())),
        },
    ];
    let hash = row_hash("todos", &key, &values);
    (
        RowOp {
            op_id: 0,
            kind: 1,
            table: "todos".into(),
            key,
            values,
        },
        hash,
    )
}

/// A new store with row 1 ("a") put into `buckets.0` and row 2 ("b") into
/// `buckets.1`, committed at LSN 10 (ending at 11).
struct TwoRows {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    w: StoreWriter,
    a: (RowOp, u64, u64),
    b: (RowOp, u64, u64),
}

fn two_rows(buckets: (&str, &str)) -> TwoRows {
    let dir = tempfile::tempdir().unwrap();
    let path = database_path(dir.path());
    let mut w = StoreWriter::open(&path).unwrap();
    w.reinitialise("v1", "slot", "epoch1").unwrap();
    let (a, ha) = op(1, "a");
    let (b, hb) = op(2, "b");
    let a_id = w
        .bucket_put(buckets.0, "todos", "[1]", &a.encode_to_vec(), ha, None)
        .unwrap();
    let b_id = w
        .bucket_put(buckets.1, "todos", "[2]", &b.encode_to_vec(), hb, None)
        .unwrap();
    w.mark_commit(Lsn(10), Lsn(11));
    w.commit().unwrap();
    TwoRows {
        _dir: dir,
        path,
        w,
        a: (a, ha, a_id),
        b: (b, hb, b_id),
    }
}

#[test]
fn checksums_ops_and_snapshots() {
    let TwoRows {
        _dir,
        path,
        mut w,
        a: (_, ha, a_id),
        b: (_, hb, b_id),
    } = two_rows(("B", "B"));

    let pool = ReaderPool::new(&path, 2);
    let (cp, info) = pool
        .read(|t| Ok((t.checkpoint()?, t.bucket("B")?)))
        .unwrap();
    assert_eq!(cp.epoch, "epoch1");
    assert_eq!(cp.op_id, 2);
    assert_eq!(cp.lsn, Lsn(11));
    assert_eq!(info.count, 2);
    assert_eq!(info.checksum, bucket_checksum_add(ha, hb));

    // An update replaces the op; a remove leaves a tombstone; uncommitted
    // changes are invisible to readers.
    let (a2, ha2) = op(1, "a2");
    w.begin().unwrap();
    w.bucket_put(
        "B",
        "todos",
        "[1]",
        &a2.encode_to_vec(),
        ha2,
        Some((a_id, ha)),
    )
    .unwrap();
    let (mut rm, _) = op(2, "");
    rm.kind = 2;
    w.bucket_remove("B", "todos", "[2]", &rm.encode_to_vec(), (b_id, hb))
        .unwrap();
    assert_eq!(pool.read(|t| t.bucket("B")).unwrap().count, 2);
    w.mark_commit(Lsn(20), Lsn(21));
    w.commit().unwrap();
    let info = pool.read(|t| t.bucket("B")).unwrap();
    assert_eq!((info.count, info.checksum), (1, ha2));

    let mut from_zero = Vec::new();
    pool.read(|t| {
        t.ops_since("B", 0, |o| {
            from_zero.push(o);
            true
        })
    })
    .unwrap();
    assert_eq!(from_zero.len(), 1, "removes are skipped from zero");
    let mut from_two = Vec::new();
    pool.read(|t| {
        t.ops_since("B", 2, |o| {
            from_two.push((o.op_id, o.kind));
            true
        })
    })
    .unwrap();
    assert_eq!(from_two, vec![(3, 1), (4, 2)]);

    // Compaction drops the tombstone and raises the horizon.
    // The tombstone was the bucket's newest op: its summary stays.
    assert_eq!(w.compact_tombstones(4).unwrap(), 1);
    w.commit().unwrap();
    let info = pool.read(|t| t.bucket("B")).unwrap();
    assert_eq!(
        (info.horizon, info.count, info.checksum, info.last_op_id),
        (4, 1, ha2, 4)
    );

    // State survives reopening, and so do the summaries the next ops
    // build on.
    drop(w);
    let mut w = StoreWriter::open(&path).unwrap();
    assert_eq!(w.state().last_commit_lsn, Lsn(20));
    assert_eq!(w.state().last_op_id, 4);
    w.begin().unwrap();
    let (c, hc) = op(3, "c");
    let c_id = w
        .bucket_put("B", "todos", "[3]", &c.encode_to_vec(), hc, None)
        .unwrap();
    w.mark_commit(Lsn(30), Lsn(31));
    w.commit().unwrap();
    let info = pool.read(|t| t.bucket("B")).unwrap();
    assert_eq!(
        (info.count, info.checksum, info.last_op_id),
        (2, bucket_checksum_add(ha2, hc), c_id)
    );
}

#[test]
fn membership_and_link_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let path = database_path(dir.path());
    let mut w = StoreWriter::open(&path).unwrap();
    w.reinitialise("v1", "slot", "epoch1").unwrap();
    w.commit().unwrap();
    let readers = ReaderPool::new(&path, 1);
    let read = |m: usize, user: &str| {
        readers
            .read(|t| Ok((t.member_keys(m, user)?, t.member_version(m, user)?)))
            .unwrap()
    };
    assert_eq!(read(0, "u"), (Vec::<String>::new(), 0));
    w.begin().unwrap();
    w.member_add(0, "u", "2", "[2,\"u\"]").unwrap();
    w.member_add(0, "u", "1", "[1,\"u\"]").unwrap();
    // The same key from a second source row is one key.
    w.member_add(0, "u", "1", "[1,\"u\",\"again\"]").unwrap();
    w.member_add(1, "u", "9", "[9]").unwrap();
    let after_adds = w.state().last_op_id;
    // Readers see nothing before the commit.
    assert_eq!(read(0, "u").0, Vec::<String>::new());
    w.commit().unwrap();
    let (keys, v1) = read(0, "u");
    assert_eq!(keys, ["1", "2"]);
    assert!(v1 > 0 && v1 <= after_adds);
    // Adding an entry that exists changes nothing, not even the version.
    w.begin().unwrap();
    w.member_add(0, "u", "2", "[2,\"u\"]").unwrap();
    w.commit().unwrap();
    assert_eq!(read(0, "u").1, v1);
    w.begin().unwrap();
    w.member_remove(0, "u", "1", "[1,\"u\"]").unwrap();
    w.commit().unwrap();
    let (keys, v2) = read(0, "u");
    assert_eq!(keys, ["1", "2"], "still given by the other source row");
    assert!(v2 > v1);
    w.begin().unwrap();
    w.member_remove(0, "u", "1", "[1,\"u\",\"again\"]").unwrap();
    w.member_remove(0, "u", "nope", "[0]").unwrap();
    w.commit().unwrap();
    assert_eq!(read(0, "u").0, ["2"]);
    assert_eq!(read(1, "u").0, ["9"]);

    w.begin().unwrap();
    w.link_add(0, "[5]", "[100]").unwrap();
    w.link_add(0, "[5]", "[101]").unwrap();
    w.link_add(0, "[5]", "[101]").unwrap();
    w.link_add(1, "[5]", "[102]").unwrap();
    let mut children = w.link_children(0, "[5]").unwrap();
    children.sort();
    assert_eq!(children, ["[100]", "[101]"]);
    w.link_remove(0, "[5]", "[100]").unwrap();
    assert_eq!(w.link_children(0, "[5]").unwrap(), ["[101]"]);
    assert!(w.link_children(0, "[6]").unwrap().is_empty());
    w.commit().unwrap();
    // A rebuilt store starts with empty indexes.
    w.reinitialise("v2", "slot", "epoch2").unwrap();
    assert!(w.link_children(1, "[5]").unwrap().is_empty());
    w.commit().unwrap();
    assert_eq!(read(1, "u"), (Vec::<String>::new(), 0));
}

/// What a commit reports it changed (the ops of each bucket, and the
/// summaries after them) is what a reader of the store sees past the
/// commit before it: streams are caught up from it without a store read.
#[test]
fn touched_matches_the_store() {
    let TwoRows {
        _dir,
        path,
        mut w,
        a: (a, ha, a_id),
        b: (_, hb, b_id),
    } = two_rows(("B", "C"));
    let first = w.take_touched();
    assert!(!first.ops_dropped);
    assert_eq!(first.buckets.len(), 2);
    assert_eq!(first.buckets["B"].ops.len(), 1);

    // The next commit: an update (twice) in B, a remove in C.
    w.begin().unwrap();
    let (a2, ha2) = op(1, "a2");
    let a2_id = w
        .bucket_put(
            "B",
            "todos",
            "[1]",
            &a2.encode_to_vec(),
            ha2,
            Some((a_id, ha)),
        )
        .unwrap();
    let (a3, ha3) = op(1, "a3");
    w.bucket_put(
        "B",
        "todos",
        "[1]",
        &a3.encode_to_vec(),
        ha3,
        Some((a2_id, ha2)),
    )
    .unwrap();
    let (mut rm, _) = op(2, "");
    rm.kind = 2;
    w.bucket_remove("C", "todos", "[2]", &rm.encode_to_vec(), (b_id, hb))
        .unwrap();
    w.mark_commit(Lsn(20), Lsn(21));
    w.commit().unwrap();
    let touched = w.take_touched();
    let pool = ReaderPool::new(&path, 1);
    for (bucket, change) in &touched.buckets {
        let info = pool.read(|t| t.bucket(bucket)).unwrap();
        assert_eq!((change.checksum, change.count), (info.checksum, info.count));
        // Applying the commit's ops in order ends where the store's log does.
        let mut stored = Vec::new();
        pool.read(|t| {
            t.ops_since(bucket, 2, |o| {
                stored.push(o);
                true
            })
        })
        .unwrap();
        let last = change.ops.last().expect("the commit wrote to the bucket");
        let mut from_memory = RowOp::decode(last.op.as_slice()).unwrap();
        from_memory.op_id = last.op_id;
        assert_eq!(stored.last(), Some(&from_memory), "bucket {bucket}");
        assert!(change.ops.windows(2).all(|w| w[0].op_id < w[1].op_id));
    }
    assert_eq!(touched.buckets["B"].ops.len(), 2);
    assert!(touched.buckets["C"].ops[0].remove);
    assert_eq!(touched.buckets["C"].count, 0);

    // A rolled back transaction reports nothing.
    w.begin().unwrap();
    w.bucket_put("B", "todos", "[3]", &a.encode_to_vec(), ha, None)
        .unwrap();
    w.rollback().unwrap();
    assert!(w.take_touched().buckets.is_empty());
}

#[test]
fn a_store_of_an_older_layout_is_emptied_and_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let path = database_path(dir.path());
    {
        // The layout before the mirror was keyed by key length.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
             INSERT INTO meta VALUES ('format', '2'), ('epoch', 'old');
             CREATE TABLE mirror (
                 tbl TEXT NOT NULL, key TEXT NOT NULL, row BLOB NOT NULL, placed TEXT NOT NULL,
                 hash INTEGER NOT NULL, PRIMARY KEY (tbl, key)) WITHOUT ROWID;
             INSERT INTO mirror VALUES ('todos', '[1]', x'', '', 0);",
        )
        .unwrap();
    }
    let mut w = StoreWriter::open(&path).unwrap();
    assert_eq!(w.state().epoch, "", "the old content is gone");
    assert_eq!(w.mirror_get("todos", "[1]").unwrap(), None);
    w.reinitialise("v1", "slot", "epoch1").unwrap();
    // Keys of every length, out of order, with the same text at different
    // lengths: each is found under its own key and nowhere else.
    let keys = [
        "[10]", "[9]", "[100]", "[1]", "[\"a\"]", "[\"ab\"]", "[2,1]",
    ];
    for (i, key) in keys.iter().enumerate() {
        let row = TextRow(vec![Some(key.to_string()), None]);
        let inserted = w
            .insert_new_row("todos", key, &row, i as u64, &[], &[])
            .unwrap();
        assert!(inserted, "{key}");
        let again = w.insert_new_row("todos", key, &row, 0, &[], &[]).unwrap();
        assert!(!again, "{key} is held already");
    }
    for (i, key) in keys.iter().enumerate() {
        let got = w.mirror_get("todos", key).unwrap().expect(key);
        assert_eq!(got.row.0[0].as_deref(), Some(*key));
        assert_eq!(got.hash, i as u64);
    }
    let mut listed = w.mirror_keys("todos").unwrap();
    listed.sort();
    let mut expected: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected);
    w.mirror_delete("todos", "[10]").unwrap();
    assert_eq!(w.mirror_get("todos", "[10]").unwrap(), None);
    assert!(w.mirror_get("todos", "[1]").unwrap().is_some());
    w.mark_commit(Lsn(10), Lsn(11));
    w.commit().unwrap();
}

#[test]
fn the_log_is_copied_into_the_file_beside_the_commits_and_removed_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = database_path(dir.path());
    let wal = dir.path().join("outpost.db-wal");
    let mut w = StoreWriter::open(&path).unwrap();
    w.reinitialise("v1", "slot", "epoch1").unwrap();
    w.commit().unwrap();
    // Small commits, as live changes make them, well past the 1000 log
    // frames that wake the thread.
    let title = "x".repeat(600);
    for txn in 0..100i64 {
        w.begin().unwrap();
        for i in 0..100 {
            let id = txn * 100 + i;
            let (row, hash) = op(id, &title);
            w.bucket_put(
                "b",
                "todos",
                &format!("[{id}]"),
                &row.encode_to_vec(),
                hash,
                None,
            )
            .unwrap();
        }
        w.mark_commit(Lsn(10 + txn as u64 * 2), Lsn(11 + txn as u64 * 2));
        w.commit().unwrap();
    }
    // The rows (several MB) reach the database file, with no checkpoint
    // in the writer's commits.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::metadata(&path).unwrap().len() < 4_000_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the log was not checkpointed: store {} bytes, log {} bytes",
            std::fs::metadata(&path).unwrap().len(),
            std::fs::metadata(&wal).map_or(0, |m| m.len())
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let auto: i64 = w
        .conn
        .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
        .unwrap();
    assert_eq!(auto, 0);
    drop(w);
    assert!(!wal.exists(), "the log outlived the writer");
    let w = StoreWriter::open(&path).unwrap();
    assert_eq!(w.state().last_op_id, 10_000);
}

/// What a store commit costs per op when its ops spread over many buckets:
/// 60,000 puts of new rows, in commits of `CHUNK` ops (default 3,500, as
/// a backlog drains), over `BUCKETS` buckets (default 10,000), after as
/// many to fill them and a restart of the writer.
/// `BUCKETS=10 cargo test --release -p outpost --lib
/// store::tests::ops_spread_over_buckets -- --ignored --nocapture`, and
/// under `valgrind --tool=callgrind` for instruction counts.
#[test]
#[ignore = "a measurement; run it by hand"]
fn ops_spread_over_buckets() {
    let buckets: i64 = std::env::var("BUCKETS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let per_commit: usize = std::env::var("CHUNK")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3_500);
    let dir = tempfile::tempdir().unwrap();
    let mut w = StoreWriter::open(&database_path(dir.path())).unwrap();
    w.reinitialise("v1", "slot", "epoch1").unwrap();
    w.commit().unwrap();
    let names: Vec<String> = (0..buckets).map(|b| format!("items#0[u{b}]")).collect();
    let mut lsn = 10;
    let mut run = |w: &mut StoreWriter, from: i64| {
        for chunk in (from..from + 60_000).collect::<Vec<_>>().chunks(per_commit) {
            w.begin().unwrap();
            for &id in chunk {
                let (row, hash) = op(id, "item");
                let key = format!("[{id}]");
                let bucket = &names[(id % buckets) as usize];
                w.bucket_put(bucket, "items", &key, &row.encode_to_vec(), hash, None)
                    .unwrap();
            }
            w.mark_commit(Lsn(lsn), Lsn(lsn + 1));
            lsn += 2;
            w.commit().unwrap();
            w.take_touched();
        }
    };
    run(&mut w, 0);
    // As after a restart, with a backlog waiting.
    drop(w);
    let mut w = StoreWriter::open(&database_path(dir.path())).unwrap();
    let started = std::time::Instant::now();
    run(&mut w, 60_000);
    println!(
        "{buckets} buckets: {:.2} µs per op",
        started.elapsed().as_secs_f64() * 1e6 / 60_000.0
    );
}
