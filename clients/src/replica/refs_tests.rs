//! Row references: runs of PUTs written at once, many buckets holding one
//! row, replicas written before `_outpost_row_refs`, and triggers of the app.

use super::key::decode_key;
use super::tests::{applied, batch, checkpoint, expected, open, put, remove, schema, titles};
use super::*;
use outpost_proto::key_string;

/// Rows `ids` titled `{prefix}{id}`.
fn rows(ids: std::ops::RangeInclusive<i64>, prefix: &str) -> Vec<(i64, String)> {
    ids.map(|id| (id, format!("{prefix}{id}"))).collect()
}

fn puts(rows: &[(i64, String)]) -> Vec<outpost_proto::v1::RowOp> {
    rows.iter().map(|(id, t)| put(*id, t)).collect()
}

fn checksum_of(bucket: &str, rows: &[(i64, String)]) -> outpost_proto::v1::BucketChecksum {
    let refs: Vec<(i64, &str)> = rows.iter().map(|(id, t)| (*id, t.as_str())).collect();
    expected(bucket, &refs)
}

#[test]
fn runs_of_puts_fall_back_to_one_by_one_when_rows_are_held() {
    let (_dir, mut r) = open();
    r.apply_schema(&schema("v1", false)).expect("schema");
    // 70 new rows: two runs written at once, the rest one by one.
    let first = rows(1..=70, "a");
    r.apply_batch(&batch("a", puts(&first))).expect("data");
    applied(
        r.apply_checkpoint(&checkpoint(1, vec![checksum_of("a", &first)]))
            .expect("checkpoint"),
    );

    // A run whose 20th row the bucket holds: nothing of the run may count
    // twice, and the held row's old hash must leave the checksum.
    let mut second = rows(51..=120, "b");
    r.apply_batch(&batch("a", puts(&second)))
        .expect("overlapping data");
    let mut held = rows(1..=50, "a");
    held.append(&mut second);
    applied(
        r.apply_checkpoint(&checkpoint(2, vec![checksum_of("a", &held)]))
            .expect("checkpoint"),
    );
    assert_eq!(titles(&r), held);

    // A run that repeats a row within itself.
    let mut repeated = rows(200..=231, "c");
    repeated[31] = (200, "c200 again".into());
    r.apply_batch(&batch("d", puts(&repeated)))
        .expect("repeated data");
    let d = rows(200..=230, "c")
        .into_iter()
        .map(|(id, t)| {
            if id == 200 {
                (id, "c200 again".into())
            } else {
                (id, t)
            }
        })
        .collect::<Vec<_>>();
    applied(
        r.apply_checkpoint(&checkpoint(
            3,
            vec![checksum_of("a", &held), checksum_of("d", &d)],
        ))
        .expect("checkpoint"),
    );
    let buckets = r.buckets().expect("buckets");
    assert_eq!(
        buckets.iter().map(|b| b.count).collect::<Vec<_>>(),
        [120, 31]
    );
}

#[test]
fn rows_held_by_many_buckets_leave_with_the_last() {
    for buckets in [3, refs::ROW_INDEX_BUCKETS + 8] {
        let (_dir, mut r) = open();
        r.apply_schema(&schema("v1", false)).expect("schema");
        let names: Vec<String> = (0..buckets).map(|b| format!("b{b}")).collect();
        for (i, name) in names.iter().enumerate() {
            let own = 100 + i as i64;
            r.apply_batch(&batch(name, vec![put(1, "shared"), put(own, "own")]))
                .expect("data");
        }
        let sums = |with_shared: usize| -> Vec<outpost_proto::v1::BucketChecksum> {
            names
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let mut held = vec![(100 + i as i64, "own")];
                    if i >= with_shared {
                        held.insert(0, (1, "shared"));
                    }
                    expected(name, &held)
                })
                .collect()
        };
        applied(
            r.apply_checkpoint(&checkpoint(1, sums(0)))
                .expect("checkpoint"),
        );
        let indexed: bool = r
            .connection()
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = '_outpost_row_refs_by_row')",
                [],
                |row| row.get(0),
            )
            .expect("index");
        assert_eq!(
            indexed,
            buckets > refs::ROW_INDEX_BUCKETS,
            "{buckets} buckets"
        );

        // Every bucket but the last lets go of row 1: it stays.
        for name in &names[..buckets - 1] {
            r.apply_batch(&batch(name, vec![remove(1)]))
                .expect("remove");
        }
        applied(
            r.apply_checkpoint(&checkpoint(2, sums(buckets - 1)))
                .expect("checkpoint"),
        );
        assert_eq!(titles(&r)[0], (1, "shared".into()));
        // The last one drops it by a reset.
        r.apply_reset(&outpost_proto::v1::BucketReset {
            bucket: names[buckets - 1].clone(),
            reason: "test".into(),
            removed: true,
        })
        .expect("reset");
        let mut left = sums(buckets);
        left.pop();
        applied(
            r.apply_checkpoint(&checkpoint(3, left))
                .expect("checkpoint"),
        );
        let held = titles(&r);
        assert_eq!(held.len(), buckets - 1, "{buckets} buckets");
        assert!(held.iter().all(|(id, _)| *id >= 100));
    }
}

#[test]
fn a_replica_with_the_earlier_row_table_is_moved_over() {
    let (dir, mut r) = open();
    r.apply_schema(&schema("v1", false)).expect("schema");
    r.apply_batch(&batch("a", vec![put(1, "one"), put(2, "two")]))
        .expect("a");
    r.apply_batch(&batch("b", vec![put(2, "two")])).expect("b");
    applied(
        r.apply_checkpoint(&checkpoint(
            1,
            vec![
                expected("a", &[(1, "one"), (2, "two")]),
                expected("b", &[(2, "two")]),
            ],
        ))
        .expect("checkpoint"),
    );
    // Rewrite the file the way it used to be: one text-keyed table.
    let held: Vec<(String, String, Vec<u8>, i64)> = {
        let mut stmt = r
            .connection()
            .prepare("SELECT bucket, tbl, key, hash FROM _outpost_rows")
            .expect("prepare");
        stmt.query_map([], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
    };
    assert_eq!(held.len(), 3);
    r.connection()
        .execute_batch(
            "DROP VIEW _outpost_rows; DROP TABLE _outpost_row_refs;
             DROP TABLE _outpost_bucket_ids; DROP TABLE _outpost_table_ids;
             CREATE TABLE _outpost_rows (bucket TEXT NOT NULL, tbl TEXT NOT NULL, key TEXT NOT NULL,
                 hash INTEGER NOT NULL, PRIMARY KEY (bucket, tbl, key)) WITHOUT ROWID;
             CREATE INDEX _outpost_rows_by_row ON _outpost_rows (tbl, key);",
        )
        .expect("old layout");
    for (bucket, tbl, key, hash) in &held {
        let key = key_string(&decode_key(key).expect("key"));
        r.connection()
            .execute(
                "INSERT INTO _outpost_rows VALUES (?1, ?2, ?3, ?4)",
                (bucket, tbl, &key, hash),
            )
            .expect("old row");
    }
    drop(r);

    let mut r = Replica::open(&dir.path().join("replica.db")).expect("reopen");
    let kind: String = r
        .connection()
        .query_row(
            "SELECT type FROM sqlite_master WHERE name = '_outpost_rows'",
            [],
            |row| row.get(0),
        )
        .expect("kind");
    assert_eq!(kind, "view");
    // Row 2 leaves a, stays for b; row 1 leaves with a; checksums still add up.
    r.apply_batch(&batch("a", vec![remove(2), remove(1)]))
        .expect("remove");
    applied(
        r.apply_checkpoint(&checkpoint(
            2,
            vec![expected("a", &[]), expected("b", &[(2, "two")])],
        ))
        .expect("checkpoint"),
    );
    assert_eq!(titles(&r), vec![(2, "two".into())]);
}

#[test]
fn triggers_of_the_app_fire_for_synced_rows() {
    let (dir, mut r) = open();
    r.apply_schema(&schema("v1", false)).expect("schema");
    r.apply_batch(&batch("a", vec![put(1, "one")])).expect("a");
    applied(
        r.apply_checkpoint(&checkpoint(1, vec![expected("a", &[(1, "one")])]))
            .expect("checkpoint"),
    );
    let app = rusqlite::Connection::open(dir.path().join("replica.db")).expect("app");
    app.execute_batch(
        "CREATE TABLE seen (id INTEGER, title TEXT);
         CREATE TRIGGER seen_todos AFTER INSERT ON todos BEGIN
             INSERT INTO seen VALUES (NEW.id, NEW.title);
         END;",
    )
    .expect("app trigger");
    let all = rows(2..=80, "t");
    r.apply_batch(&batch("a", puts(&all))).expect("data");
    let mut held = vec![(1, "one".to_string())];
    held.extend(all.iter().cloned());
    applied(
        r.apply_checkpoint(&checkpoint(2, vec![checksum_of("a", &held)]))
            .expect("checkpoint"),
    );
    let seen: i64 = app
        .query_row("SELECT count(*) FROM seen", [], |row| row.get(0))
        .expect("seen");
    assert_eq!(seen, 79);
    // The capture triggers still record nothing the replica writes.
    let outbox: i64 = app
        .query_row("SELECT count(*) FROM _outpost_outbox", [], |row| row.get(0))
        .expect("outbox");
    assert_eq!(outbox, 0);
}
