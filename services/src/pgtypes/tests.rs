//! Unit tests of the text → wire conversions, one group per rule.

use super::datetime::{civil_from_days, days_from_civil};
use super::*;
use proptest::prelude::*;

fn conv(kind: TypeKind, text: &str) -> Kind {
    to_value(&kind, text)
        .unwrap_or_else(|e| panic!("{e}"))
        .kind
        .expect("a value kind")
}

fn text(kind: TypeKind, input: &str) -> String {
    match conv(kind, input) {
        Kind::Text(s) => s,
        other => panic!("expected text, got {other:?}"),
    }
}

fn real(input: &str) -> f64 {
    match conv(TypeKind::Float, input) {
        Kind::Real(f) => f,
        other => panic!("expected real, got {other:?}"),
    }
}

fn arr(element: TypeKind, input: &str) -> String {
    text(TypeKind::Array(Box::new(element)), input)
}

fn fails(kind: TypeKind, input: &str) {
    assert!(
        to_value(&kind, input).is_err(),
        "{input:?} as {kind:?} should fail"
    );
}

#[test]
fn builtin_oids() {
    assert_eq!(TypeKind::from_builtin_oid(16), Some(TypeKind::Bool));
    assert_eq!(TypeKind::from_builtin_oid(20), Some(TypeKind::Int));
    assert_eq!(TypeKind::from_builtin_oid(1700), Some(TypeKind::Numeric));
    assert_eq!(TypeKind::from_builtin_oid(3802), Some(TypeKind::Json));
    assert_eq!(
        TypeKind::from_builtin_oid(1007),
        Some(TypeKind::Array(Box::new(TypeKind::Int)))
    );
    assert_eq!(
        TypeKind::from_builtin_oid(1185),
        Some(TypeKind::Array(Box::new(TypeKind::Timestamptz)))
    );
    assert_eq!(TypeKind::from_builtin_oid(600), None); // point
    assert_eq!(TypeKind::from_builtin_oid(0), None);
    assert_eq!(TypeKind::Bool.sqlite_type(), "INTEGER");
    assert_eq!(TypeKind::Bytea.sqlite_type(), "BLOB");
}

#[test]
fn bools_and_ints() {
    assert_eq!(conv(TypeKind::Bool, "t"), Kind::Integer(1));
    assert_eq!(conv(TypeKind::Bool, "f"), Kind::Integer(0));
    fails(TypeKind::Bool, "yes");
    fails(TypeKind::Bool, "");
    assert_eq!(conv(TypeKind::Int, "0"), Kind::Integer(0));
    assert_eq!(
        conv(TypeKind::Int, "-9223372036854775808"),
        Kind::Integer(i64::MIN)
    );
    assert_eq!(
        conv(TypeKind::Int, "9223372036854775807"),
        Kind::Integer(i64::MAX)
    );
    assert_eq!(
        conv(TypeKind::Int, "4294967295"),
        Kind::Integer(4_294_967_295)
    );
    fails(TypeKind::Int, "9223372036854775808");
    fails(TypeKind::Int, "1.5");
    fails(TypeKind::Int, "");
}

#[test]
fn floats() {
    assert_eq!(real("1.5"), 1.5);
    assert_eq!(real("1e+308"), 1e308);
    assert_eq!(real("-1.7976931348623157e+308"), f64::MIN);
    assert_eq!(real("5e-324"), 5e-324);
    assert_eq!(real("0.1"), 0.1);
    let zero = real("-0");
    assert!(zero == 0.0 && zero.is_sign_negative());
    assert_eq!(real("Infinity"), f64::INFINITY);
    assert_eq!(real("-Infinity"), f64::NEG_INFINITY);
    assert_eq!(conv(TypeKind::Float, "NaN"), Kind::Text("NaN".into()));
    fails(TypeKind::Float, "inf");
    fails(TypeKind::Float, "abc");
    fails(TypeKind::Float, "");
}

#[test]
fn numerics_are_exact_text() {
    let long = format!("-{}.{}", "9".repeat(1000), "1".repeat(1000));
    assert_eq!(text(TypeKind::Numeric, &long), long);
    for s in ["0", "0.000", "123.4500", "NaN", "Infinity", "-Infinity"] {
        assert_eq!(text(TypeKind::Numeric, s), s);
    }
    for s in ["", "1e5", "1.", ".5", "--1", "abc"] {
        fails(TypeKind::Numeric, s);
    }
}

#[test]
fn text_like() {
    assert_eq!(text(TypeKind::Text, ""), "");
    assert_eq!(text(TypeKind::Text, "héllo ☃ 𝄞"), "héllo ☃ 𝄞");
    let long = "x".repeat(5_000_000);
    assert_eq!(text(TypeKind::Text, &long), long);
    assert_eq!(
        text(TypeKind::Uuid, "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"),
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    );
    fails(TypeKind::Uuid, "a0eebc99");
    assert_eq!(text(TypeKind::Json, r#"{"a": [1, 2]}"#), r#"{"a": [1, 2]}"#);
    assert_eq!(text(TypeKind::Network, "192.168.0.0/24"), "192.168.0.0/24");
    assert_eq!(text(TypeKind::Interval, "1 day 02:00:00"), "1 day 02:00:00");
    assert_eq!(text(TypeKind::Time, "23:59:59.999999"), "23:59:59.999999");
    assert_eq!(text(TypeKind::Timetz, "12:00:00+14"), "12:00:00+14");
}

#[test]
fn bytea() {
    assert_eq!(conv(TypeKind::Bytea, "\\x"), Kind::Blob(vec![]));
    assert_eq!(
        conv(TypeKind::Bytea, "\\x00ff10Ab"),
        Kind::Blob(vec![0, 255, 16, 171])
    );
    assert_eq!(
        conv(TypeKind::Bytea, "a\\\\b\\000\\377"),
        Kind::Blob(vec![b'a', b'\\', b'b', 0, 255])
    );
    fails(TypeKind::Bytea, "\\x0");
    fails(TypeKind::Bytea, "\\xzz");
    fails(TypeKind::Bytea, "a\\9");
    fails(TypeKind::Bytea, "a\\");
}

#[test]
fn timestamptz() {
    let t = |s| text(TypeKind::Timestamptz, s);
    assert_eq!(t("2024-05-01 12:00:00.123+00"), "2024-05-01T12:00:00.123Z");
    assert_eq!(t("2024-05-01 12:00:00+00"), "2024-05-01T12:00:00Z");
    assert_eq!(
        t("2024-05-01 12:00:00.000001+00"),
        "2024-05-01T12:00:00.000001Z"
    );
    assert_eq!(t("infinity"), "infinity");
    assert_eq!(t("-infinity"), "-infinity");
    assert_eq!(t("0044-03-15 00:00:00+00 BC"), "-0043-03-15T00:00:00Z");
    assert_eq!(t("0001-12-31 23:00:00+00 BC"), "0000-12-31T23:00:00Z");
    assert_eq!(t("4714-11-24 00:00:00+00 BC"), "-4713-11-24T00:00:00Z");
    assert_eq!(
        t("294276-12-31 23:59:59.999999+00"),
        "294276-12-31T23:59:59.999999Z"
    );
    // Other offsets are moved to UTC.
    assert_eq!(t("2024-05-01 12:00:00.5+14"), "2024-04-30T22:00:00.5Z");
    assert_eq!(t("2024-12-31 20:00:00-09:30"), "2025-01-01T05:30:00Z");
    assert_eq!(t("1883-11-18 12:00:00-07:52:58"), "1883-11-18T19:52:58Z");
    assert_eq!(t("0001-01-01 05:00:00+06"), "0000-12-31T23:00:00Z");
    assert_eq!(t("2024-03-01 00:30:00+01"), "2024-02-29T23:30:00Z");
    for bad in [
        "",
        "2024-05-01",
        "2024-05-01 12:00:00",
        "2024-05-01 12:00+00",
        "2024-13-01 12:00:00+00",
        "0000-01-01 00:00:00+00",
        "2024-05-01 12:00:00.+00",
        "2024-05-01 12:00:00+0",
        "x024-05-01 12:00:00+00",
    ] {
        fails(TypeKind::Timestamptz, bad);
    }
}

#[test]
fn timestamp_and_date() {
    let t = |s| text(TypeKind::Timestamp, s);
    assert_eq!(t("2024-05-01 12:00:00"), "2024-05-01T12:00:00");
    assert_eq!(t("2024-05-01 12:00:00.25"), "2024-05-01T12:00:00.25");
    assert_eq!(t("0044-03-15 10:00:00 BC"), "-0043-03-15T10:00:00");
    assert_eq!(t("infinity"), "infinity");
    fails(TypeKind::Timestamp, "2024-05-01 12:00:00+00");
    let d = |s| text(TypeKind::Date, s);
    assert_eq!(d("2024-05-01"), "2024-05-01");
    assert_eq!(d("0001-01-01 BC"), "0000-01-01");
    assert_eq!(d("4714-11-24 BC"), "-4713-11-24");
    assert_eq!(d("5874897-12-31"), "5874897-12-31");
    assert_eq!(d("-infinity"), "-infinity");
    fails(TypeKind::Date, "2024-05");
    fails(TypeKind::Date, "2024-05-01 12:00:00");
}

#[test]
fn civil_calendar_round_trips() {
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    for days in (-3_000_000..110_000_000).step_by(9_973) {
        let (y, m, d) = civil_from_days(days);
        assert_eq!(days_from_civil(y, m, d), days);
    }
}

#[test]
fn arrays() {
    assert_eq!(arr(TypeKind::Int, "{1,2,NULL}"), "[1,2,null]");
    assert_eq!(arr(TypeKind::Int, "{}"), "[]");
    assert_eq!(arr(TypeKind::Int, "{{1,2},{3,4}}"), "[[1,2],[3,4]]");
    assert_eq!(arr(TypeKind::Int, "[0:1]={1,2}"), "[1,2]");
    assert_eq!(arr(TypeKind::Int, "[-2:-1][1:1]={{1},{2}}"), "[[1],[2]]");
    assert_eq!(
        arr(TypeKind::Int, "{-9223372036854775808}"),
        "[-9223372036854775808]"
    );
    assert_eq!(
        arr(TypeKind::Text, r#"{"a b","c\"d",NULL,"NULL",null,"","\\"}"#),
        r#"["a b","c\"d",null,"NULL",null,"","\\"]"#
    );
    assert_eq!(arr(TypeKind::Text, "{ab,☃,𝄞x}"), r#"["ab","☃","𝄞x"]"#);
    assert_eq!(arr(TypeKind::Bool, "{t,f,NULL}"), "[true,false,null]");
    assert_eq!(
        arr(TypeKind::Float, "{1.5,-0,NaN,Infinity,-Infinity,1e+308}"),
        r#"[1.5,-0.0,"NaN","Infinity","-Infinity",1e+308]"#
    );
    assert_eq!(
        arr(TypeKind::Numeric, "{1.50,NaN,-3}"),
        r#"["1.50","NaN","-3"]"#
    );
    assert_eq!(
        arr(
            TypeKind::Timestamptz,
            r#"{"2024-05-01 12:00:00.123+00","0044-03-15 00:00:00+00 BC",infinity}"#
        ),
        r#"["2024-05-01T12:00:00.123Z","-0043-03-15T00:00:00Z","infinity"]"#
    );
    assert_eq!(
        arr(TypeKind::Date, r#"{2024-05-01,"0001-01-01 BC"}"#),
        r#"["2024-05-01","0000-01-01"]"#
    );
    assert_eq!(
        arr(TypeKind::Bytea, r#"{"\\x","\\x01FF",NULL}"#),
        r#"["\\x","\\x01ff",null]"#
    );
    assert_eq!(
        arr(TypeKind::Json, r#"{"{\"a\": 1}","[1, 2]",null}"#),
        r#"["{\"a\": 1}","[1, 2]",null]"#
    );
    assert_eq!(
        arr(TypeKind::Uuid, "{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}"),
        r#"["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]"#
    );
    // Unquoted elements: surrounding spaces are trimmed, escapes kept.
    assert_eq!(
        arr(TypeKind::Text, r"{ a b , \NULL,x\ }"),
        r#"["a b","NULL","x "]"#
    );
}

#[test]
fn malformed_arrays_are_errors() {
    for bad in [
        "",
        "{",
        "}",
        "1,2",
        "{1,2",
        "{1,,2}",
        "{1,2}x",
        "{\"a}",
        "{a\"b}",
        "[1:2]{1,2}",
        "[x]={1}",
        "{1,{2}",
        "{\\",
    ] {
        fails(TypeKind::Array(Box::new(TypeKind::Text)), bad);
    }
    fails(TypeKind::Array(Box::new(TypeKind::Int)), "{1,x}");
    fails(TypeKind::Array(Box::new(TypeKind::Bool)), "{yes}");
    let deep = format!("{}{}", "{".repeat(10_000), "}".repeat(10_000));
    fails(TypeKind::Array(Box::new(TypeKind::Int)), &deep);
}

#[test]
fn errors_quote_a_bounded_input() {
    let long = "é".repeat(10_000);
    let err = to_value(&TypeKind::Int, &long).unwrap_err();
    assert!(err.text.len() < 300);
    assert!(err.to_string().contains("Int"));
}

/// A nested text array: `None` is NULL.
#[derive(Clone, Debug)]
enum Tree {
    Leaf(Option<String>),
    List(Vec<Tree>),
}

/// Renders an element the way `array_out` does: quoted when empty, equal to
/// NULL, or holding a brace, comma, quote, backslash or white space.
fn render_element(s: &str) -> String {
    let needs_quotes = s.is_empty()
        || s.eq_ignore_ascii_case("NULL")
        || s.chars().any(|c| {
            matches!(
                c,
                '{' | '}' | ',' | '"' | '\\' | ' ' | '\t' | '\n' | '\r' | '\u{b}' | '\u{c}'
            )
        });
    if !needs_quotes {
        return s.to_string();
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn render(tree: &Tree) -> String {
    match tree {
        Tree::Leaf(None) => "NULL".into(),
        Tree::Leaf(Some(s)) => render_element(s),
        Tree::List(items) => format!(
            "{{{}}}",
            items.iter().map(render).collect::<Vec<_>>().join(",")
        ),
    }
}

fn to_json(tree: &Tree) -> serde_json::Value {
    match tree {
        Tree::Leaf(None) => serde_json::Value::Null,
        Tree::Leaf(Some(s)) => serde_json::Value::String(s.clone()),
        Tree::List(items) => serde_json::Value::Array(items.iter().map(to_json).collect()),
    }
}

fn tree() -> impl Strategy<Value = Tree> {
    let leaf = prop_oneof![
        1 => Just(Tree::Leaf(None)),
        1 => prop_oneof![Just("NULL".to_string()), Just("null".to_string()), Just(String::new())]
            .prop_map(|s| Tree::Leaf(Some(s))),
        6 => any::<String>()
            .prop_filter("Postgres text has no NUL", |s| !s.contains('\0'))
            .prop_map(|s| Tree::Leaf(Some(s))),
        4 => "[a-z{}\",\\\\ ]{0,6}".prop_map(|s| Tree::Leaf(Some(s))),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop::collection::vec(inner, 0..6).prop_map(Tree::List)
    })
}

proptest! {
    #[test]
    fn text_arrays_round_trip(items in prop::collection::vec(tree(), 0..6)) {
        let top = Tree::List(items);
        let literal = render(&top);
        let got = arr(TypeKind::Text, &literal);
        let parsed: serde_json::Value = serde_json::from_str(&got).unwrap();
        prop_assert_eq!(parsed, to_json(&top));
    }

    #[test]
    fn garbage_never_panics(s in any::<String>()) {
        for kind in [
            TypeKind::Timestamptz,
            TypeKind::Date,
            TypeKind::Bytea,
            TypeKind::Float,
            TypeKind::Array(Box::new(TypeKind::Timestamptz)),
        ] {
            let _ = to_value(&kind, &s);
        }
    }
}
