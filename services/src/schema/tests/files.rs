//! Reading schema files: syntax, keys, names, and `where` parsing, with
//! exact positions.

use super::{load_errors, write_dir};
use crate::schema::expr::ExprKind;
use crate::schema::load_dir;

#[test]
fn a_valid_file_is_read_in_order() {
    let dir = write_dir(&[
        (
            "b.toml",
            "[shapes.zeta]\ntable = \"todos\"\n\n[shapes.alpha]\ntable = \"app.lists\"\ncolumns = [\"id\"]\ndefault = false\n",
        ),
        (
            "a.toml",
            "# comment\n[shapes.mine]\ntable = \"todos\"\nwhere = \"owner = auth.sub\"\n",
        ),
        ("notes.txt", "not a schema"),
    ]);
    let source = load_dir(dir.path()).expect("valid");
    let names: Vec<&str> = source.shapes.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["mine", "zeta", "alpha"]);
    assert_eq!(
        source.tables(),
        [
            ("public".to_string(), "todos".to_string()),
            ("app".to_string(), "lists".to_string())
        ]
    );
    assert_eq!(source.files().len(), 2);
    assert!(source.files()[0].ends_with("a.toml"));
    let alpha = &source.shapes[2];
    assert!(!alpha.default);
    assert_eq!(alpha.columns.as_ref().map(|c| c.value.len()), Some(1));
    assert!(source.shapes[0].default);
    let filter = source.shapes[0].filter.as_ref().expect("where");
    assert!(matches!(filter.kind, ExprKind::Cmp(..)));
}

#[test]
fn toml_syntax_errors_have_positions() {
    assert_eq!(
        load_errors(&[("a.toml", "[shapes.x]\ntable = \n")]),
        ["a.toml:2:9: TOML syntax error: string values must be quoted, expected literal string"]
    );
}

#[test]
fn unknown_keys_suggest_the_right_one() {
    assert_eq!(
        load_errors(&[(
            "a.toml",
            "[shapes.x]\ntable = \"t\"\nwher = \"a = 1\"\n\n[tablez.t]\nx = 1\n"
        )]),
        [
            "a.toml:3:1: unknown key `wher` in shape `x`; did you mean `where`? (a shape has: table, columns, where, default)",
            "a.toml:5:2: unknown top-level key `tablez`: a schema file declares shapes as `[shapes.<name>]` tables and write rules as `[tables.<table>]` tables; did you mean `tables`?",
        ]
    );
}

#[test]
fn values_must_have_the_right_type() {
    assert_eq!(
        load_errors(&[(
            "a.toml",
            "[shapes.x]\ntable = 1\ncolumns = \"id\"\nwhere = true\ndefault = \"yes\"\n\n[shapes.y]\ntable = \"a.b.c\"\ncolumns = [\"id\", 2]\n"
        )]),
        [
            "a.toml:2:9: `table` must be a string: `table = \"todos\"`",
            "a.toml:3:11: `columns` must be an array of column names",
            "a.toml:4:9: `where` must be a string holding an SQL boolean expression",
            "a.toml:5:11: `default` must be `true` or `false`",
            "a.toml:8:9: `table` must be `\"table\"` or `\"schema.table\"`",
            "a.toml:9:18: a column name must be a string",
        ]
    );
}

#[test]
fn shape_names_are_checked_and_unique_across_files() {
    assert_eq!(
        load_errors(&[
            ("a.toml", "[shapes.todos]\ntable = \"t\"\n"),
            (
                "b.toml",
                "[shapes.Bad-Name]\ntable = \"t\"\n\n[shapes.todos]\ntable = \"u\"\n\n[shapes.empty]\n"
            ),
        ]),
        [
            "b.toml:1:9: invalid shape name `Bad-Name`: use lower-case letters, digits and `_`, starting with a letter or `_`",
            "b.toml:4:9: shape `todos` is declared twice: first at a.toml:1:9",
            "b.toml:7:9: shape `empty` has no `table`: add `table = \"<table>\"`",
        ]
    );
}

#[test]
fn where_syntax_errors_point_into_the_clause() {
    // A literal string maps positions exactly, across lines.
    assert_eq!(
        load_errors(&[(
            "a.toml",
            "[shapes.x]\ntable = \"t\"\nwhere = '''\nowner = auth.sub\n  AND done = )'''\n"
        )]),
        ["a.toml:5:14: syntax error: Expected: an expression, found: )"]
    );
    // Trailing tokens.
    assert_eq!(
        load_errors(&[("a.toml", "[shapes.x]\ntable = \"t\"\nwhere = \"a = 1 b\"\n")]),
        ["a.toml:3:16: unexpected `b` after the end of the expression"]
    );
    // A basic string with escapes maps to the start of the value.
    assert_eq!(
        load_errors(&[(
            "a.toml",
            "[shapes.x]\ntable = \"t\"\nwhere = \"a = \\\"x\\\" b\"\n"
        )]),
        ["a.toml:3:9: unexpected `b` after the end of the expression"]
    );
    assert_eq!(
        load_errors(&[("a.toml", "[shapes.x]\ntable = \"t\"\nwhere = \"  \"\n")]),
        ["a.toml:3:10: the `where` clause is empty"]
    );
}

#[test]
fn unsupported_sql_is_named() {
    assert_eq!(
        load_errors(&[(
            "a.toml",
            "[shapes.x]\ntable = \"t\"\nwhere = '''lower(a) = $1 OR a + 1 > 2 OR a IN (SELECT 1) OR CASE WHEN a THEN b END OR a::numeric(10,2) = 1 OR a SIMILAR TO 'x' '''\n"
        )]),
        [
            "a.toml:3:12: the function call `lower(…)` is not supported in a shape filter",
            "a.toml:3:23: the parameter `$1` (use `auth.<claim>` for token values) is not supported in a shape filter",
            "a.toml:3:29: the operator `+` is not supported in a shape filter",
            "a.toml:3:48: a subquery must read one table: write `column IN (SELECT column FROM table WHERE …)`",
            "a.toml:3:61: CASE is not supported in a shape filter",
            "a.toml:3:87: type modifiers in `NUMERIC(10,2)` are not supported; cast to the plain type",
            "a.toml:3:111: SIMILAR TO is not supported in a shape filter",
        ]
    );
}

#[test]
fn an_empty_directory_is_an_error() {
    let dir = write_dir(&[("readme.md", "")]);
    let err = load_dir(dir.path()).expect_err("no files");
    assert_eq!(err.0.len(), 1);
    assert!(
        err.to_string()
            .ends_with(": no schema files (`*.toml`) in this directory"),
        "{err}"
    );
}

#[test]
fn expressions_parse_to_the_subset() {
    let dir = write_dir(&[(
        "a.toml",
        "[shapes.x]\ntable = \"t\"\nwhere = '''(t.\"Owner\" = auth.\"Sub\" OR auth.app.org = org) AND NOT x BETWEEN -5 AND 1.5e3 AND s NOT ILIKE 'a%' ESCAPE '!' AND d > DATE '2024-01-01' AND y IS NOT UNKNOWN'''\n",
    )]);
    let source = load_dir(dir.path()).expect("valid");
    let filter = source.shapes[0].filter.as_ref().expect("where");
    let mut claims = Vec::new();
    let mut columns = Vec::new();
    let mut numbers = Vec::new();
    filter.visit(&mut |e| match &e.kind {
        ExprKind::Claim(p) => claims.push(p.join(".")),
        ExprKind::Column { qualifier, name } => {
            columns.push(format!("{}|{name}", qualifier.join(".")))
        }
        ExprKind::Number(n) => numbers.push(n.clone()),
        _ => {}
    });
    assert_eq!(claims, ["Sub", "app.org"]);
    assert_eq!(columns, ["t|Owner", "|org", "|x", "|s", "|d", "|y"]);
    assert_eq!(numbers, ["-5", "1.5e3"]);
}
