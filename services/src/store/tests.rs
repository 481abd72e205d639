//! Store tests: checksums follow puts and removes, readers see only committed
//! boundaries, and compaction sets the horizon.

use super::*;
use crate::lsn::Lsn;
use outpost_proto::v1::{RowOp, Value, value::Kind};
use outpost_proto::{bucket_checksum_add, row_hash};

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

#[test]
fn checksums_ops_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let path = database_path(dir.path());
    let mut w = StoreWriter::open(&path).unwrap();
    w.reinitialise("v1", "slot", "epoch1").unwrap();
    let (mut a, ha) = op(1, "a");
    let (mut b, hb) = op(2, "b");
    w.bucket_put("B", "todos", "[1]", &mut a, ha).unwrap();
    w.bucket_put("B", "todos", "[2]", &mut b, hb).unwrap();
    w.mark_commit(Lsn(10), Lsn(11));
    w.commit().unwrap();

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
    let (mut a2, ha2) = op(1, "a2");
    w.begin().unwrap();
    w.bucket_put("B", "todos", "[1]", &mut a2, ha2).unwrap();
    let (mut rm, _) = op(2, "");
    rm.kind = 2;
    w.bucket_remove("B", "todos", "[2]", &mut rm).unwrap();
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
    assert_eq!(w.compact_tombstones(4).unwrap(), 1);
    w.commit().unwrap();
    assert_eq!(pool.read(|t| t.bucket("B")).unwrap().horizon, 4);

    // State survives reopening.
    drop(w);
    let w = StoreWriter::open(&path).unwrap();
    assert_eq!(w.state().last_commit_lsn, Lsn(20));
    assert_eq!(w.state().last_op_id, 4);
}
