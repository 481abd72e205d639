//! How fast a fresh replica takes a large bucket (run with `--ignored`).

use super::*;
use outpost_proto::v1::{
    BucketChecksum, Checkpoint, ColumnSchema, DataBatch, RowOp, Schema, TableSchema, Value, row_op,
    value::Kind,
};
use outpost_proto::{bucket_checksum_add, row_hash};
use std::time::Instant;

/// CPU time of the calling thread, in seconds.
fn thread_cpu() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 * 1e-9)
}

#[test]
#[ignore]
fn initial_load_throughput() {
    let rows: i64 = std::env::var("ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let col = |name: &str, ty: &str| ColumnSchema {
        name: name.into(),
        pg_type: String::new(),
        sqlite_type: ty.into(),
        nullable: false,
        merge: "lww".into(),
    };
    let schema = Schema {
        version: "v".into(),
        tables: vec![TableSchema {
            name: "items".into(),
            columns: vec![
                col("id", "INTEGER"),
                col("owner", "TEXT"),
                col("title", "TEXT"),
                col("n", "INTEGER"),
                col("created_at", "TEXT"),
            ],
            primary_key: vec![0],
        }],
    };
    let v = |k: Kind| Value { kind: Some(k) };
    let bucket = "my_items[\"alice\"]";
    let mut batches = Vec::new();
    let mut checksum = 0u64;
    let mut ops = Vec::new();
    for id in 1..=rows {
        let values = vec![
            v(Kind::Integer(id)),
            v(Kind::Text("alice".into())),
            v(Kind::Text(format!("item {id}"))),
            v(Kind::Integer(id % 1000)),
            v(Kind::Text("2026-01-01T00:00:00.123456Z".into())),
        ];
        let key = vec![v(Kind::Integer(id))];
        checksum = bucket_checksum_add(checksum, row_hash("items", &key, &values));
        ops.push(RowOp {
            op_id: id as u64,
            kind: row_op::Kind::Put as i32,
            table: "items".into(),
            key,
            values,
        });
        if ops.len() == 1000 {
            batches.push(DataBatch {
                bucket: bucket.into(),
                ops: std::mem::take(&mut ops),
            });
        }
    }
    if !ops.is_empty() {
        batches.push(DataBatch {
            bucket: bucket.into(),
            ops,
        });
    }
    let batches: Vec<PreparedBatch> = batches.into_iter().map(PreparedBatch::new).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut replica = Replica::open(&dir.path().join("replica.db")).expect("open");
    replica.apply_schema(&schema).expect("schema");
    let (wall, cpu) = (Instant::now(), thread_cpu());
    for b in &batches {
        replica.apply_data(b).expect("data");
    }
    let outcome = replica
        .apply_checkpoint(&Checkpoint {
            op_id: rows as u64,
            lsn: 1,
            epoch: "e".into(),
            buckets: vec![BucketChecksum {
                bucket: bucket.into(),
                checksum,
                count: rows as u64,
            }],
        })
        .expect("checkpoint");
    let (wall, cpu) = (wall.elapsed().as_secs_f64(), thread_cpu() - cpu);
    assert!(
        matches!(outcome, CheckpointOutcome::Applied { .. }),
        "{outcome:?}"
    );
    eprintln!(
        "{rows} rows: wall {wall:.3} s, cpu {cpu:.3} s ({:.2} µs/row cpu, {:.0} rows/s wall)",
        cpu * 1e6 / rows as f64,
        rows as f64 / wall
    );
}
