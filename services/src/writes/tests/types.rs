//! Every synced type survives the round trip Postgres → wire value (as
//! clients hold it) → write → Postgres: extremes, NaN and infinities, BC
//! dates, arrays with NULLs and quotes, nested arrays.

use super::*;
use crate::pgtypes::to_value;
use crate::snapshot::SESSION_SETTINGS;

const COLUMNS: &[(&str, &str)] = &[
    ("c_bool", "boolean"),
    ("c_int2", "smallint"),
    ("c_int8", "bigint"),
    ("c_float4", "real"),
    ("c_float8", "double precision"),
    ("c_numeric", "numeric(12, 4)"),
    ("c_text", "text"),
    ("c_varchar", "varchar(10)"),
    ("c_bpchar", "char(5)"),
    ("c_enum", "mood"),
    ("c_uuid", "uuid"),
    ("c_bytea", "bytea"),
    ("c_timestamptz", "timestamptz"),
    ("c_timestamp", "timestamp(3)"),
    ("c_date", "date"),
    ("c_time", "time"),
    ("c_timetz", "timetz"),
    ("c_interval", "interval"),
    ("c_json", "json"),
    ("c_jsonb", "jsonb"),
    ("c_inet", "inet"),
    ("c_macaddr", "macaddr"),
    ("a_int4", "int[]"),
    ("a_text", "text[]"),
    ("a_bool", "bool[]"),
    ("a_float8", "float8[]"),
    ("a_numeric", "numeric[]"),
    ("a_timestamptz", "timestamptz[]"),
    ("a_date", "date[]"),
    ("a_bytea", "bytea[]"),
    ("a_jsonb", "jsonb[]"),
    ("a_enum", "mood[]"),
];

/// Rows as SQL values, in `COLUMNS` order (row 1 is all NULL).
const ROWS: &[&[&str]] = &[
    &[
        "true",
        "-32768",
        "-9223372036854775808",
        "'-Infinity'",
        "'NaN'",
        "'-12345678.1234'",
        "E'quote \" back \\\\ snow ☃ \\n tab \\t'",
        "'ten chars!'",
        "'ab'",
        "'happy'",
        "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'",
        "'\\x00ff10'",
        "'0044-03-15 12:00:00.123456+00 BC'",
        "'infinity'",
        "'4713-01-01 BC'",
        "'24:00:00'",
        "'23:59:59.999999-12:34'",
        "'-1 year +2 days -03:04:05.5'",
        "'{\"a\": [1, 2.50],  \"b\": null}'",
        "'{\"z\": 1, \"a\": \"☃\"}'",
        "'::ffff:1.2.3.4/96'",
        "'08:00:2b:01:02:03'",
        "'{{1,NULL},{3,4}}'",
        r#"'{"a,b","\"q\"","back\\slash",NULL,"NULL",""}'"#,
        "'{t,NULL,f}'",
        "'{NaN,Infinity,-Infinity,-0,1e300,5e-324}'",
        "'{1.50,NaN,-Infinity}'",
        "ARRAY['10000-01-01 00:00:00+00', '0001-01-01 00:00:00+00 BC']::timestamptz[]",
        "'{infinity,-infinity,0001-01-01 BC}'",
        "ARRAY['\\x'::bytea, '\\x00ff'::bytea, NULL]",
        "ARRAY['{\"k\": [true]}'::jsonb, 'null'::jsonb]",
        "'{sad,NULL}'",
    ],
    &[
        "false",
        "32767",
        "9223372036854775807",
        "'3.4028235e38'",
        "'-0'",
        "'0.0001'",
        "''",
        "''",
        "'     '",
        "'sad'",
        "'00000000-0000-0000-0000-000000000000'",
        "''",
        "'-infinity'",
        "'1999-12-31 23:59:59.999'",
        "'infinity'",
        "'00:00:00'",
        "'00:00:00+14'",
        "'0'",
        "'[]'",
        "'\"s\"'",
        "'10.0.0.0/8'",
        "'ff:ff:ff:ff:ff:ff'",
        "'{}'",
        "'{}'",
        "'{}'",
        "'{}'",
        "'{}'",
        "'{}'",
        "'{}'",
        "'{}'",
        "'{}'",
        "'{}'",
    ],
];

#[test]
fn values_survive_the_round_trip_through_clients() {
    let mut setup = String::from("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');\n");
    setup.push_str("CREATE TABLE t (id int PRIMARY KEY");
    for (name, ty) in COLUMNS {
        setup.push_str(&format!(", {name} {ty}"));
    }
    setup.push_str(");\nINSERT INTO t (id) VALUES (1);\n");
    for (i, row) in ROWS.iter().enumerate() {
        assert_eq!(row.len(), COLUMNS.len(), "row {}", i + 2);
        let names: Vec<&str> = COLUMNS.iter().map(|(n, _)| *n).collect();
        setup.push_str(&format!(
            "INSERT INTO t (id, {}) VALUES ({}, {});\n",
            names.join(", "),
            i + 2,
            row.join(", ")
        ));
    }
    let pg = cluster(&setup, false);
    let rules = "[shapes.t]\ntable = \"t\"\n\n[tables.t]\ninsert = \"true\"\n";
    runtime().block_on(async {
        let applier = applier(&pg, rules).await;
        let source = SchemaSource::from_files(vec![(PathBuf::from("a.toml"), rules.into())])
            .unwrap_or_else(|e| panic!("{e}"));
        let client = connect(&pg).await;
        client
            .batch_execute(SESSION_SETTINGS)
            .await
            .expect("settings");
        let catalog = Catalog::load(&client, &source.tables())
            .await
            .expect("catalog");
        let schema = compile(&source, &catalog).unwrap_or_else(|e| panic!("{e}"));
        let table = &schema.tables[0];
        let select: Vec<String> = table
            .columns
            .iter()
            .map(|c| format!("{}::text", c.name))
            .collect();
        let rows = client
            .query(
                &format!("SELECT {} FROM t ORDER BY id", select.join(", ")),
                &[],
            )
            .await
            .expect("read");
        let mut groups = Vec::new();
        for (seq, row) in rows.iter().enumerate() {
            let mut columns = Vec::new();
            let mut id = 0;
            for (i, c) in table.columns.iter().enumerate() {
                let text: Option<String> = row.get(i);
                let kind = c.kind.as_ref().expect("a synced type");
                let value = match &text {
                    Some(t) => to_value(kind, t).unwrap_or_else(|e| panic!("{}: {e}", c.name)),
                    None => null(),
                };
                if c.name == "id" {
                    id = text.and_then(|t| t.parse::<i64>().ok()).expect("id");
                } else {
                    columns.push(col(&c.name, value));
                }
            }
            groups.push(group(
                seq as u64 + 1,
                vec![insert("t", id + 1000, columns, hlc(1))],
            ));
        }
        let results = applier
            .apply("types", &claims("x"), &groups)
            .await
            .expect("apply");
        for r in &results {
            assert_eq!(r.reason_code, "", "{}", r.message);
        }
    });
    let differs: Vec<String> = COLUMNS
        .iter()
        .map(|(c, _)| format!("CASE WHEN a.{c}::text IS DISTINCT FROM b.{c}::text THEN '{c}' END"))
        .collect();
    assert_eq!(
        query(
            &pg,
            &format!(
                "SELECT a.id, array_remove(ARRAY[{}], NULL) FROM t a \
                 LEFT JOIN t b ON b.id = a.id + 1000 WHERE a.id < 1000 ORDER BY a.id",
                differs.join(", ")
            )
        ),
        "1|{}\n2|{}\n3|{}"
    );
}
