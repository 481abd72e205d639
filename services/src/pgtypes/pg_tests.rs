//! The conversions checked against a real Postgres: one column of every
//! supported type, written in sessions at UTC+14 and UTC-10, read back as
//! text with the replication session settings.

use super::*;
use crate::pgcluster::PgCluster;
use std::collections::BTreeMap;

/// The settings of the replication and snapshot sessions.
const SESSION: &str = "SET DateStyle=ISO; SET TimeZone=UTC; SET IntervalStyle=postgres; \
                       SET extra_float_digits=3;";

const COLUMNS: &[(&str, &str)] = &[
    ("c_bool", "boolean"),
    ("c_int2", "smallint"),
    ("c_int4", "integer"),
    ("c_int8", "bigint"),
    ("c_oid", "oid"),
    ("c_float4", "real"),
    ("c_float8", "double precision"),
    ("c_numeric", "numeric"),
    ("c_text", "text"),
    ("c_varchar", "varchar(10)"),
    ("c_bpchar", "char(5)"),
    ("c_name", "name"),
    ("c_enum", "mood"),
    ("c_uuid", "uuid"),
    ("c_bytea", "bytea"),
    ("c_timestamptz", "timestamptz"),
    ("c_timestamp", "timestamp"),
    ("c_date", "date"),
    ("c_time", "time"),
    ("c_timetz", "timetz"),
    ("c_interval", "interval"),
    ("c_json", "json"),
    ("c_jsonb", "jsonb"),
    ("c_inet", "inet"),
    ("c_cidr", "cidr"),
    ("c_macaddr", "macaddr"),
    ("c_macaddr8", "macaddr8"),
    ("a_int4", "int[]"),
    ("a_int8", "bigint[]"),
    ("a_text", "text[]"),
    ("a_bool", "bool[]"),
    ("a_float4", "real[]"),
    ("a_float8", "float8[]"),
    ("a_numeric", "numeric[]"),
    ("a_uuid", "uuid[]"),
    ("a_timestamp", "timestamp[]"),
    ("a_timestamptz", "timestamptz[]"),
    ("a_date", "date[]"),
    ("a_json", "json[]"),
    ("a_jsonb", "jsonb[]"),
    ("a_bytea", "bytea[]"),
    ("a_varchar", "varchar[]"),
    ("a_bpchar", "char(2)[]"),
];

fn t(s: &str) -> Kind {
    Kind::Text(s.to_string())
}

/// A row to insert: its id, the session time zone, and per column the value
/// as SQL and the expected wire value.
type Row = (i32, &'static str, Vec<(&'static str, String, Kind)>);

fn rows() -> Vec<Row> {
    let long_numeric = format!("{}.{}", "1234567890".repeat(100), "9".repeat(1000));
    let long_text = "ab☃𝄞\"|\\\n".repeat(20_000);
    let v = |col: &'static str, sql: &str, want: Kind| (col, sql.to_string(), want);
    vec![
        (1, "UTC", vec![]),
        (
            2,
            "Pacific/Kiritimati",
            vec![
                v("c_bool", "true", Kind::Integer(1)),
                v("c_int2", "-32768", Kind::Integer(-32768)),
                v("c_int4", "2147483647", Kind::Integer(2_147_483_647)),
                v("c_int8", "-9223372036854775808", Kind::Integer(i64::MIN)),
                v("c_oid", "4294967295", Kind::Integer(4_294_967_295)),
                v("c_float4", "3.4028235e38", Kind::Real(3.4028235e38)),
                v("c_float8", "1e308", Kind::Real(1e308)),
                (
                    "c_numeric",
                    format!("'{long_numeric}'"),
                    Kind::Text(long_numeric.clone()),
                ),
                v(
                    "c_text",
                    "E'h\u{e9}llo \u{2603} \u{1d11e} \"q\" | pipe \\n\\\\'",
                    t("héllo ☃ 𝄞 \"q\" | pipe \n\\"),
                ),
                v("c_varchar", "'abc'", t("abc")),
                v("c_bpchar", "'ab'", t("ab   ")),
                v("c_name", "'some_name'", t("some_name")),
                v("c_enum", "'happy'", t("happy")),
                v(
                    "c_uuid",
                    "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'",
                    t("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
                ),
                v("c_bytea", "'\\x'", Kind::Blob(vec![])),
                v(
                    "c_timestamptz",
                    "'2024-05-01 12:00:00.123'",
                    t("2024-04-30T22:00:00.123Z"),
                ),
                v(
                    "c_timestamp",
                    "'2024-05-01 12:00:00.123'",
                    t("2024-05-01T12:00:00.123"),
                ),
                v("c_date", "'0044-03-15 BC'", t("-0043-03-15")),
                v("c_time", "'23:59:59.999999'", t("23:59:59.999999")),
                v("c_timetz", "'12:00:00+14'", t("12:00:00+14")),
                v("c_interval", "'1 day 2 hours'", t("1 day 02:00:00")),
                v(
                    "c_json",
                    r#"'{"b": 1, "a": [1, 2]}'"#,
                    t(r#"{"b": 1, "a": [1, 2]}"#),
                ),
                v(
                    "c_jsonb",
                    r#"'{"b": 1, "a": [1, 2]}'"#,
                    t(r#"{"a": [1, 2], "b": 1}"#),
                ),
                v("c_inet", "'192.168.1.5/24'", t("192.168.1.5/24")),
                v("c_cidr", "'10.0.0.0/8'", t("10.0.0.0/8")),
                v("c_macaddr", "'08:00:2b:01:02:03'", t("08:00:2b:01:02:03")),
                v(
                    "c_macaddr8",
                    "'08:00:2b:01:02:03:04:05'",
                    t("08:00:2b:01:02:03:04:05"),
                ),
                v("a_int4", "'{1,2,NULL}'", t("[1,2,null]")),
                v(
                    "a_int8",
                    "'[0:1]={-9223372036854775808,9223372036854775807}'",
                    t("[-9223372036854775808,9223372036854775807]"),
                ),
                v(
                    "a_text",
                    r#"ARRAY['a b', 'c"d', NULL, 'NULL', '', 'é{},\', 'plain']"#,
                    t(r#"["a b","c\"d",null,"NULL","","é{},\\","plain"]"#),
                ),
                v("a_bool", "'{t,f,NULL}'", t("[true,false,null]")),
                v(
                    "a_float4",
                    "'{1.5,NaN,-Infinity}'",
                    t(r#"[1.5,"NaN","-Infinity"]"#),
                ),
                v(
                    "a_float8",
                    "'{{1e308,-0},{0.1,Infinity}}'",
                    t(r#"[[1e+308,-0.0],[0.1,"Infinity"]]"#),
                ),
                v("a_numeric", "'{1.50,NaN,-3}'", t(r#"["1.50","NaN","-3"]"#)),
                v(
                    "a_uuid",
                    "'{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}'",
                    t(r#"["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]"#),
                ),
                v(
                    "a_timestamp",
                    r#"'{"2024-05-01 12:00:00","0044-03-15 10:00:00 BC"}'"#,
                    t(r#"["2024-05-01T12:00:00","-0043-03-15T10:00:00"]"#),
                ),
                v(
                    "a_timestamptz",
                    r#"'{"2024-05-01 12:00:00.5",infinity}'"#,
                    t(r#"["2024-04-30T22:00:00.5Z","infinity"]"#),
                ),
                v(
                    "a_date",
                    "'{2024-05-01,-infinity}'",
                    t(r#"["2024-05-01","-infinity"]"#),
                ),
                v(
                    "a_json",
                    r#"ARRAY['{"a": 1}'::json, NULL]"#,
                    t(r#"["{\"a\": 1}",null]"#),
                ),
                v(
                    "a_jsonb",
                    r#"ARRAY['{"b":2,"a":1}'::jsonb]"#,
                    t(r#"["{\"a\": 1, \"b\": 2}"]"#),
                ),
                v(
                    "a_bytea",
                    r"ARRAY['\x01ff'::bytea, '\x'::bytea]",
                    t(r#"["\\x01ff","\\x"]"#),
                ),
                v("a_varchar", "'{x,y}'", t(r#"["x","y"]"#)),
                v("a_bpchar", "ARRAY['a'::char(2)]", t(r#"["a "]"#)),
            ],
        ),
        (
            3,
            "America/Adak",
            vec![
                v("c_bool", "false", Kind::Integer(0)),
                v("c_int2", "32767", Kind::Integer(32767)),
                v("c_int4", "-2147483648", Kind::Integer(-2_147_483_648)),
                v("c_int8", "9223372036854775807", Kind::Integer(i64::MAX)),
                v("c_oid", "0", Kind::Integer(0)),
                v("c_float4", "'-0'", Kind::Real(-0.0)),
                v("c_float8", "'NaN'", t("NaN")),
                v("c_numeric", "'NaN'", t("NaN")),
                (
                    "c_text",
                    format!(
                        "E'{}'",
                        long_text.replace('\\', "\\\\").replace('\n', "\\n")
                    ),
                    Kind::Text(long_text.clone()),
                ),
                v("c_varchar", "''", t("")),
                v("c_bpchar", "''", t("     ")),
                v("c_name", "'n'", t("n")),
                v("c_enum", "'sad'", t("sad")),
                v(
                    "c_uuid",
                    "'00000000-0000-0000-0000-000000000000'",
                    t("00000000-0000-0000-0000-000000000000"),
                ),
                v("c_bytea", "'\\x00ff'", Kind::Blob(vec![0, 255])),
                v(
                    "c_timestamptz",
                    "'294276-12-31 23:59:59.999999+00'",
                    t("294276-12-31T23:59:59.999999Z"),
                ),
                v(
                    "c_timestamp",
                    "'294276-12-31 23:59:59.999999'",
                    t("294276-12-31T23:59:59.999999"),
                ),
                v("c_date", "'5874897-12-31'", t("5874897-12-31")),
                v("c_time", "'00:00:00'", t("00:00:00")),
                v("c_timetz", "'00:00:00-12:59'", t("00:00:00-12:59")),
                v("c_interval", "'-178000000 years'", t("-178000000 years")),
                v("c_json", "'null'", t("null")),
                v("c_jsonb", "'\"\u{2603}\"'", t("\"☃\"")),
                v("c_inet", "'::1'", t("::1")),
                v("c_cidr", "'2001:db8::/32'", t("2001:db8::/32")),
                v("c_macaddr", "'00:00:00:00:00:00'", t("00:00:00:00:00:00")),
                v(
                    "c_macaddr8",
                    "'ff:ff:ff:ff:ff:ff:ff:ff'",
                    t("ff:ff:ff:ff:ff:ff:ff:ff"),
                ),
                v("a_int4", "'{}'", t("[]")),
                v("a_int8", "'{{1},{2}}'", t("[[1],[2]]")),
                v(
                    "a_text",
                    r#"'{{"x y",NULL},{"",z}}'"#,
                    t(r#"[["x y",null],["","z"]]"#),
                ),
                v(
                    "a_timestamptz",
                    "ARRAY['0044-03-15 00:00:00+00 BC'::timestamptz, \
                     '294276-12-31 23:59:59.999999+00']",
                    t(r#"["-0043-03-15T00:00:00Z","294276-12-31T23:59:59.999999Z"]"#),
                ),
                v("a_bytea", "'{}'", t("[]")),
            ],
        ),
        (
            4,
            "America/Adak",
            vec![
                v(
                    "c_timestamptz",
                    "'2024-12-31 15:00:00'",
                    t("2025-01-01T01:00:00Z"),
                ),
                v(
                    "c_timestamp",
                    "'0001-01-01 00:00:00 BC'",
                    t("0000-01-01T00:00:00"),
                ),
                v("c_date", "'0001-01-01 BC'", t("0000-01-01")),
                v("c_float8", "'-Infinity'", Kind::Real(f64::NEG_INFINITY)),
                v("c_numeric", "'-Infinity'", t("-Infinity")),
            ],
        ),
    ]
}

/// Timestamps whose UTC instant is only checked against Postgres' own arithmetic:
/// (row id, session time zone, value). Old dates fall in local mean time.
const ORACLE_ONLY: &[(i32, &str, &str)] = &[
    (5, "Pacific/Kiritimati", "0044-03-15 12:00:00 BC"),
    (6, "America/Adak", "1850-06-01 00:00:00.000001"),
    (7, "America/Adak", "4713-01-01 00:00:00 BC"),
    (8, "Pacific/Kiritimati", "1995-01-01 00:00:00"),
    (9, "Asia/Kolkata", "2000-02-29 23:59:59.5"),
];

#[test]
fn conversions_match_postgres() {
    let pg = PgCluster::start().expect("start cluster");
    let columns: Vec<String> = COLUMNS.iter().map(|(n, ty)| format!("{n} {ty}")).collect();
    pg.psql(
        "postgres",
        &format!(
            "CREATE TYPE mood AS ENUM ('sad', 'happy');\n\
             CREATE TABLE all_types (id int PRIMARY KEY, {});",
            columns.join(", ")
        ),
    )
    .expect("create table");

    let rows = rows();
    for (id, zone, values) in &rows {
        let names: Vec<&str> = values.iter().map(|(c, _, _)| *c).collect();
        let sqls: Vec<&str> = values.iter().map(|(_, s, _)| s.as_str()).collect();
        let sep = if names.is_empty() { "" } else { ", " };
        pg.psql(
            "postgres",
            &format!(
                "SET TimeZone='{zone}'; INSERT INTO all_types (id{sep}{}) VALUES ({id}{sep}{});",
                names.join(", "),
                sqls.join(", ")
            ),
        )
        .unwrap_or_else(|e| panic!("insert row {id}: {e}"));
    }
    for (id, zone, ts) in ORACLE_ONLY {
        pg.psql(
            "postgres",
            &format!("SET TimeZone='{zone}'; INSERT INTO all_types (id, c_timestamptz) VALUES ({id}, '{ts}');"),
        )
        .unwrap_or_else(|e| panic!("insert row {id}: {e}"));
    }

    let kinds = column_kinds(&pg);
    let read = read_all(&pg);
    let mut checked = 0;
    for (id, values) in &read {
        let expected: BTreeMap<&str, &Kind> = rows
            .iter()
            .filter(|(rid, _, _)| rid == id)
            .flat_map(|(_, _, vals)| vals.iter().map(|(c, _, k)| (*c, k)))
            .collect();
        for (col, text) in values {
            let kind = &kinds[col.as_str()];
            match (text, expected.get(col.as_str())) {
                (None, None) => {}
                (Some(text), Some(want)) => {
                    let got = to_value(kind, text)
                        .unwrap_or_else(|e| panic!("row {id} {col}: {e}"))
                        .kind
                        .expect("kind");
                    assert_eq!(&got, *want, "row {id} {col} from {text:?}");
                    checked += 1;
                }
                (Some(text), None) if col == "c_timestamptz" => {
                    to_value(kind, text).unwrap_or_else(|e| panic!("row {id} {col}: {e}"));
                }
                (text, want) => panic!("row {id} {col}: read {text:?}, expected {want:?}"),
            }
        }
    }
    assert!(checked > 70, "only {checked} values checked");
    check_instants(&pg);
    check_oid_table(&pg);
}

/// The kind of every column, from the catalog (enums resolved as TEXT).
fn column_kinds(pg: &PgCluster) -> BTreeMap<String, TypeKind> {
    let out = pg
        .psql(
            "postgres",
            "SELECT a.attname, a.atttypid, t.typtype FROM pg_attribute a \
             JOIN pg_type t ON t.oid = a.atttypid \
             WHERE a.attrelid = 'all_types'::regclass AND a.attnum > 0 AND NOT a.attisdropped;",
        )
        .expect("catalog");
    out.lines()
        .map(|line| {
            let parts: Vec<&str> = line.split('|').collect();
            let oid: u32 = parts[1].parse().expect("oid");
            let kind = match TypeKind::from_builtin_oid(oid) {
                Some(kind) => kind,
                None if parts[2] == "e" => TypeKind::Text,
                None => panic!("column {} has unsupported type {oid}", parts[0]),
            };
            (parts[0].to_string(), kind)
        })
        .collect()
}

/// Every value as its output function prints it (`None` for NULL), by row id
/// and column. `concat` calls the output function, as pgoutput and COPY do;
/// a `::text` cast would not (`boolean` casts to `true`, `char(n)` loses its padding).
#[allow(clippy::type_complexity)]
fn read_all(pg: &PgCluster) -> BTreeMap<i32, Vec<(String, Option<String>)>> {
    let select: Vec<String> = COLUMNS
        .iter()
        .map(|(c, _)| {
            format!(
                "CASE WHEN {c} IS NULL THEN 'N' \
                 ELSE 'V' || encode(convert_to(concat({c}), 'UTF8'), 'hex') END"
            )
        })
        .collect();
    let out = pg
        .psql(
            "postgres",
            &format!(
                "{SESSION} SELECT id, {} FROM all_types ORDER BY id;",
                select.join(", ")
            ),
        )
        .expect("read back");
    out.lines()
        .map(|line| {
            let mut parts = line.split('|');
            let id: i32 = parts.next().expect("id").parse().expect("id");
            let values = COLUMNS
                .iter()
                .zip(parts)
                .map(|((col, _), cell)| {
                    let text = cell
                        .strip_prefix('V')
                        .map(|h| String::from_utf8(hex::decode(h).expect("hex")).expect("utf-8"));
                    (col.to_string(), text)
                })
                .collect();
            (id, values)
        })
        .collect()
}

/// Every finite `timestamptz` converts to the instant Postgres computes in UTC.
fn check_instants(pg: &PgCluster) {
    let out = pg
        .psql(
            "postgres",
            &format!(
                "{SESSION} SELECT concat(c_timestamptz), \
                 to_char(c_timestamptz AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US BC') \
                 FROM all_types WHERE isfinite(c_timestamptz);"
            ),
        )
        .expect("instants");
    let mut count = 0;
    for line in out.lines() {
        let (text, oracle) = line.split_once('|').expect("two columns");
        let got = match to_value(&TypeKind::Timestamptz, text)
            .expect("convert")
            .kind
        {
            Some(Kind::Text(s)) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(normalize_iso(&got), normalize_oracle(oracle), "{text}");
        count += 1;
    }
    assert!(count >= 8, "{count} instants checked");
}

/// `[-]YYYY-MM-DDTHH:MM:SS[.f]Z` → (astronomical year, rest with 6 fraction digits).
fn normalize_iso(iso: &str) -> (i64, String) {
    let iso = iso.strip_suffix('Z').expect("Z");
    let (neg, body) = match iso.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, iso),
    };
    let (year, rest) = body.split_once('-').expect("year");
    let year: i64 = year.parse().expect("year");
    let (clock, frac) = rest.split_once('.').unwrap_or((rest, ""));
    (
        if neg { -year } else { year },
        format!("{}.{frac:0<6}", clock.replace('T', " ")),
    )
}

/// `YYYY-MM-DD HH:MM:SS.ffffff AD|BC` → (astronomical year, rest).
fn normalize_oracle(text: &str) -> (i64, String) {
    let (body, era) = text.rsplit_once(' ').expect("era");
    let (year, rest) = body.split_once('-').expect("year");
    let year: i64 = year.parse().expect("year");
    (if era == "BC" { 1 - year } else { year }, rest.to_string())
}

/// The OID table agrees with `pg_type`: names and array types.
fn check_oid_table(pg: &PgCluster) {
    let oids: Vec<String> = BUILTIN.iter().map(|(o, _, _)| o.to_string()).collect();
    let out = pg
        .psql(
            "postgres",
            &format!(
                "SELECT oid, typarray FROM pg_type WHERE oid IN ({}) ORDER BY oid;",
                oids.join(",")
            ),
        )
        .expect("pg_type");
    let catalog: BTreeMap<u32, u32> = out
        .lines()
        .map(|l| {
            let (o, a) = l.split_once('|').expect("two columns");
            (o.parse().expect("oid"), a.parse().expect("oid"))
        })
        .collect();
    assert_eq!(catalog.len(), BUILTIN.len());
    for (oid, array, _) in BUILTIN {
        assert_eq!(catalog.get(oid), Some(array), "array type of {oid}");
    }
}
