//! Commutative merge kinds: counter, max, min and set_union give the same
//! state whatever the order and duplication of delivery.

use std::collections::{BTreeMap, BTreeSet};

use outpost_proto::v1::group_result::Status;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rand::SeedableRng;
use rand::seq::SliceRandom;

use super::*;

const SQL: &str = "
CREATE TABLE stats (
    id int PRIMARY KEY,
    n int NOT NULL DEFAULT 0,
    hi int,
    lo int,
    tags text[] NOT NULL DEFAULT '{}'
);
";

const RULES: &str = r#"
[shapes.stats]
table = "stats"

[tables.stats]
insert = "true"
update = "true"

[tables.stats.merge]
n = "counter"
hi = "max"
lo = "min"
tags = "set_union"
"#;

const TAGS: [&str; 4] = ["a", "b", "c", "d"];

#[test]
fn counters_add_up_across_clients_in_any_order() {
    let pg = cluster(SQL, false);
    let rt = runtime();
    rt.block_on(async {
        let applier = std::sync::Arc::new(applier(&pg, RULES).await);
        let setup = applier
            .apply(
                "setup",
                &claims("x"),
                &[group(1, vec![insert("stats", 1, vec![], hlc(1))])],
            )
            .await
            .expect("apply");
        assert_eq!(outcomes(&setup), [applied()]);
        let mut tasks = Vec::new();
        for (c, client) in ["c1", "c2", "c3"].into_iter().enumerate() {
            let applier = applier.clone();
            tasks.push(tokio::spawn(async move {
                let mut seqs: Vec<u64> = (1..=10).collect();
                let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64);
                seqs.shuffle(&mut rng);
                // Every group is sent twice, the second time in a batch.
                for &seq in &seqs {
                    let g = group(
                        seq,
                        vec![update("stats", 1, vec![col("n", int(1))], hlc(seq))],
                    );
                    let r = applier
                        .apply(client, &claims(client), &[g])
                        .await
                        .expect("apply");
                    assert_eq!(outcomes(&r), [applied()]);
                }
                let again: Vec<OpGroup> = seqs
                    .iter()
                    .map(|&seq| {
                        group(
                            seq,
                            vec![update("stats", 1, vec![col("n", int(1))], hlc(seq))],
                        )
                    })
                    .collect();
                let r = applier
                    .apply(client, &claims(client), &again)
                    .await
                    .expect("apply");
                assert!(r.iter().all(|r| r.status == Status::Duplicate as i32));
            }));
        }
        for t in tasks {
            t.await.expect("client task");
        }
    });
    assert_eq!(query(&pg, "SELECT n FROM stats WHERE id = 1"), "30");
}

/// One generated op: client, row, counter delta, max, min, tag indexes.
type GenOp = (
    usize,
    i32,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Vec<usize>,
);

/// The state the ops must produce, in the form of [`STATE_SQL`].
fn model(ops: &[GenOp]) -> String {
    #[derive(Default)]
    struct Row {
        n: i64,
        hi: Option<i64>,
        lo: Option<i64>,
        tags: BTreeSet<&'static str>,
    }
    let mut rows: BTreeMap<i32, Row> = BTreeMap::new();
    for (_, id, delta, hi, lo, tags) in ops {
        let row = rows.entry(*id).or_default();
        row.n += delta.unwrap_or(0);
        row.hi = match (row.hi, hi) {
            (Some(a), Some(b)) => Some(a.max(*b)),
            (a, b) => a.or(*b),
        };
        row.lo = match (row.lo, lo) {
            (Some(a), Some(b)) => Some(a.min(*b)),
            (a, b) => a.or(*b),
        };
        row.tags.extend(tags.iter().map(|&t| TAGS[t]));
    }
    let opt = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
    rows.iter()
        .map(|(id, r)| {
            let tags: Vec<&str> = r.tags.iter().copied().collect();
            format!(
                "{id}|{}|{}|{}|{{{}}}",
                r.n,
                opt(r.hi),
                opt(r.lo),
                tags.join(",")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

const STATE_SQL: &str = "SELECT id, n, coalesce(hi::text, '-'), coalesce(lo::text, '-'), \
     ARRAY(SELECT t FROM unnest(tags) AS t ORDER BY t) FROM stats ORDER BY id";

fn write_op(op: &GenOp) -> WriteOp {
    let (_, id, delta, hi, lo, tags) = op;
    let mut columns = Vec::new();
    if let Some(d) = delta {
        columns.push(col("n", int(*d)));
    }
    if let Some(v) = hi {
        columns.push(col("hi", int(*v)));
    }
    if let Some(v) = lo {
        columns.push(col("lo", int(*v)));
    }
    if !tags.is_empty() {
        let json: Vec<&str> = tags.iter().map(|&t| TAGS[t]).collect();
        columns.push(col(
            "tags",
            text(&serde_json::to_string(&json).expect("json")),
        ));
    }
    // Inserts only: an insert of an existing key merges, so every order works.
    insert("stats", i64::from(*id), columns, hlc(1))
}

#[test]
fn commutative_merges_converge_in_any_order() {
    let pg = cluster(SQL, false);
    let rt = runtime();
    let applier = rt.block_on(applier(&pg, RULES));
    let op = (
        0..3usize,
        1..4i32,
        proptest::option::of(-5..6i64),
        proptest::option::of(-50..50i64),
        proptest::option::of(-50..50i64),
        proptest::collection::vec(0..TAGS.len(), 0..3),
    );
    let case = (
        proptest::collection::vec(op, 1..20),
        any::<u64>(),
        proptest::collection::vec(any::<bool>(), 0..10),
    );
    let mut runner = TestRunner::new(Config {
        cases: 32,
        ..Config::default()
    });
    let result = runner.run(&case, |(ops, seed, duplicate)| {
        pg.psql(
            DB,
            "TRUNCATE stats, outpost.applied_groups, outpost.row_versions",
        )
        .expect("truncate");
        // Each client's ops, two per group, numbered in order.
        let mut groups: Vec<(String, OpGroup)> = Vec::new();
        for client in 0..3 {
            let mine: Vec<&GenOp> = ops.iter().filter(|o| o.0 == client).collect();
            for (seq, chunk) in mine.chunks(2).enumerate() {
                let g = group(seq as u64 + 1, chunk.iter().map(|o| write_op(o)).collect());
                groups.push((format!("client-{client}"), g));
            }
        }
        let mut delivery = groups.clone();
        for (i, again) in duplicate.iter().enumerate() {
            if *again && let Some(g) = groups.get(i) {
                delivery.push(g.clone());
            }
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        delivery.shuffle(&mut rng);
        rt.block_on(async {
            // Consecutive groups of one client travel in one request.
            let mut i = 0;
            while i < delivery.len() {
                let client = delivery[i].0.clone();
                let mut batch = Vec::new();
                while i < delivery.len() && delivery[i].0 == client {
                    batch.push(delivery[i].1.clone());
                    i += 1;
                }
                let results = applier
                    .apply(&client, &claims(&client), &batch)
                    .await
                    .expect("apply");
                for r in &results {
                    prop_assert!(
                        r.status == Status::Applied as i32 || r.status == Status::Duplicate as i32,
                        "{r:?}"
                    );
                }
            }
            Ok(())
        })?;
        prop_assert_eq!(query(&pg, STATE_SQL), model(&ops));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
