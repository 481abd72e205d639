//! The predicate oracle: random rows and random predicates, evaluated by
//! the compiled shape and by Postgres itself (`SELECT id FROM t WHERE …`).
//! They must agree on which rows make the predicate TRUE.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::path::PathBuf;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::catalog_pg::{connect, runtime};
use crate::pgcluster::PgCluster;
use crate::schema::{Catalog, SchemaSource, compile};

const SETUP: &str = "
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE t (
    id int PRIMARY KEY, i int4, b int8, f float8, r real, n numeric, s text,
    ok bool, ts timestamptz, d date, u uuid, m mood, c char(3)
);";

/// One of the `|`-separated alternatives.
fn pick(alternatives: &'static str) -> BoxedStrategy<String> {
    let items: Vec<String> = alternatives.split('|').map(str::to_string).collect();
    proptest::sample::select(items).boxed()
}

/// A column value as an SQL literal: NULL one time in five.
fn literal(values: BoxedStrategy<String>) -> BoxedStrategy<String> {
    prop_oneof![1 => Just("NULL".to_string()), 4 => values].boxed()
}

fn quoted(values: &'static str) -> BoxedStrategy<String> {
    pick(values)
        .prop_map(|s| format!("'{}'", s.replace('\'', "''")))
        .boxed()
}

/// One row as SQL literals, without its id, in column order.
fn row() -> impl Strategy<Value = Vec<String>> {
    let int4 = prop_oneof![Just(i32::MIN), Just(i32::MAX), -5i32..5, any::<i32>()];
    let int8 = prop_oneof![Just(i64::MIN), Just(i64::MAX), -5i64..5, any::<i64>()];
    let uuid = prop_oneof![
        quoted(
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11|00000000-0000-0000-0000-000000000000|ffffffff-ffff-ffff-ffff-ffffffffffff"
        ),
        any::<u128>().prop_map(|u| format!("'{u:032x}'")),
    ];
    (
        literal(int4.prop_map(|v| v.to_string()).boxed()),
        literal(int8.prop_map(|v| v.to_string()).boxed()),
        literal(quoted("NaN|Infinity|-Infinity|-0|0|1.5|-2.25|0.1|1e300|5e-324|42|-7|2147483647")),
        literal(quoted("0.1|NaN|-0|1.5|3.4e38|Infinity|42")),
        literal(quoted("0|1.50|-3.25|42|123456789012345678901234567890.123|NaN|Infinity|-Infinity|1e-5|-7|0.1")),
        literal(quoted("|a|A|abc|ab%|a_c|é|École|z|\\|a b|日本|ab|B")),
        literal(pick("true|false")),
        literal(quoted("2024-01-01 00:00:00+00|2024-01-01 10:00+02|1999-12-31 23:59:59.999999+00|infinity|-infinity|0044-03-15 12:00:00+00 BC|2024-02-29 12:00+00|2024-01-01 08:00+00|1970-01-01 00:00+00")),
        literal(quoted("2024-01-01|2023-12-31|infinity|-infinity|0001-01-01 BC|2024-02-29|1970-01-01")),
        literal(uuid.boxed()),
        literal(quoted("sad|ok|happy")),
        literal(quoted("a|ab|abc|| a|b")),
    )
        .prop_map(|(i, b, f, r, n, s, ok, ts, d, u, m, c)| {
            vec![i, b, f, r, n, s, ok, ts, d, u, m, c]
        })
}

fn op() -> BoxedStrategy<String> {
    pick("=|<>|!=|<|<=|>|>=")
}

/// `{a} {op} {b}` and friends, from strategies for each part.
fn join<A, B, C>(a: A, b: B, c: C, f: fn(&str, &str, &str) -> String) -> BoxedStrategy<String>
where
    A: Strategy<Value = String> + 'static,
    B: Strategy<Value = String> + 'static,
    C: Strategy<Value = String> + 'static,
{
    (a, b, c).prop_map(move |(a, b, c)| f(&a, &b, &c)).boxed()
}

/// Leaf predicates over the table's columns.
fn leaf() -> BoxedStrategy<String> {
    let num_col = || {
        pick(
            "i|b|f|r|n|i::float8|f::numeric|n::float8|b::numeric|r::float8|i::numeric|i::int8|n::int8|f::int4",
        )
    };
    let num = || {
        pick(
            "0|1|-1|2147483647|-9223372036854775808|1.5|-0.5|1e3|'NaN'|'Infinity'|'-Infinity'|'-0'|'0.1'|0.1|'1e308'|1e38|'1.50'|'42'|NULL|CAST('7' AS int8)|0.1::real|'3.4e38'::real",
        )
    };
    let text = || pick("''|'a'|'A'|'abc'|'ab%'|'é'|'École'|'z'|'a b'|E'\\\\'|'日本'|NULL|'ab'");
    let text_col = pick("s|c|c::text|s::varchar|i::text|u::text|m::text|ok::text|n::text");
    let like_col = pick("s|c|s::text|u::text|m::text");
    let like = pick("LIKE|NOT LIKE|ILIKE|NOT ILIKE");
    let pattern = pick(
        "'a%'|'%'|'_'|'%b%'|'a\\%'|'%\\_%'|'_%_'|'é%'|'%c'|''|'a_c'|'A%'|'%#%%' ESCAPE '#'|'É%'|'%\\\\'|NULL",
    );
    let ts = || {
        pick(
            "'2024-01-01'|'2024-01-01 10:00'|'2024-01-01T10:00:00+02'|'2024-01-01 08:00:00Z'|'1999-12-31 23:59:59.999999'|'infinity'|'-infinity'|'0044-03-15 BC'|'epoch'|'2024-02-29 12:00:00.5-03:30'|DATE '2024-01-01'",
        )
    };
    let ts_col = pick("ts|d|d::timestamptz|ts::date|d::timestamp|ts::timestamp");
    let date =
        pick("'2024-01-01'|'infinity'|'-infinity'|'2024-01-01 10:00'|'0001-01-01 BC'|'2024-02-29'");
    let uuid = || {
        pick(
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'|'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'|'{00000000-0000-0000-0000-000000000000}'|'7f000000000000000000000000000001'|'80000000-0000-0000-0000-000000000000'",
        )
    };
    let column = || pick("i|b|f|r|n|s|ok|ts|d|u|m|c");
    let not = || pick("|NOT ");
    prop_oneof![
        join(num_col(), op(), num(), |a, o, b| format!("{a} {o} {b}")),
        join(num_col(), op(), num_col(), |a, o, b| format!("{a} {o} {b}")),
        join(num_col(), num(), num(), |c, a, b| format!("{c} BETWEEN {a} AND {b}")),
        join(num_col(), num(), num(), |c, a, b| format!("{c} NOT IN ({a}, {b}, i)")),
        join(num_col(), num(), num(), |c, a, b| format!("{c} IN ({a}, {b})")),
        join(text_col, op(), text(), |a, o, b| format!("{a} {o} {b}")),
        join(like_col, like, pattern, |a, o, b| format!("{a} {o} {b}")),
        join(text(), text(), not(), |a, b, n| format!("s {n}BETWEEN {a} AND {b}")),
        join(text(), text(), not(), |a, b, n| format!("s {n}IN ({a}, {b}, c)")),
        join(op(), pick("s|c"), Just(String::new()), |o, x, _| format!("s {o} {x}")),
        pick("ok|NOT ok|ok = true|ok <> false|ok IS TRUE|ok IS NOT FALSE|ok IS UNKNOWN|ok < true|ok = 't'|ok::text = 'true'|ok IS DISTINCT FROM NULL|ok IS NOT DISTINCT FROM (i > 0)|i::bool"),
        join(ts_col, op(), ts(), |a, o, b| format!("{a} {o} {b}")),
        join(op(), date, Just(String::new()), |o, l, _| format!("d {o} {l}")),
        join(op(), pick("ts|d"), Just(String::new()), |o, x, _| format!("d {o} {x}")),
        join(ts(), ts(), not(), |a, b, n| format!("ts {n}BETWEEN {a} AND {b}")),
        join(pick("u|u::text::uuid"), op(), uuid(), |a, o, b| format!("{a} {o} {b}")),
        join(uuid(), uuid(), not(), |a, b, n| format!("u {n}IN ({a}, {b})")),
        join(op(), pick("'sad'|'ok'|'happy'|NULL|'ok'::mood"), Just(String::new()), |o, l, _| format!("m {o} {l}")),
        pick("m IN ('sad', 'happy')|m NOT IN ('ok')|m::text < 'p'|'ok' = m|c = 'a  '|c = 'ab'|c LIKE 'a  '|c < 'b'|c::text = 'a'|s = c"),
        join(column(), not(), Just(String::new()), |c, n, _| format!("{c} IS {n}NULL")),
        join(column(), not(), Just(String::new()), |c, n, _| format!("{c} IS {n}DISTINCT FROM NULL")),
        pick("i IS DISTINCT FROM b|i IS NOT DISTINCT FROM b|i IN (b, 1, NULL)|n BETWEEN i AND b|i::text = s|s = u::text|TRUE|FALSE|NULL|NOT NULL|'t'|NULL::bool IS NULL|n::float8 = f|f = n|r = f|r < 0.1|r IN (0.1, 2)|f IN (0.1, 1)|i IN (1.5, 'NaN')|n IN (f, 0.1)"),
    ]
    .boxed()
}

/// Leaves combined with AND, OR, NOT, IS [NOT] TRUE/FALSE/UNKNOWN and comparisons.
fn predicate() -> impl Strategy<Value = String> {
    leaf().prop_recursive(3, 12, 2, |inner| {
        let tests = pick("IS TRUE|IS NOT TRUE|IS FALSE|IS NOT FALSE|IS UNKNOWN|IS NOT UNKNOWN");
        prop_oneof![
            join(
                inner.clone(),
                inner.clone(),
                Just(String::new()),
                |a, b, _| format!("({a}) AND ({b})")
            ),
            join(
                inner.clone(),
                inner.clone(),
                Just(String::new()),
                |a, b, _| format!("({a}) OR ({b})")
            ),
            inner.clone().prop_map(|a| format!("NOT ({a})")),
            join(
                inner.clone(),
                tests,
                Just(String::new()),
                |a, t, _| format!("({a}) {t}")
            ),
            join(inner.clone(), op(), inner, |a, o, b| format!(
                "({a}) {o} ({b})"
            )),
        ]
    })
}

/// An all-NULL row, rows of edge values, then random ones.
fn rows(runner: &mut TestRunner) -> Vec<Vec<String>> {
    let edges = [
        "NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL|NULL",
        "0|0|'-0'|'-0'|'0'|''|false|'infinity'|'infinity'|'00000000-0000-0000-0000-000000000000'|'sad'|''",
        "-1|-1|'NaN'|'NaN'|'NaN'|'%'|true|'-infinity'|'-infinity'|'ffffffff-ffff-ffff-ffff-ffffffffffff'|'happy'|' a'",
        "2147483647|9223372036854775807|'Infinity'|'Infinity'|'Infinity'|'_'|NULL|'2024-01-01 10:00+02'|'2024-01-01'|NULL|'ok'|'a'",
        "1|1|'1'|'1'|'1.0'|'a'|true|'2024-01-01 00:00+00'|'2024-01-01'|'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'|'ok'|'ab'",
    ];
    let mut rows: Vec<Vec<String>> = edges
        .iter()
        .map(|r| r.split('|').map(str::to_string).collect())
        .collect();
    let random = proptest::collection::vec(row(), 50);
    rows.extend(random.new_tree(runner).expect("rows").current());
    rows
}

/// What one predicate showed.
enum Outcome {
    /// Both sides refused it, or Postgres failed on a row (undefined answer).
    Skipped,
    /// Both selected the same rows; `split`: some rows but not all.
    Agreed { split: bool },
}

struct Oracle {
    client: tokio_postgres::Client,
    catalog: Catalog,
    /// Every row's columns in the text form a UTC session prints (what pgoutput sends).
    texts: Vec<Vec<Option<String>>>,
}

impl Oracle {
    fn check(&self, rt: &tokio::runtime::Runtime, pred: &str) -> Result<Outcome, String> {
        let file = format!("[shapes.s]\ntable = \"t\"\nwhere = '''{pred}'''\n");
        let ours = SchemaSource::from_files(vec![(PathBuf::from("t.toml"), file)])
            .map_err(|e| e.to_string())
            .and_then(|s| compile(&s, &self.catalog).map_err(|e| e.to_string()));
        let sql = format!("SELECT id FROM t WHERE {pred}");
        let theirs = rt.block_on(self.client.query(&sql, &[]));
        let (schema, pg_rows) = match (ours, theirs) {
            (Err(_), Err(_)) => return Ok(Outcome::Skipped),
            (Err(ours), Ok(_)) => return Err(format!("we refuse ({ours}) but Postgres accepts")),
            (Ok(_), Err(e)) => {
                let state = e.code().map(|c| c.code().to_string()).unwrap_or_default();
                // Data errors (22xxx, e.g. an out-of-range cast; 0A000 for
                // NaN to integer) happen while Postgres evaluates rows.
                return if state.starts_with("22") || state == "0A000" {
                    Ok(Outcome::Skipped)
                } else {
                    Err(format!("we accept but Postgres says {e}"))
                };
            }
            (Ok(schema), Ok(rows)) => (schema, rows),
        };
        let expected: BTreeSet<i32> = pg_rows.iter().map(|r| r.get::<_, i32>(0)).collect();
        let mut got = BTreeSet::new();
        for (id, row) in self.texts.iter().enumerate() {
            let refs: Vec<Option<&str>> = row.iter().map(|v| v.as_deref()).collect();
            let mut out = Vec::new();
            schema.route(0, &refs, &mut out);
            if out.iter().any(|b| b == "s#0[]") {
                got.insert(i32::try_from(id).unwrap_or(-1));
            }
        }
        if got != expected {
            let first = got.symmetric_difference(&expected).next().copied();
            let row = first.and_then(|id| self.texts.get(usize::try_from(id).ok()?));
            return Err(format!(
                "ours {got:?}, Postgres {expected:?}; first differing row {row:?}"
            ));
        }
        Ok(Outcome::Agreed {
            split: !expected.is_empty() && expected.len() < self.texts.len(),
        })
    }
}

#[test]
fn predicates_agree_with_postgres() {
    let pg = PgCluster::start().expect("cluster");
    pg.create_database("oracle").expect("db");
    pg.psql("oracle", SETUP).expect("setup");
    let rt = runtime();
    let mut runner = TestRunner::new(Config {
        // `OUTPOST_ORACLE_CASES` runs a longer search.
        cases: std::env::var("OUTPOST_ORACLE_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(400),
        failure_persistence: None,
        ..Config::default()
    });
    let rows = rows(&mut runner);
    let oracle = rt.block_on(async {
        let client = connect(&pg, "oracle").await;
        client
            .batch_execute(
                "SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET extra_float_digits = 3;",
            )
            .await
            .expect("settings");
        for (id, r) in rows.iter().enumerate() {
            let sql = format!("INSERT INTO t VALUES ({id}, {})", r.join(", "));
            client
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        let mut texts = Vec::new();
        let messages = client
            .simple_query("SELECT * FROM t ORDER BY id")
            .await
            .expect("rows");
        for m in messages {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                texts.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
            }
        }
        let catalog = Catalog::load(&client, &[("public".into(), "t".into())])
            .await
            .expect("catalog");
        Oracle {
            client,
            catalog,
            texts,
        }
    });
    let (agreed, split) = (Cell::new(0usize), Cell::new(0usize));
    let result = runner.run(&predicate(), |pred| {
        match oracle.check(&rt, &pred) {
            Ok(Outcome::Skipped) => {}
            Ok(Outcome::Agreed { split: s }) => {
                agreed.set(agreed.get() + 1);
                split.set(split.get() + usize::from(s));
            }
            Err(e) => return Err(TestCaseError::fail(format!("`{pred}`: {e}"))),
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!(
        "oracle: {} predicates agreed with Postgres, {} of them selecting some rows but not all",
        agreed.get(),
        split.get()
    );
    assert!(
        agreed.get() > 250,
        "only {} predicates compared",
        agreed.get()
    );
    assert!(
        split.get() > 100,
        "only {} predicates split the rows",
        split.get()
    );
}
