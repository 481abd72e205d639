//! Groups applied in batches: the groups of a request, and of requests
//! waiting together, share a transaction and end as they would one at a
//! time — rejections, duplicates and the order of writes to one row
//! included.

use std::collections::BTreeSet;
use std::sync::Arc;

use outpost_proto::v1::group_result::Status;
use outpost_proto::v1::value::Kind;
use outpost_proto::v1::write_op;

use super::*;
use crate::writes::reason;

/// Two identical tables: one written through batches, one group per
/// request.
const SQL: &str = "
CREATE TABLE notes_a (
    id int PRIMARY KEY,
    owner text NOT NULL,
    title text,
    n int NOT NULL DEFAULT 0,
    tags text[] NOT NULL DEFAULT '{}'
);
CREATE TABLE notes_b (LIKE notes_a INCLUDING ALL);
CREATE TABLE audited (id int PRIMARY KEY, owner text NOT NULL, title text);
CREATE TABLE audit_log (id int, title text);
CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN INSERT INTO audit_log VALUES (NEW.id, NEW.title); RETURN NEW; END $$;
CREATE TRIGGER audited AFTER INSERT OR UPDATE ON audited FOR EACH ROW EXECUTE FUNCTION audit();
CREATE TABLE cells (
    sheet uuid NOT NULL,
    pos int NOT NULL,
    owner text NOT NULL,
    value text,
    PRIMARY KEY (sheet, pos)
);
CREATE TABLE lists (id int PRIMARY KEY, owner text NOT NULL, name text);
CREATE TABLE items (id int PRIMARY KEY, list_id int NOT NULL REFERENCES lists (id), owner text NOT NULL);
CREATE TABLE prices (id numeric(10,2) PRIMARY KEY, owner text NOT NULL);
CREATE PUBLICATION outpost FOR TABLE notes_a, notes_b, audited, cells, lists, items, prices;
";

const RULES: &str = r#"
[shapes.notes_a]
table = "notes_a"
where = "owner = auth.sub"

[shapes.notes_b]
table = "notes_b"
where = "owner = auth.sub"

[shapes.audited]
table = "audited"
where = "owner = auth.sub"

[tables.notes_a]
insert = "new.owner = auth.sub"
update = "old.owner = auth.sub AND new.owner = auth.sub"
delete = "old.owner = auth.sub"

[tables.notes_a.merge]
n = "counter"
tags = "set_union"

[tables.notes_b]
insert = "new.owner = auth.sub"
update = "old.owner = auth.sub AND new.owner = auth.sub"
delete = "old.owner = auth.sub"

[tables.notes_b.merge]
n = "counter"
tags = "set_union"

[shapes.cells]
table = "cells"
where = "owner = auth.sub"

[tables.cells]
insert = "new.owner = auth.sub"
update = "old.owner = auth.sub"
delete = "old.owner = auth.sub"

[shapes.lists]
table = "lists"
where = "owner = auth.sub"

[shapes.items]
table = "items"
where = "owner = auth.sub"

[shapes.prices]
table = "prices"
where = "owner = auth.sub"

[tables.lists]
insert = "new.owner = auth.sub"
update = "old.owner = auth.sub"

[tables.items]
insert = "new.owner = auth.sub"

[tables.prices]
insert = "new.owner = auth.sub"
delete = "old.owner = auth.sub"

[tables.audited]
insert = "new.owner = auth.sub"
update = "old.owner = auth.sub"
"#;

fn tags(t: &str) -> Value {
    text(&format!("[\"{t}\"]"))
}

/// A mix of groups on `table`: inserts, last-writer-wins and counter
/// updates, set unions, deletes, several groups on one row, and groups
/// the rules or the data refuse.
fn mix(table: &str) -> Vec<OpGroup> {
    let mut groups = Vec::new();
    let mut seq = 0;
    let mut next = |ops: Vec<WriteOp>| {
        seq += 1;
        groups.push(group(seq, ops));
    };
    for id in 1..=12 {
        next(vec![insert(
            table,
            id,
            vec![col("owner", text("alice")), col("title", text("first"))],
            hlc(100 + id as u64),
        )]);
    }
    for round in 0..3u64 {
        for id in 1..=12i64 {
            let at = hlc(200 + round * 20 + id as u64);
            let op = match (id + round as i64) % 4 {
                0 => update(table, id, vec![col("n", int(id))], at),
                1 => update(table, id, vec![col("tags", tags(&format!("r{round}")))], at),
                // An older clock than the insert's for some: that title loses.
                2 => update(
                    table,
                    id,
                    vec![col("title", text(&format!("t{round}")))],
                    if id % 3 == 0 { hlc(50) } else { at },
                ),
                _ => update(
                    table,
                    id,
                    vec![col("n", int(1)), col("title", text("x"))],
                    at,
                ),
            };
            next(vec![op]);
        }
        // Several ops in one group, on rows of the rounds' groups too.
        next(vec![
            update(table, 1, vec![col("n", int(10))], hlc(300 + round)),
            update(
                table,
                2,
                vec![col("tags", tags(&format!("g{round}")))],
                hlc(300 + round),
            ),
        ]);
    }
    // Refused by the rules (the new row is not alice's), by the data (an
    // update of a row that never was), and a row that goes and comes back.
    next(vec![update(
        table,
        3,
        vec![col("owner", text("bob"))],
        hlc(400),
    )]);
    next(vec![update(
        table,
        99,
        vec![col("title", text("no"))],
        hlc(401),
    )]);
    next(vec![delete(table, 4, hlc(402))]);
    next(vec![delete(table, 5, hlc(403))]);
    next(vec![insert(
        table,
        4,
        vec![col("owner", text("alice")), col("title", text("again"))],
        hlc(404),
    )]);
    next(vec![delete(table, 99, hlc(405))]);
    groups
}

fn rows(pg: &PgCluster, table: &str) -> String {
    query(
        pg,
        &format!("SELECT id, owner, title, n, tags FROM {table} ORDER BY id"),
    )
}

fn versions(pg: &PgCluster, table: &str) -> String {
    query(
        pg,
        &format!(
            "SELECT key, col, hlc, value_hash FROM {COLUMN_VERSIONS} \
             WHERE tbl = 'public.{table}' ORDER BY key, col"
        ),
    )
}

fn statuses(results: &[GroupResult]) -> Vec<(Status, String, u32)> {
    results
        .iter()
        .map(|r| {
            (
                Status::try_from(r.status).unwrap_or(Status::Unspecified),
                r.reason_code.clone(),
                r.op_index,
            )
        })
        .collect()
}

#[test]
fn a_request_s_groups_share_transactions_and_end_as_one_at_a_time() {
    let pg = cluster(SQL, true);
    let rt = runtime();
    rt.block_on(async {
        let applier = applier(&pg, RULES).await;
        let alice = claims("alice");
        let batched = applier
            .apply("client-a", &alice, &mix("notes_a"))
            .await
            .expect("apply");
        let mut alone = Vec::new();
        for g in mix("notes_b") {
            let r = applier
                .apply("client-b", &alice, std::slice::from_ref(&g))
                .await
                .expect("apply");
            alone.extend(r);
        }
        assert_eq!(statuses(&batched), statuses(&alone));
        let refused: Vec<_> = statuses(&batched)
            .into_iter()
            .filter(|(s, _, _)| *s != Status::Applied)
            .collect();
        assert_eq!(
            refused,
            [
                (Status::Rejected, reason::PERMISSION_DENIED.to_string(), 0),
                (Status::Rejected, reason::NOT_FOUND.to_string(), 0),
            ]
        );
        // The first twelve groups (different rows) committed together;
        // groups one at a time commit each on its own.
        let lsns = |r: &[GroupResult]| r.iter().map(|r| r.commit_lsn).collect::<BTreeSet<_>>();
        assert_eq!(lsns(&batched[..12]).len(), 1, "{batched:?}");
        assert_eq!(lsns(&alone[..12]).len(), 12);
        assert!(lsns(&batched).len() < batched.len() / 2);
        assert_eq!(rows(&pg, "notes_a"), rows(&pg, "notes_b"));
        assert_eq!(versions(&pg, "notes_a"), versions(&pg, "notes_b"));
        // What the mix does, checked outright on a few rows.
        let a = rows(&pg, "notes_a");
        assert!(a.contains("1|alice|"), "{a}");
        assert!(a.contains("4|alice|again|0|{}"), "{a}");
        assert!(!a.lines().any(|l| l.starts_with("5|")), "{a}");
        let tags2 = query(&pg, "SELECT tags FROM notes_a WHERE id = 2");
        assert_eq!(tags2, "{g0,g1,g2}", "set union in arrival order");

        // Sent again, with more: what was recorded is a duplicate, in
        // order with what is new.
        let mut again = mix("notes_a");
        again.push(group(
            again.len() as u64 + 1,
            vec![update("notes_a", 6, vec![col("n", int(5))], hlc(500))],
        ));
        let r = applier
            .apply("client-a", &alice, &again[30..])
            .await
            .expect("apply");
        let expected: Vec<_> = (30..again.len())
            .map(|i| {
                if i + 1 == again.len() {
                    Status::Applied
                } else {
                    Status::Duplicate
                }
            })
            .collect();
        let got: Vec<_> = statuses(&r).into_iter().map(|(s, _, _)| s).collect();
        assert_eq!(got, expected);
        assert_eq!(
            r[..r.len() - 1]
                .iter()
                .map(|r| r.reason_code.as_str())
                .collect::<Vec<_>>(),
            batched[30..]
                .iter()
                .map(|r| r.reason_code.as_str())
                .collect::<Vec<_>>()
        );
    });
}

#[test]
fn concurrent_requests_share_transactions_and_lose_nothing() {
    let pg = cluster(SQL, false);
    let rt = runtime();
    rt.block_on(async {
        let applier = Arc::new(applier(&pg, RULES).await);
        let alice = claims("alice");
        let seed: Vec<OpGroup> = (1..=5)
            .map(|id| {
                group(
                    id as u64,
                    vec![insert(
                        "notes_a",
                        id,
                        vec![col("owner", text("alice"))],
                        hlc(1),
                    )],
                )
            })
            .collect();
        applier.apply("seed", &alice, &seed).await.expect("seed");
        let mut tasks = Vec::new();
        for c in 0..8u64 {
            let applier = applier.clone();
            let alice = alice.clone();
            tasks.push(tokio::spawn(async move {
                let client = format!("c{c}");
                let mut lsns = Vec::new();
                for i in 0..25u64 {
                    // A new row of its own and a counter every client adds to.
                    let id = 100 + (c * 25 + i) as i64;
                    let g = group(
                        i + 1,
                        vec![
                            insert(
                                "notes_a",
                                id,
                                vec![col("owner", text("alice")), col("title", text(&client))],
                                hlc(10 + i),
                            ),
                            update("notes_a", 1 + (i % 5) as i64, vec![col("n", int(1))], hlc(10 + i)),
                        ],
                    );
                    let r = applier
                        .apply(&client, &alice, &[g])
                        .await
                        .expect("apply");
                    assert_eq!(outcomes(&r), [applied()]);
                    lsns.push(r[0].commit_lsn);
                }
                lsns
            }));
        }
        let mut lsns = Vec::new();
        for t in tasks {
            lsns.extend(t.await.expect("task"));
        }
        let distinct: BTreeSet<_> = lsns.iter().collect();
        assert!(
            distinct.len() < lsns.len(),
            "no two of {} requests shared a transaction",
            lsns.len()
        );
        assert_eq!(
            query(&pg, "SELECT count(*), sum(n) FILTER (WHERE id <= 5) FROM notes_a WHERE id <= 5 OR id >= 100"),
            "205|200"
        );
        assert_eq!(
            query(&pg, "SELECT string_agg(n::text, ',' ORDER BY id) FROM notes_a WHERE id <= 5"),
            "40,40,40,40,40"
        );
    });
}

#[test]
fn tables_with_side_effects_are_applied_one_group_at_a_time() {
    let pg = cluster(SQL, false);
    let rt = runtime();
    rt.block_on(async {
        let applier = applier(&pg, RULES).await;
        let groups: Vec<OpGroup> = (1..=4)
            .map(|id| {
                group(
                    id as u64,
                    vec![insert(
                        "audited",
                        id,
                        vec![col("owner", text("alice")), col("title", text("t"))],
                        hlc(1),
                    )],
                )
            })
            .collect();
        let r = applier
            .apply("client", &claims("alice"), &groups)
            .await
            .expect("apply");
        assert_eq!(outcomes(&r), vec![applied(); 4]);
        let lsns: BTreeSet<_> = r.iter().map(|r| r.commit_lsn).collect();
        assert_eq!(lsns.len(), 4, "each group in its own transaction: {r:?}");
        assert_eq!(query(&pg, "SELECT count(*) FROM audit_log"), "4");
    });
}

const SHEET: &str = "0b9a3c1e-5d7f-4e21-9a8b-1c2d3e4f5a6b";

fn cell(kind: write_op::Kind, sheet: &str, pos: i64, value: Option<&str>, at: u64) -> WriteOp {
    let mut columns = vec![col("owner", text("alice"))];
    if let Some(v) = value {
        columns.push(col("value", text(v)));
    }
    WriteOp {
        kind: kind as i32,
        table: "cells".into(),
        key: vec![text(sheet), int(pos)],
        columns,
        hlc: hlc(at),
        before: Vec::new(),
    }
}

#[test]
fn rows_with_keys_of_several_columns_and_keys_postgres_prints_otherwise() {
    let pg = cluster(SQL, false);
    let rt = runtime();
    rt.block_on(async {
        let applier = applier(&pg, RULES).await;
        let alice = claims("alice");
        let seed: Vec<OpGroup> = (1..=6)
            .map(|pos| {
                group(
                    pos as u64,
                    vec![cell(write_op::Kind::Insert, SHEET, pos, Some("v1"), 10)],
                )
            })
            .collect();
        let r = applier.apply("c", &alice, &seed).await.expect("apply");
        assert_eq!(outcomes(&r), vec![applied(); 6]);
        let lsns: BTreeSet<_> = r.iter().map(|r| r.commit_lsn).collect();
        assert_eq!(lsns.len(), 1, "one transaction: {r:?}");
        let next: Vec<OpGroup> = vec![
            group(
                7,
                vec![cell(write_op::Kind::Update, SHEET, 1, Some("v2"), 20)],
            ),
            group(8, vec![cell(write_op::Kind::Delete, SHEET, 2, None, 20)]),
            // An older clock: the value stays.
            group(
                9,
                vec![cell(write_op::Kind::Update, SHEET, 3, Some("old"), 5)],
            ),
            group(
                10,
                vec![cell(write_op::Kind::Insert, SHEET, 7, Some("new"), 20)],
            ),
        ];
        let r = applier.apply("c", &alice, &next).await.expect("apply");
        assert_eq!(outcomes(&r), vec![applied(); 4]);
        assert_eq!(
            r.iter()
                .map(|r| r.commit_lsn)
                .collect::<BTreeSet<_>>()
                .len(),
            1
        );
        // The same sheet in capitals: Postgres prints it in lower case, so
        // these rows are the ones above (and the batch falls back to one
        // group at a time, with the same outcome).
        let upper = SHEET.to_uppercase();
        let shouted: Vec<OpGroup> = vec![
            group(
                11,
                vec![cell(write_op::Kind::Update, &upper, 4, Some("v3"), 30)],
            ),
            group(
                12,
                vec![cell(write_op::Kind::Update, &upper, 5, Some("v3"), 30)],
            ),
        ];
        let r = applier.apply("c", &alice, &shouted).await.expect("apply");
        assert_eq!(outcomes(&r), vec![applied(); 2]);
        assert_eq!(
            query(&pg, "SELECT pos, value FROM cells ORDER BY pos"),
            "1|v2\n3|v1\n4|v3\n5|v3\n6|v1\n7|new"
        );
        assert_eq!(
            query(
                &pg,
                &format!(
                    "SELECT key, hlc >> 16 FROM {COLUMN_VERSIONS} WHERE tbl = 'public.cells' \
                     AND col = 'value' ORDER BY key"
                )
            ),
            format!(
                "[\"{SHEET}\",\"1\"]|20\n[\"{SHEET}\",\"3\"]|10\n[\"{SHEET}\",\"4\"]|30\n\
                 [\"{SHEET}\",\"5\"]|30\n[\"{SHEET}\",\"6\"]|10\n[\"{SHEET}\",\"7\"]|20"
            )
        );
    });
}

fn owned(table: &str, id: i64, extra: Vec<ColumnValue>, at: u64) -> WriteOp {
    let mut columns = vec![col("owner", text("alice"))];
    columns.extend(extra);
    insert(table, id, columns, hlc(at))
}

#[test]
fn foreign_keys_are_checked_in_the_order_of_the_groups() {
    let pg = cluster(SQL, false);
    let rt = runtime();
    rt.block_on(async {
        let applier = applier(&pg, RULES).await;
        let alice = claims("alice");
        let groups = vec![
            group(1, vec![owned("lists", 1, vec![], 1)]),
            // List 9 comes only in the next group: refused, as it would be
            // alone, although a batch writes the lists first.
            group(2, vec![owned("items", 1, vec![col("list_id", int(9))], 1)]),
            group(3, vec![owned("lists", 9, vec![], 1)]),
            group(4, vec![owned("items", 2, vec![col("list_id", int(9))], 1)]),
            group(5, vec![owned("items", 3, vec![col("list_id", int(1))], 1)]),
        ];
        let r = applier.apply("c", &alice, &groups).await.expect("apply");
        assert_eq!(
            outcomes(&r),
            [
                applied(),
                rejected(reason::FOREIGN_KEY_VIOLATION),
                applied(),
                applied(),
                applied()
            ]
        );
        assert_eq!(
            query(&pg, "SELECT id, list_id FROM items ORDER BY id"),
            "2|9\n3|1"
        );
    });
}

#[test]
fn a_refused_group_leaves_the_others_batched_and_equal_keys_printed_otherwise_are_one_row() {
    let pg = cluster(SQL, false);
    let rt = runtime();
    rt.block_on(async {
        let applier = applier(&pg, RULES).await;
        let alice = claims("alice");
        let price = |id: f64, owner: &str| WriteOp {
            kind: write_op::Kind::Insert as i32,
            table: "prices".into(),
            key: vec![Value {
                kind: Some(Kind::Real(id)),
            }],
            columns: vec![col("owner", text(owner))],
            hlc: hlc(1),
            before: Vec::new(),
        };
        let list =
            |id: i64, owner: &str| insert("lists", id, vec![col("owner", text(owner))], hlc(1));
        let groups: Vec<OpGroup> = (1..=7)
            .map(|i| {
                group(
                    i as u64,
                    vec![list(i, if i == 4 { "bob" } else { "alice" })],
                )
            })
            .collect();
        let r = applier.apply("c", &alice, &groups).await.expect("apply");
        let mut expected = vec![applied(); 7];
        expected[3] = rejected(reason::PERMISSION_DENIED);
        assert_eq!(outcomes(&r), expected);
        let lsns = |r: &[GroupResult]| r.iter().map(|r| r.commit_lsn).collect::<BTreeSet<_>>();
        assert_eq!(lsns(&r[..3]).len(), 1, "{r:?}");
        assert_eq!(lsns(&r[4..]).len(), 1, "{r:?}");
        assert_ne!(r[0].commit_lsn, r[4].commit_lsn);
        assert_eq!(query(&pg, "SELECT count(*) FROM lists"), "6");
        // Keys Postgres prints otherwise: the batch falls back, same outcome.
        let groups: Vec<OpGroup> = [1.5, 2.5, 3.5]
            .into_iter()
            .enumerate()
            .map(|(i, id)| group(i as u64 + 10, vec![price(id, "alice")]))
            .collect();
        let r = applier.apply("c", &alice, &groups).await.expect("apply");
        assert_eq!(outcomes(&r), vec![applied(); 3]);
        // 1.5 names the row stored as 1.50: deleted, with another group.
        let mut delete = price(1.5, "alice");
        delete.kind = write_op::Kind::Delete as i32;
        delete.columns.clear();
        let mut other = price(8.5, "alice");
        other.hlc = hlc(2);
        let r = applier
            .apply(
                "c",
                &alice,
                &[group(20, vec![delete]), group(21, vec![other])],
            )
            .await
            .expect("apply");
        assert_eq!(outcomes(&r), [applied(), applied()]);
        assert_eq!(
            query(
                &pg,
                "SELECT string_agg(id::text, ',' ORDER BY id) FROM prices"
            ),
            "2.50,3.50,8.50"
        );
    });
}
