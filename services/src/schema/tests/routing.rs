//! Routing rows to buckets and computing a user's buckets.

use serde_json::{Map, Value, json};

use super::{col, compile_files, table, todo_catalog};
use crate::schema::{CompiledSchema, ShapeRequestError};

const ALICE_UUID: &str = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";

fn schema(files: &[(&str, &str)]) -> CompiledSchema {
    compile_files(files, &todo_catalog()).unwrap_or_else(|e| panic!("{e:#?}"))
}

/// A `todos` row: every column NULL except those given.
fn todo(values: &[(&str, &str)]) -> Vec<Option<String>> {
    let names = [
        "id",
        "list_id",
        "title",
        "done",
        "owner",
        "assignee",
        "archived",
        "created_at",
        "score",
        "search",
        "meta",
    ];
    names
        .iter()
        .map(|n| {
            values
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.to_string())
        })
        .collect()
}

fn route(schema: &CompiledSchema, table: &str, row: &[Option<String>]) -> Vec<String> {
    let refs: Vec<Option<&str>> = row.iter().map(|v| v.as_deref()).collect();
    let mut out = Vec::new();
    let index = schema.table_index("public", table).expect("table");
    schema.route(index, &refs, &mut out);
    out
}

fn claims(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("claims must be an object"),
    }
}

#[test]
fn a_parameter_and_a_row_predicate() {
    let s = schema(&[(
        "a.toml",
        "[shapes.my_todos]\ntable = \"todos\"\nwhere = \"owner = auth.sub AND NOT archived\"\n",
    )]);
    assert_eq!(s.shapes[0].buckets.len(), 1);
    let row = |owner: Option<&str>, archived: Option<&str>| {
        let mut v = vec![("id", "1")];
        v.extend(owner.map(|o| ("owner", o)));
        v.extend(archived.map(|a| ("archived", a)));
        todo(&v)
    };
    assert_eq!(
        route(&s, "todos", &row(Some("alice"), Some("f"))),
        [r#"my_todos#0["alice"]"#]
    );
    assert!(route(&s, "todos", &row(Some("alice"), Some("t"))).is_empty());
    // NOT NULL is NULL: not in the shape.
    assert!(route(&s, "todos", &row(Some("alice"), None)).is_empty());
    // A NULL parameter is in no bucket.
    assert!(route(&s, "todos", &row(None, Some("f"))).is_empty());
    assert_eq!(
        s.user_buckets(&[], &claims(json!({"sub": "alice"})))
            .expect("buckets"),
        [r#"my_todos#0["alice"]"#]
    );
    for missing in [json!({}), json!({"sub": null}), json!({"sub": ["a"]})] {
        assert!(
            s.user_buckets(&[], &claims(missing))
                .expect("buckets")
                .is_empty()
        );
    }
}

#[test]
fn or_of_two_parameters_gives_two_buckets() {
    let s = schema(&[(
        "a.toml",
        "[shapes.visible]\ntable = \"todos\"\nwhere = \"(owner = auth.sub OR auth.uid = assignee) AND NOT done\"\n",
    )]);
    assert_eq!(s.shapes[0].buckets.len(), 2);
    let both = todo(&[
        ("id", "1"),
        ("owner", "bob"),
        ("assignee", ALICE_UUID),
        ("done", "f"),
    ]);
    assert_eq!(
        route(&s, "todos", &both),
        [
            r#"visible#0["bob"]"#.to_string(),
            format!(r#"visible#1["{ALICE_UUID}"]"#)
        ]
    );
    let done = todo(&[
        ("id", "1"),
        ("owner", "bob"),
        ("assignee", ALICE_UUID),
        ("done", "t"),
    ]);
    assert!(route(&s, "todos", &done).is_empty());
    let no_assignee = todo(&[("id", "1"), ("owner", "bob"), ("done", "f")]);
    assert_eq!(route(&s, "todos", &no_assignee), [r#"visible#0["bob"]"#]);
    // The claim's uuid is read as Postgres reads uuids (any case, braces).
    let user = claims(json!({"sub": "bob", "uid": format!("{{{}}}", ALICE_UUID.to_uppercase())}));
    assert_eq!(
        s.user_buckets(&["visible".into()], &user).expect("buckets"),
        [
            r#"visible#0["bob"]"#.to_string(),
            format!(r#"visible#1["{ALICE_UUID}"]"#)
        ]
    );
    // A claim that is not a uuid gives no bucket for that branch only.
    let user = claims(json!({"sub": "bob", "uid": "not-a-uuid"}));
    assert_eq!(
        s.user_buckets(&[], &user).expect("buckets"),
        [r#"visible#0["bob"]"#]
    );
}

#[test]
fn shapes_without_parameters_and_default_sets() {
    let s = schema(&[(
        "a.toml",
        "[shapes.public_lists]\ntable = \"lists\"\nwhere = \"public\"\n\n[shapes.all_lists]\ntable = \"lists\"\ndefault = false\n",
    )]);
    let row = |public: &str| {
        vec![
            Some("7".to_string()),
            Some("x".into()),
            Some(public.to_string()),
        ]
    };
    assert_eq!(
        route(&s, "lists", &row("t")),
        ["public_lists#0[]", "all_lists#0[]"]
    );
    assert_eq!(route(&s, "lists", &row("f")), ["all_lists#0[]"]);
    let none = Map::new();
    assert_eq!(
        s.user_buckets(&[], &none).expect("default"),
        ["public_lists#0[]"]
    );
    assert_eq!(
        s.user_buckets(&["all_lists".into(), "all_lists".into()], &none)
            .expect("named"),
        ["all_lists#0[]"]
    );
    assert_eq!(
        s.user_buckets(&["nope".into()], &none),
        Err(ShapeRequestError::UnknownShape {
            name: "nope".into(),
            known: vec!["public_lists".into(), "all_lists".into()]
        })
    );
    assert_eq!(
        ShapeRequestError::UnknownShape {
            name: "nope".into(),
            known: vec!["a".into(), "b".into()]
        }
        .to_string(),
        "unknown shape `nope`; known shapes: a, b"
    );
}

#[test]
fn claims_convert_to_the_column_type() {
    let catalog = super::catalog(vec![table(
        "items",
        vec![
            col("id", "int8"),
            col("org", "int4"),
            col("price", "numeric"),
            col("code", "bpchar"),
            col("day", "date"),
            col("flag", "bool"),
        ],
        &["id"],
    )]);
    let s = compile_files(
        &[(
            "a.toml",
            "[shapes.by_org]\ntable = \"items\"\nwhere = \"org = auth.app.org\"\n\n[shapes.by_price]\ntable = \"items\"\nwhere = \"price = auth.price AND code = auth.code AND day = auth.day AND flag = auth.flag\"\n",
        )],
        &catalog,
    )
    .unwrap_or_else(|e| panic!("{e:#?}"));
    let row: Vec<Option<&str>> = vec![
        Some("1"),
        Some("42"),
        Some("1.50"),
        Some("ab  "),
        Some("2024-01-31"),
        Some("t"),
    ];
    let mut routed = Vec::new();
    s.route(0, &row, &mut routed);
    assert_eq!(
        routed,
        ["by_org#0[42]", r#"by_price#0["1.5","ab","2024-01-31",1]"#]
    );
    for org in [json!(42), json!("42"), json!(" 42 ")] {
        let user = claims(
            json!({"app": {"org": org}, "price": 1.5, "code": "ab", "day": "2024-01-31", "flag": true}),
        );
        assert_eq!(s.user_buckets(&[], &user).expect("buckets"), routed);
    }
    for org in [
        json!(42.5),
        json!("x"),
        json!(4_294_967_296i64),
        json!({"id": 1}),
    ] {
        let user = claims(json!({"app": {"org": org}}));
        assert!(
            s.user_buckets(&["by_org".into()], &user)
                .expect("buckets")
                .is_empty()
        );
    }
    let user =
        claims(json!({"price": "1.500", "code": "ab ", "day": "2024-01-31 10:00", "flag": "yes"}));
    assert_eq!(
        s.user_buckets(&["by_price".into()], &user)
            .expect("buckets"),
        [r#"by_price#0["1.5","ab","2024-01-31",1]"#]
    );
    // A wrong number of columns routes nowhere rather than panicking.
    let mut out = Vec::new();
    s.route(0, &row[..3], &mut out);
    s.route(7, &row, &mut out);
    assert!(out.is_empty());
}

#[test]
fn versions_follow_what_decides_bucket_contents() {
    let base = "[shapes.a]\ntable = \"todos\"\nwhere = \"owner = auth.sub\"\n";
    let v = |text: &str| schema(&[("a.toml", text)]).version;
    assert_eq!(v(base), v(&format!("# a comment\n{base}")));
    assert_eq!(
        v(base),
        v(&base.replace("owner = auth.sub", "auth.sub   =  owner"))
    );
    assert_eq!(v(base), v(&format!("{base}default = false\n")));
    assert_ne!(v(base), v(&base.replace("owner", "title")));
    assert_ne!(v(base), v(&format!("{base}columns = [\"title\"]\n")));
    let mut other = todo_catalog();
    other.tables[0].columns[2].type_oid = 1043;
    let changed = compile_files(&[("a.toml", base)], &other).expect("compiles");
    assert_ne!(v(base), changed.version);
}
