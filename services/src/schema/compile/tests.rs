//! Subqueries in shape filters: memberships, hops, request parameters and
//! what is refused, against a hand-built catalog.

use serde_json::json;

use super::super::tests::{catalog, col, compile_files, table};
use super::{CompiledSchema, KeySource};
use crate::schema::catalog::Catalog;
use crate::store::TextRow;
use outpost_proto::v1::ShapeRequest;

fn app() -> Catalog {
    catalog(vec![
        table(
            "lists",
            vec![
                col("id", "int8"),
                col("owner", "text"),
                col("name", "text"),
                col("archived", "bool"),
            ],
            &["id"],
        ),
        table(
            "list_members",
            vec![
                col("list_id", "int8"),
                col("user_id", "text"),
                col("role", "text"),
            ],
            &["list_id", "user_id"],
        ),
        table(
            "todos",
            vec![
                col("id", "int8"),
                col("list_id", "int8"),
                col("owner", "text"),
                col("title", "text"),
                col("done", "bool"),
                col("price", "numeric"),
            ],
            &["id"],
        ),
        table(
            "comments",
            vec![
                col("id", "int8"),
                col("todo_id", "int8"),
                col("body", "text"),
            ],
            &["id"],
        ),
        table("nokey", vec![col("a", "int8"), col("u", "text")], &[]),
    ])
}

const MEMBER: &str = "SELECT list_id FROM list_members WHERE user_id = auth.sub";

fn shape(name: &str, table: &str, clause: &str) -> String {
    format!("[shapes.{name}]\ntable = \"{table}\"\nwhere = '''{clause}'''\n")
}

fn compiled(text: &str) -> CompiledSchema {
    compile_files(&[("a.toml", text)], &app()).unwrap_or_else(|e| panic!("{e:#?}"))
}

fn errors(text: &str) -> Vec<String> {
    match compile_files(&[("a.toml", text)], &app()) {
        Ok(_) => panic!("compiled: {text}"),
        Err(e) => e,
    }
}

/// The single error of one shape on `table`.
fn error_of(table: &str, clause: &str) -> String {
    let mut e = errors(&shape("s", table, clause));
    assert_eq!(e.len(), 1, "{clause}: {e:#?}");
    e.remove(0)
}

fn row(values: &[Option<&str>]) -> TextRow {
    TextRow(values.iter().map(|v| v.map(str::to_string)).collect())
}

fn claims(sub: &str) -> serde_json::Map<String, serde_json::Value> {
    match json!({ "sub": sub }) {
        serde_json::Value::Object(m) => m,
        _ => unreachable!(),
    }
}

#[test]
fn owner_or_member_lists() {
    let s = compiled(&shape(
        "lists",
        "lists",
        &format!("owner = auth.sub OR id IN ({MEMBER})"),
    ));
    let def = &s.shapes[0].buckets;
    assert_eq!(def.len(), 2);
    assert_eq!(s.memberships.len(), 1);
    let members = s.table_index("public", "list_members").expect("mirrored");
    assert!(!s.tables[members].sent, "list_members is read, not sent");
    assert_eq!(s.tables[members].synced, [0, 1], "its primary key");
    assert!(s.tables[0].sent);
    let mut out = Vec::new();
    s.route(
        0,
        &[Some("7"), Some("alice"), Some("x"), Some("f")],
        &mut out,
    );
    assert_eq!(out, [r#"lists#0["alice"]"#, "lists#1[7]"]);
    let selectors = s.user_buckets(&[], &claims("bob")).expect("selectors");
    assert_eq!(
        selectors,
        [r#"lists#0["bob"]"#, r#"@0:8:1:lists#1[]["bob"]"#]
    );
    assert_eq!(s.selector_keys(&selectors), [(0, r#"["bob"]"#.to_string())]);
    let names = s
        .expand_selectors(&selectors, &mut |m, user| {
            assert_eq!((m, user), (0, r#"["bob"]"#));
            Ok::<_, ()>(vec!["7".into(), "9".into()])
        })
        .expect("expand");
    assert_eq!(names, [r#"lists#0["bob"]"#, "lists#1[7]", "lists#1[9]"]);
    // The membership index entries of list_members rows.
    let entries = s.member_entries(members, &[Some("7"), Some("bob"), None]);
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (
            entries[0].membership,
            entries[0].user_key.as_str(),
            entries[0].key.as_str()
        ),
        (0, r#"["bob"]"#, "7")
    );
    assert!(
        s.member_entries(members, &[Some("7"), None, None])
            .is_empty()
    );
}

#[test]
fn branches_with_one_row_side_share_a_definition() {
    let s = compiled(&shape(
        "todos",
        "todos",
        &format!(
            "NOT done AND (list_id IN (SELECT id FROM lists WHERE owner = auth.sub AND NOT archived) OR list_id IN ({MEMBER}))"
        ),
    ));
    let defs = &s.shapes[0].buckets;
    assert_eq!(defs.len(), 1, "{defs:#?}");
    assert_eq!(
        defs[0].grants,
        [
            vec![KeySource::Membership(0)],
            vec![KeySource::Membership(1)]
        ]
    );
    assert_eq!(s.memberships.len(), 2);
    let lists = s.table_index("public", "lists").expect("lists");
    // A list row gives its owner a key only while it is not archived.
    let owned = s.member_entries(lists, &[Some("3"), Some("ann"), None, Some("f")]);
    assert_eq!(owned.len(), 1);
    assert_eq!(
        (owned[0].user_key.as_str(), owned[0].key.as_str()),
        (r#"["ann"]"#, "3")
    );
    assert!(
        s.member_entries(lists, &[Some("3"), Some("ann"), None, Some("t")])
            .is_empty()
    );
    let mut out = Vec::new();
    let todo = [
        Some("1"),
        Some("3"),
        Some("ann"),
        Some("t"),
        Some("f"),
        None,
    ];
    s.route(0, &todo, &mut out);
    assert_eq!(out, ["todos#0[3]"]);
    let selectors = s.user_buckets(&[], &claims("ann")).expect("selectors");
    assert_eq!(selectors.len(), 2);
}

/// A parent lookup over fixed rows: `(table, key) → row`.
fn parents(
    rows: Vec<(usize, &'static str, TextRow)>,
) -> impl FnMut(usize, &str) -> Result<Option<TextRow>, ()> {
    move |t, key| {
        Ok(rows
            .iter()
            .find(|(rt, k, _)| *rt == t && *k == key)
            .map(|(_, _, r)| r.clone()))
    }
}

#[test]
fn comments_reach_their_list_through_todos_and_lists() {
    let clause = format!(
        "todo_id IN (SELECT id FROM todos WHERE NOT done AND list_id IN (SELECT id FROM lists l WHERE NOT l.archived AND l.id IN ({MEMBER})))"
    );
    let s = compiled(&shape("comments", "comments", &clause));
    let def = &s.shapes[0].buckets[0];
    assert_eq!(def.params[0].hops.len(), 2);
    assert_eq!(s.max_hops(), 2);
    let (todos, lists) = (
        s.table_index("public", "todos").expect("todos"),
        s.table_index("public", "lists").expect("lists"),
    );
    assert!(!s.tables[todos].sent && !s.tables[lists].sent);
    let comment = [Some("100"), Some("5"), Some("hi")];
    let todo = |done: &str| row(&[Some("5"), Some("7"), None, None, Some(done), None]);
    let list = |archived: &str| row(&[Some("7"), None, None, Some(archived)]);
    let route = |rows| {
        let mut out = Vec::new();
        s.route_with(0, &comment, &mut parents(rows), &mut out)
            .expect("route");
        out
    };
    assert_eq!(
        route(vec![(todos, "[5]", todo("f")), (lists, "[7]", list("f"))]),
        ["comments#0[7]"],
        "keyed by the list, not the todo"
    );
    assert!(route(vec![(todos, "[5]", todo("t")), (lists, "[7]", list("f"))]).is_empty());
    assert!(route(vec![(todos, "[5]", todo("f")), (lists, "[7]", list("t"))]).is_empty());
    assert!(
        route(vec![(lists, "[7]", list("f"))]).is_empty(),
        "no parent"
    );
    // Without a parent lookup, hops route nowhere.
    let mut out = Vec::new();
    s.route(0, &comment, &mut out);
    assert!(out.is_empty());
    // The link index: comments reach todos, todos reach lists.
    let links = s.link_entries(0, &comment);
    assert_eq!(links.len(), 1);
    assert_eq!(links[0].parent, "[5]");
    assert_eq!(s.source_table(links[0].source), Some(0));
    assert_eq!(s.child_sources(todos), [links[0].source]);
    let todo_links = s.link_entries(todos, &todo("f").as_refs());
    assert_eq!(todo_links.len(), 1);
    assert_eq!(todo_links[0].parent, "[7]");
    assert!(s.is_parent(todos) && s.is_parent(lists) && !s.is_parent(0));
    assert_ne!(
        s.parent_signature(todos, &todo("f").as_refs()),
        s.parent_signature(todos, &todo("t").as_refs())
    );
    assert_eq!(
        s.parent_signature(todos, &todo("f").as_refs()),
        s.parent_signature(
            todos,
            &row(&[
                Some("5"),
                Some("7"),
                Some("x"),
                Some("y"),
                Some("f"),
                Some("1")
            ])
            .as_refs()
        ),
        "columns the hops do not read do not matter"
    );
}

#[test]
fn request_parameters_narrow() {
    let text = format!(
        "{}default = false\n",
        shape(
            "list_todos",
            "todos",
            &format!("list_id = param.list_id AND list_id IN ({MEMBER})")
        )
    );
    let s = compiled(&text);
    assert_eq!(
        s.shapes[0].buckets[0].client_params,
        [(0, "list_id".to_string())]
    );
    let names = vec!["list_todos#0[1]".to_string(), "list_todos#0[2]".to_string()];
    let request = |params: &[(&str, &str)]| ShapeRequest {
        name: "list_todos".into(),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    assert_eq!(
        s.narrow(names.clone(), &[request(&[("list_id", "2")])])
            .expect("narrow"),
        ["list_todos#0[2]"]
    );
    assert_eq!(
        s.narrow(
            names.clone(),
            &[request(&[("list_id", "2")]), request(&[("list_id", " 1 ")])]
        )
        .expect("narrow"),
        names
    );
    assert!(
        s.narrow(names.clone(), &[request(&[("list_id", "3")])])
            .expect("narrow")
            .is_empty(),
        "a parameter cannot widen what the token allows"
    );
    let err = |params: &[(&str, &str)]| {
        s.narrow(Vec::new(), &[request(params)])
            .expect_err("refused")
            .to_string()
    };
    assert_eq!(
        err(&[]),
        "shape `list_todos` needs the parameter `list_id` (pass it in the shape request's params)"
    );
    assert_eq!(
        err(&[("list_id", "x")]),
        "parameter `list_id` of shape `list_todos`: \"x\" is not a valid int8"
    );
    assert_eq!(
        err(&[("list_id", "1"), ("other", "2")]),
        "shape `list_todos` has no parameter `other`; its parameters: list_id"
    );
    // As part of the default set it would never get its parameter.
    let e = errors(&shape(
        "list_todos",
        "todos",
        &format!("list_id = param.list_id AND list_id IN ({MEMBER})"),
    ));
    assert_eq!(e.len(), 1);
    assert!(e[0].ends_with("add `default = false`"), "{e:?}");
    // A parameter on a column the token does not key is refused.
    let e = error_of(
        "todos",
        &format!("title = param.t AND list_id IN ({MEMBER})"),
    );
    assert!(
        e.contains("`param.t` narrows `title`, which an alternative of shape `s` does not key"),
        "{e}"
    );
}

#[test]
fn refusals_say_why_and_what_to_write() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "todos",
            "list_id IN (SELECT list_id FROM list_members WHERE user_id = todos.owner)",
            "`todos.owner` refers to an enclosing query: correlated subqueries are not supported",
        ),
        (
            "todos",
            "list_id IN (SELECT list_id FROM list_members WHERE user_id = owner)",
            "unknown column `owner` in table `list_members` (a subquery may only use columns of its own table: correlated subqueries are not supported)",
        ),
        (
            "comments",
            &format!("todo_id IN (SELECT list_id FROM todos WHERE list_id IN ({MEMBER}))"),
            "this subquery selects `list_id` from `todos` and continues through another subquery, so it must select its primary key `id`",
        ),
        (
            "todos",
            "list_id IN (SELECT max(list_id) FROM list_members WHERE user_id = auth.sub)",
            "the function or aggregate `max(…)` is not supported in a subquery of a shape filter; write `column IN (SELECT column FROM table WHERE …)`",
        ),
        (
            "todos",
            "list_id IN (SELECT list_id FROM list_members WHERE user_id = auth.sub GROUP BY list_id)",
            "GROUP BY / HAVING (aggregates cannot decide which rows a user gets) is not supported",
        ),
        (
            "todos",
            &format!("list_id NOT IN ({MEMBER})"),
            "NOT IN (SELECT …) is not supported in a shape filter",
        ),
        (
            "todos",
            "list_id IN (SELECT id FROM lists WHERE archived)",
            "this subquery on `lists` names no user: it must end in `… = auth.<claim>`",
        ),
        (
            "todos",
            "EXISTS (SELECT 1 FROM list_members WHERE user_id = auth.sub)",
            "EXISTS (…) (write `column IN (SELECT column FROM table WHERE …)`) is not supported",
        ),
        (
            "todos",
            "list_id IN (SELECT m.list_id FROM list_members m JOIN lists l ON l.id = m.list_id WHERE m.user_id = auth.sub)",
            "JOIN (chain subqueries instead",
        ),
        (
            "todos",
            &format!("list_id IN ({MEMBER}) AND id IN (SELECT a FROM nokey WHERE u = auth.sub)"),
            "ANDs 2 subqueries; each alternative may key its rows by at most one `IN (SELECT …)`",
        ),
        (
            "todos",
            &format!("NOT (list_id IN ({MEMBER}))"),
            "this subquery is under NOT: a subquery may only appear as `column IN (SELECT …)`",
        ),
        (
            "todos",
            "owner IN (SELECT list_id FROM list_members WHERE user_id = auth.sub)",
            "`owner` (text) cannot be matched against `list_members.list_id` (int8)",
        ),
        (
            "todos",
            "price IN (SELECT list_id FROM list_members WHERE user_id = auth.sub)",
            "`price` (numeric) cannot be matched against `list_members.list_id` (int8)",
        ),
        (
            "todos",
            "list_id IN (SELECT list_id FROM list_members WHERE user_id = auth.sub AND list_id IN (SELECT id FROM lists WHERE owner = auth.sub))",
            "must hold exactly one of `column = auth.<claim>` or `column IN (SELECT …)`",
        ),
        (
            "todos",
            "list_id IN (SELECT list_id FROM list_membrs WHERE user_id = auth.sub)",
            "unknown table `list_membrs` in schema `public`; did you mean `list_members`?",
        ),
        (
            "todos",
            "list_id IN (SELECT a FROM nokey WHERE u = auth.sub)",
            "table `nokey` has no primary key; Outpost mirrors the tables that subqueries read",
        ),
        (
            "todos",
            "list_id IN (SELECT list_id FROM list_members WHERE user_id = auth.sub LIMIT 5)",
            "LIMIT / FETCH is not supported in a subquery",
        ),
        (
            "todos",
            "list_id IN (SELECT list_id FROM list_members WHERE user_id = param.u)",
            "`param.u` is inside a subquery",
        ),
    ];
    for (table, clause, expected) in cases {
        let e = error_of(table, clause);
        assert!(
            e.contains(expected),
            "{clause}\n  got: {e}\n  want: {expected}"
        );
    }
}

#[test]
fn chains_are_bounded() {
    // comments → todos → lists → lists → lists → lists: five hops.
    let mut inner = format!("id IN ({MEMBER})");
    for _ in 0..4 {
        inner = format!("id IN (SELECT id FROM lists WHERE {inner})");
    }
    let clause = format!(
        "todo_id IN (SELECT id FROM todos WHERE list_id IN (SELECT id FROM lists WHERE {inner}))"
    );
    let e = error_of("comments", &clause);
    assert!(e.contains("subqueries nest too deep"), "{e}");
}

#[test]
fn positions_point_into_the_subquery() {
    let e = error_of(
        "todos",
        "list_id IN (SELECT list_id FROM list_membrs WHERE user_id = auth.sub)",
    );
    // The clause starts at 3:12; the table name is 32 characters in.
    assert!(
        e.starts_with("a.toml:3:44: unknown table `list_membrs`"),
        "{e}"
    );
}

#[test]
fn versions_follow_memberships() {
    let v = |clause: &str| compiled(&shape("s", "todos", clause)).version;
    let base = v(&format!("list_id IN ({MEMBER})"));
    assert_eq!(base, v(&format!("list_id IN ( {MEMBER} )")));
    assert_ne!(
        base,
        v(
            "list_id IN (SELECT list_id FROM list_members WHERE user_id = auth.sub AND role = 'admin')"
        )
    );
    assert_ne!(
        base,
        v("list_id IN (SELECT list_id FROM list_members WHERE user_id = auth.email)")
    );
}
