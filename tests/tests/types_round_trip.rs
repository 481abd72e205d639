//! Every supported Postgres type, with NULLs and extremes, reaches the replica
//! exactly as the oracle converts it: through the initial snapshot and through
//! the live stream; an UPDATE of another column keeps a TOASTed value intact.

use anyhow::ensure;
use outpost_proto::v1::Value;
use outpost_tests::{
    Advance, BackgroundClient, ShapeQuery, TestDb, blob, int, null, real, show_value, text,
    wait_for_replica,
};
use std::time::Duration;

const SETUP: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'ünïcödé');
CREATE TABLE all_types (
  id int PRIMARY KEY,
  b bool, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8, num numeric,
  txt text, vc varchar(10), ch char(5), u uuid, bin bytea,
  tstz timestamptz, ts timestamp, d date, tm time, ttz timetz, iv interval,
  j json, jb jsonb, ip inet, mood mood, ia int4[], ta text[],
  big text, note text
);
ALTER TABLE all_types ALTER COLUMN big SET STORAGE EXTERNAL;
SET TimeZone = 'Pacific/Kiritimati';
INSERT INTO all_types VALUES
 (1, true, 1, 2, 3, 1.5, 2.25, 123.4500,
  'hello', 'abc', 'ab', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', '\x00ff10',
  '2024-01-01 00:00:00+14', '2024-05-01 12:00:00.123', '2024-05-01', '12:30:00', '12:30:00+02', '1 day 2 hours',
  '{"a": 1, "b": [1, 2]}', '{"b": [1, 2], "a": "ü"}', '192.168.0.1/24', 'happy', '{1,NULL,3}', '{"a b","c,d",NULL,"\"q\""}',
  (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 400) g), 'n1'),
 (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (3, false, -32768, -2147483648, -9223372036854775808, '-Infinity', 'NaN', 1234567890123456789012345678901234567890,
  '', '', '', '00000000-0000-0000-0000-000000000000', '',
  '0044-03-15 12:00:00+00 BC', '1969-07-20 20:17:40', '0001-01-01 BC', '00:00:00', '23:59:59.999999-12',
  '-1 years -2 mons +3 days -04:05:06.789', '[]', '{}', '::1', 'ünïcödé', '{}', '{}', '', '日本語 🎉 Ünïcødé');
"#;

const SCHEMA: &str = r#"
[shapes.everything]
table = "all_types"
"#;

const LIVE_ROWS: &str = r#"
SET TimeZone = 'Pacific/Kiritimati';
INSERT INTO all_types VALUES
 (4, true, 32767, 2147483647, 9223372036854775807, 3.4028235e+38, '-0', 'NaN',
  'ünïcödé 🎉', 'ünïcödé', 'ü', 'ffffffff-ffff-ffff-ffff-ffffffffffff', '\xdeadbeef',
  'infinity', '-infinity', 'infinity', '24:00:00', '00:00:00+14', '0 seconds',
  '{"nested": {"deep": [true, false, null]}}', '[1, "two", 3.0]', '2001:db8::/32', 'sad', '{{1,2},{3,4}}', '{"日本", ""}',
  (SELECT string_agg(md5(g::text || 'x'), '') FROM generate_series(1, 400) g), 'n4'),
 (5, false, 0, 0, 0, 1.17549435e-38, 1e308, 'Infinity',
  'line1
line2	tab \ backslash', 'x', 'abcde', '123e4567-e89b-12d3-a456-426614174000', '\x5c00',
  '1960-06-01 12:00:00', '1900-01-01 00:00:00', '1900-02-28', '23:59:59.999999', '12:00:00-03:30', '1 year 2 mons 3 days 04:05:06.000007',
  'null', '"just a string"', '10.0.0.0/8', 'ok', '{-2147483648,2147483647}', '{"NULL","null",NULL}', NULL, 'n5'),
 (6, NULL, -1, -1, -1, 'NaN', 'Infinity', '-Infinity',
  NULL, NULL, NULL, NULL, '\x', '2024-02-29 23:59:59.999999+00', '2024-02-29 23:59:59.999999', '2024-02-29', NULL, NULL, '-00:00:01',
  '{}', 'true', '0.0.0.0', NULL, '{NULL}', '{"\\"}', '', NULL),
 (7, true, 7, 7, 7, 0.1, 0.1, -0.0000000000000000000000000000000000000001,
  'seven', 'seven', 'seven', NULL, NULL, '4714-11-24 00:00:00+00 BC', '294276-12-31 23:59:59', '5874897-12-31', NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'n7');
"#;

const COLUMNS: &[&str] = &[
    "id", "b", "i2", "i4", "i8", "f4", "f8", "num", "txt", "vc", "ch", "u", "bin", "tstz", "ts",
    "d", "tm", "ttz", "iv", "j", "jb", "ip", "mood", "ia", "ta", "big", "note",
];

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn types_round_trip() -> anyhow::Result<()> {
    let db = TestDb::start(SETUP, SCHEMA).await?;
    let service = outpost::service::start(db.service_config()).await?;
    let server = format!("http://{}", service.addr);
    let oracle = db.oracle();
    let shape = ShapeQuery::new("all_types", COLUMNS);
    let path = db.replica_path("alice");
    let token = db.token("alice")?;

    // Rows 1-3 come through the initial snapshot.
    let once = Advance::Once {
        server: &server,
        token: &token,
    };
    let rows = wait_for_replica(&oracle, &shape, &path, once, WAIT)
        .await?
        .rows;
    ensure!(
        rows.ids() == vec![1, 2, 3],
        "snapshot rows: {:?}",
        rows.ids()
    );
    let big_1 = match rows.value(1, "big") {
        Some(Value {
            kind: Some(outpost_proto::v1::value::Kind::Text(t)),
        }) => t.clone(),
        other => anyhow::bail!("row 1's big value: {other:?}"),
    };
    ensure!(
        big_1.len() == 12_800,
        "row 1's big value has {} bytes",
        big_1.len()
    );
    let md5_1 = "c4ca4238a0b923820dcc509a6f75849b"; // md5('1')
    ensure!(
        big_1.starts_with(md5_1),
        "row 1's big value starts with {:?}",
        &big_1[..32]
    );

    let expected: Vec<(i64, &str, Value)> = vec![
        (1, "b", int(1)),
        (1, "i8", int(3)),
        (1, "f4", real(1.5)),
        (1, "f8", real(2.25)),
        (1, "num", text("123.4500")),
        (1, "ch", text("ab   ")),
        (1, "u", text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
        (1, "bin", blob(&[0x00, 0xff, 0x10])),
        (1, "tstz", text("2023-12-31T10:00:00Z")),
        (1, "ts", text("2024-05-01T12:00:00.123")),
        (1, "d", text("2024-05-01")),
        (1, "tm", text("12:30:00")),
        (1, "ttz", text("12:30:00+02")),
        (1, "iv", text("1 day 02:00:00")),
        (1, "mood", text("happy")),
        (1, "ia", text("[1,null,3]")),
        (2, "b", null()),
        (2, "num", null()),
        (2, "bin", null()),
        (2, "tstz", null()),
        (3, "b", int(0)),
        (3, "i2", int(-32768)),
        (3, "i8", int(i64::MIN)),
        (3, "f4", real(f64::NEG_INFINITY)),
        (3, "f8", text("NaN")),
        (3, "num", text("1234567890123456789012345678901234567890")),
        (3, "txt", text("")),
        (3, "ch", text("     ")),
        (3, "bin", blob(&[])),
        (3, "tstz", text("-0043-03-15T12:00:00Z")),
        (3, "ts", text("1969-07-20T20:17:40")),
        (3, "d", text("0000-01-01")),
        (3, "mood", text("ünïcödé")),
        (3, "ia", text("[]")),
        (3, "note", text("日本語 🎉 Ünïcødé")),
    ];
    check_values(&rows, &expected)?;

    // Rows 4-7 come through the live stream.
    let mut client = BackgroundClient::start(&server, &token, &path);
    db.pg.psql(&db.db, LIVE_ROWS)?;
    let rows = wait_for_replica(&oracle, &shape, &path, Advance::Background, WAIT)
        .await
        .map_err(|e| e.context(client.describe()))?
        .rows;
    ensure!(
        rows.ids() == vec![1, 2, 3, 4, 5, 6, 7],
        "rows after the live inserts: {:?}",
        rows.ids()
    );
    let expected: Vec<(i64, &str, Value)> = vec![
        (4, "b", int(1)),
        (4, "i2", int(32767)),
        (4, "i4", int(2147483647)),
        (4, "i8", int(i64::MAX)),
        (4, "f8", real(-0.0)),
        (4, "num", text("NaN")),
        (4, "bin", blob(&[0xde, 0xad, 0xbe, 0xef])),
        (4, "tstz", text("infinity")),
        (4, "ts", text("-infinity")),
        (4, "d", text("infinity")),
        (4, "ia", text("[[1,2],[3,4]]")),
        (5, "num", text("Infinity")),
        (5, "f8", real(1e308)),
        (5, "bin", blob(b"\\\x00")),
        (5, "ts", text("1900-01-01T00:00:00")),
        (6, "f4", text("NaN")),
        (6, "f8", real(f64::INFINITY)),
        (6, "num", text("-Infinity")),
        (6, "bin", blob(&[])),
        (6, "tstz", text("2024-02-29T23:59:59.999999Z")),
        (6, "big", text("")),
        (
            7,
            "num",
            text("-0.0000000000000000000000000000000000000001"),
        ),
        (7, "tstz", text("-4713-11-24T00:00:00Z")),
    ];
    check_values(&rows, &expected)?;

    // Updating another column of the TOASTed rows keeps their big values.
    let big_4 = rows.value(4, "big").cloned();
    db.pg.psql(
        &db.db,
        "UPDATE all_types SET note = 'changed' WHERE id IN (1, 4);",
    )?;
    let rows = wait_for_replica(&oracle, &shape, &path, Advance::Background, WAIT)
        .await
        .map_err(|e| e.context(client.describe()))?
        .rows;
    check_values(
        &rows,
        &[
            (1, "note", text("changed")),
            (4, "note", text("changed")),
            (1, "big", text(&big_1)),
        ],
    )?;
    ensure!(
        rows.value(4, "big").cloned() == big_4,
        "row 4's big value changed"
    );

    client.check_running().await?;
    client.stop().await;
    service.shutdown().await?;
    Ok(())
}

/// Checks explicit replica values; reports every mismatch at once.
fn check_values(rows: &outpost_tests::Rows, expected: &[(i64, &str, Value)]) -> anyhow::Result<()> {
    let mut wrong = Vec::new();
    for (id, column, value) in expected {
        let got = rows.value(*id, column);
        if got != Some(value) {
            wrong.push(format!(
                "row {id} column {column}: expected {}, replica has {}",
                show_value(value),
                got.map(show_value).unwrap_or_else(|| "no value".into())
            ));
        }
    }
    ensure!(
        wrong.is_empty(),
        "replica values differ from the expected ones:\n  {}",
        wrong.join("\n  ")
    );
    Ok(())
}
