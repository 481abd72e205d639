//! Write rules: reading, checking against a hand-built catalog (exact
//! positions), and evaluating permissions.

use serde_json::json;

use super::{MergeKind, WriteKind, WriteRules, compile_rules};
use crate::auth::Claims;
use crate::pgtypes::TypeKind;
use crate::schema::catalog::{Catalog, CatalogColumn};
use crate::schema::tests::{catalog, col, lines, load_errors, table, write_dir};
use crate::schema::types::SqlType;
use crate::schema::{SchemaSource, load_dir};

const SHAPES: &str = "[shapes.t]\ntable = \"todos\"\n";

/// `todos` with an array column and a numeric one.
fn todos_catalog() -> Catalog {
    let tags = CatalogColumn {
        name: "tags".into(),
        type_oid: 1009,
        type_name: "text[]".into(),
        not_null: false,
        kind: Some(TypeKind::Array(Box::new(TypeKind::Text))),
        sql_type: SqlType::Other("_text".into()),
        collation: None,
    };
    catalog(vec![
        table(
            "todos",
            vec![
                col("id", "int8"),
                col("title", "text"),
                col("done", "bool"),
                col("owner", "text"),
                col("likes", "int4"),
                col("best", "float8"),
                col("meta", "jsonb"),
                col("due", "date"),
                tags,
            ],
            &["id"],
        ),
        table("lists", vec![col("id", "int8")], &["id"]),
    ])
}

fn source(files: &[(&str, &str)]) -> (tempfile::TempDir, SchemaSource) {
    let dir = write_dir(files);
    let source = load_dir(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    (dir, source)
}

fn rules(text: &str) -> Result<WriteRules, Vec<String>> {
    let file = format!("{SHAPES}{text}");
    let (dir, source) = source(&[("a.toml", &file)]);
    compile_rules(&source, &todos_catalog()).map_err(|e| lines(&e, dir.path()))
}

fn rule_errors(text: &str) -> Vec<String> {
    match rules(text) {
        Ok(_) => panic!("no errors for {text}"),
        Err(e) => e,
    }
}

#[test]
fn a_valid_section_is_read() {
    let rules = rules(
        "[tables.todos]\ninsert = \"new.owner = auth.sub\"\n\
         update = \"old.owner = auth.sub AND new.owner = auth.sub\"\n\
         function = \"app.check_todo\"\n\
         [tables.todos.merge]\nlikes = \"counter\"\nbest = \"max\"\ndue = \"min\"\n\
         tags = \"set_union\"\ntitle = \"reject_if_stale\"\n",
    )
    .expect("valid");
    let todos = rules.table("public", "todos").expect("todos");
    assert!(todos.allows(WriteKind::Insert));
    assert!(todos.allows(WriteKind::Update));
    assert!(!todos.allows(WriteKind::Delete));
    assert_eq!(
        todos.function.as_ref().map(|f| f.name.as_str()),
        Some("app.check_todo")
    );
    let kinds: Vec<&str> = todos.merge.iter().map(|m| m.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "lww",
            "reject_if_stale",
            "lww",
            "lww",
            "counter",
            "max",
            "lww",
            "min",
            "set_union"
        ]
    );
    assert_eq!(rules.merge_kind("public", "todos", 4), MergeKind::Counter);
    assert_eq!(rules.merge_kind("public", "lists", 0), MergeKind::Lww);
}

#[test]
fn reading_errors_have_positions() {
    assert_eq!(
        load_errors(&[(
            "a.toml",
            "[tables.todos]\ninsret = \"true\"\nupdate = 5\nfunction = \"f()\"\n\
             [tables.todos.merge]\nlikes = \"countr\"\nbest = 3\n"
        )]),
        [
            "a.toml:2:1: unknown key `insret` in `[tables.todos]`; did you mean `insert`? (write rules have: insert, update, delete, function, merge)",
            "a.toml:3:10: `update` must be a string holding an SQL boolean expression over `old.<column>`, `new.<column>` and `auth.<claim>`",
            "a.toml:4:12: `f()` is not a function name: write `function = \"name\"` or `function = \"schema.name\"`",
            "a.toml:6:9: unknown merge kind `countr`; did you mean `counter`? (one of: lww, counter, max, min, set_union, reject_if_stale)",
            "a.toml:7:8: the merge kind of `best` must be a string, one of: lww, counter, max, min, set_union, reject_if_stale",
        ]
    );
    assert_eq!(
        load_errors(&[("a.toml", "tables = 1\n[shape.x]\ntable = \"t\"\n")]),
        [
            "a.toml:1:10: `tables` must be a table of write rules: `[tables.<table>]`",
            "a.toml:2:2: unknown top-level key `shape`: a schema file declares shapes as `[shapes.<name>]` tables and write rules as `[tables.<table>]` tables; did you mean `shapes`?",
        ]
    );
    assert_eq!(
        load_errors(&[("a.toml", "[tables.app.items]\ninsert = \"true\"\n")]),
        [
            "a.toml:1:13: unknown key `items` in `[tables.app]`; a table outside schema `public` is written `[tables.\"app.items\"]` (write rules have: insert, update, delete, function, merge)",
        ]
    );
}

#[test]
fn rule_syntax_errors_point_into_the_expression() {
    assert_eq!(
        load_errors(&[(
            "a.toml",
            "[tables.todos]\ninsert = \"new.owner = lower(auth.sub)\"\ndelete = \"\"\n"
        )]),
        [
            "a.toml:2:23: the function call `lower(…)` is not supported in a write rule",
            "a.toml:3:10: the `delete` rule is empty: write `delete = \"true\"` to allow every delete",
        ]
    );
}

#[test]
fn merge_kinds_must_fit_their_columns() {
    assert_eq!(
        rule_errors(
            "[tables.todos.merge]\ntitle = \"counter\"\ndone = \"set_union\"\nmeta = \"max\"\n\
             id = \"lww\"\nlikez = \"counter\"\n"
        ),
        [
            "a.toml:4:9: `title` has type text: a counter needs a number column (integer, numeric, real, double precision)",
            "a.toml:5:8: `done` has type bool: set_union needs an array column (e.g. text[])",
            "a.toml:6:8: `meta` has type jsonb, which has no order: max needs a number, text, date, time, uuid, boolean or enum column",
            "a.toml:7:1: `id` is part of the primary key, which identifies the row and never merges",
            "a.toml:8:1: unknown column `likez` in table `todos`; did you mean `likes`?",
        ]
    );
}

#[test]
fn permission_errors_have_positions() {
    assert_eq!(
        rule_errors(
            "[tables.todos]\ninsert = \"owner = auth.sub AND old.id > 0\"\n\
             update = \"new.titel = 'x' AND new.done = 'maybe'\"\n\
             delete = \"new.owner = auth.sub AND todos.owner = auth.sub\"\n"
        ),
        [
            "a.toml:4:11: `owner`: a write rule names columns as `old.owner` (the row before the write) or `new.owner` (the row after it)",
            "a.toml:4:32: an insert has no old row: `old.id` is always NULL here; use `new.id`",
            "a.toml:5:11: unknown column `new.titel` in table `todos`; did you mean `new.title`?",
            "a.toml:5:42: invalid input syntax for type boolean: \"maybe\"",
            "a.toml:6:11: a delete has no new row: `new.owner` is always NULL here; use `old.owner`",
            "a.toml:6:36: `todos.owner`: a write rule names columns as `old.owner` (the row before the write) or `new.owner` (the row after it)",
        ]
    );
}

#[test]
fn sections_need_a_shape_and_are_declared_once() {
    let (dir, source) = source(&[
        (
            "a.toml",
            "[shapes.t]\ntable = \"todos\"\n[tables.todos]\ninsert = \"true\"\n",
        ),
        (
            "b.toml",
            "[tables.todos]\ndelete = \"true\"\n\n[tables.lists]\ninsert = \"true\"\n",
        ),
    ]);
    let errors = compile_rules(&source, &todos_catalog()).expect_err("errors");
    assert_eq!(
        lines(&errors, dir.path()),
        [
            "b.toml:1:9: the write rules of `todos` are declared twice: first at a.toml:3:9",
            "b.toml:4:9: no shape syncs `lists`: clients write only the tables they hold; add a `[shapes.<name>]` with `table = \"lists\"`",
        ]
    );
}

fn claims(value: serde_json::Value) -> Claims {
    match value {
        serde_json::Value::Object(map) => Claims(map),
        _ => panic!("claims must be an object"),
    }
}

/// A `todos` row: id, title, done, owner, likes, best, meta, due, tags.
fn row(owner: Option<&str>, likes: &str) -> Vec<Option<String>> {
    vec![
        Some("1".into()),
        Some("t".into()),
        Some("f".into()),
        owner.map(str::to_string),
        Some(likes.into()),
        None,
        None,
        None,
        Some("{}".into()),
    ]
}

#[test]
fn permissions_are_evaluated_on_old_new_and_claims() {
    let rules = rules(
        "[tables.todos]\ninsert = \"new.owner = auth.sub AND new.likes <= auth.max_likes\"\n\
         update = \"old.owner = auth.sub AND new.owner = auth.sub\"\n\
         delete = \"old.owner = auth.sub OR auth.admin\"\n",
    )
    .expect("valid");
    let todos = rules.table("public", "todos").expect("todos");
    let alice = claims(json!({"sub": "alice", "max_likes": 5}));
    let admin = claims(json!({"sub": "root", "admin": true}));
    let mine = row(Some("alice"), "3");
    let theirs = row(Some("bob"), "3");
    let check = |kind, old: Option<&Vec<Option<String>>>, new: Option<&Vec<Option<String>>>, c| {
        todos.check_permission(
            kind,
            old.map(|r| r.as_slice()),
            new.map(|r| r.as_slice()),
            c,
        )
    };
    assert_eq!(check(WriteKind::Insert, None, Some(&mine), &alice), Ok(()));
    assert!(check(WriteKind::Insert, None, Some(&theirs), &alice).is_err());
    assert!(
        check(
            WriteKind::Insert,
            None,
            Some(&row(Some("alice"), "9")),
            &alice
        )
        .is_err(),
        "the numeric claim compares as a number"
    );
    assert!(check(WriteKind::Insert, None, Some(&row(None, "1")), &alice).is_err());
    assert_eq!(
        check(WriteKind::Update, Some(&mine), Some(&mine), &alice),
        Ok(())
    );
    let handed_over = check(WriteKind::Update, Some(&mine), Some(&theirs), &alice)
        .expect_err("handing a row to another owner");
    assert_eq!(
        handed_over.0,
        "the update rule of `todos` (`old.owner = auth.sub AND new.owner = auth.sub`) is false for this row"
    );
    assert!(check(WriteKind::Update, Some(&mine), Some(&mine), &admin).is_err());
    assert_eq!(
        check(WriteKind::Delete, Some(&theirs), None, &admin),
        Ok(())
    );
    let missing = claims(json!({}));
    let denied = check(WriteKind::Delete, Some(&mine), None, &missing).expect_err("no claims");
    assert!(denied.0.contains("is NULL (not true)"), "{}", denied.0);
    let bad_claim = claims(json!({"sub": "alice", "max_likes": "lots"}));
    let denied =
        check(WriteKind::Insert, None, Some(&mine), &bad_claim).expect_err("claim of another type");
    assert!(
        denied.0.contains("does not apply to this token's claims"),
        "{}",
        denied.0
    );
}

#[test]
fn operations_without_a_rule_are_refused() {
    let rules = rules("[tables.todos]\ninsert = \"true\"\n").expect("valid");
    let todos = rules.table("public", "todos").expect("todos");
    let denied = todos
        .check_permission(
            WriteKind::Delete,
            Some(&row(None, "1")),
            None,
            &claims(json!({})),
        )
        .expect_err("no delete rule");
    assert_eq!(
        denied.0,
        "table `todos` accepts no deletes (its write rules declare no `delete` rule)"
    );
}
