//! Compile errors against a hand-built catalog, with exact positions.

use super::{compile_files, compile_where, todo_catalog};

/// The single error of a `where` on `todos` (the clause starts at 3:12).
fn error_of(clause: &str) -> String {
    match compile_where(clause) {
        Ok(_) => panic!("`{clause}` compiled"),
        Err(mut e) => {
            assert_eq!(e.len(), 1, "{clause}: {e:#?}");
            e.remove(0)
        }
    }
}

#[test]
fn unknown_tables_and_columns() {
    let errors = compile_files(
        &[(
            "a.toml",
            "[shapes.a]\ntable = \"todo\"\n\n[shapes.b]\ntable = \"nope\"\n\n[shapes.c]\ntable = \"app.x\"\n\n[shapes.d]\ntable = \"todos\"\ncolumns = [\"id\", \"titel\", \"search\", \"id\"]\n",
        )],
        &todo_catalog(),
    )
    .expect_err("errors");
    assert_eq!(
        errors,
        [
            "a.toml:2:9: unknown table `todo` in schema `public`; did you mean `todos`?",
            "a.toml:5:9: unknown table `nope` in schema `public` (tables in `public`: todos, lists, nokey)",
            "a.toml:8:9: unknown table `app.x`",
            "a.toml:12:18: unknown column `titel` in table `todos`; did you mean `title`?",
            "a.toml:12:27: column `search` has type tsvector, which Outpost cannot sync; leave it out of `columns = [...]`",
            "a.toml:12:37: column `id` is listed twice",
        ]
    );
}

#[test]
fn tables_need_a_primary_key() {
    let errors = compile_files(
        &[("a.toml", "[shapes.a]\ntable = \"nokey\"\n")],
        &todo_catalog(),
    )
    .expect_err("no key");
    assert_eq!(
        errors,
        [
            "a.toml:2:9: table `nokey` has no primary key; Outpost identifies rows by their primary key"
        ]
    );
}

#[test]
fn shapes_of_one_table_select_the_same_columns() {
    let errors = compile_files(
        &[
            ("a.toml", "[shapes.a]\ntable = \"lists\"\n"),
            (
                "b.toml",
                "[shapes.b]\ntable = \"lists\"\ncolumns = [\"name\"]\n\n[shapes.c]\ntable = \"lists\"\ncolumns = [\"id\", \"public\", \"name\"]\n",
            ),
        ],
        &todo_catalog(),
    )
    .expect_err("different columns");
    assert_eq!(
        errors,
        [
            "b.toml:3:11: shapes `a` and `b` both sync table `lists` but select different columns (`a`: id, name, public; `b`: id, name); all shapes of one table must select the same columns"
        ]
    );
}

#[test]
fn default_columns_skip_unsupported_types_and_keys_are_added() {
    let schema = compile_files(
        &[(
            "a.toml",
            "[shapes.a]\ntable = \"todos\"\n\n[shapes.b]\ntable = \"lists\"\ncolumns = [\"name\"]\n",
        )],
        &super::catalog(vec![
            super::table(
                "todos",
                vec![super::col("id", "int8"), super::col("search", "tsvector"), super::col("title", "text")],
                &["id"],
            ),
            super::table("lists", vec![super::col("id", "int8"), super::col("name", "text")], &["id"]),
        ]),
    )
    .expect("compiles");
    assert_eq!(schema.tables[0].synced, [0, 2]);
    assert_eq!(schema.tables[1].synced, [0, 1]);
    assert_eq!(schema.tables[0].client_name, "todos");
}

#[test]
fn type_errors_follow_postgres() {
    assert_eq!(
        error_of("'abc' = list_id"),
        "a.toml:3:12: invalid input syntax for type bigint: \"abc\""
    );
    assert_eq!(
        error_of("title = 5"),
        "a.toml:3:12: operator does not exist: text = integer (compare values of the same kind, or cast one side, e.g. `x::text`)"
    );
    assert_eq!(
        error_of("title"),
        "a.toml:3:12: argument of WHERE must be type boolean, not type text"
    );
    assert_eq!(
        error_of("done AND list_id"),
        "a.toml:3:21: argument of AND must be type boolean, not type bigint"
    );
    assert_eq!(
        error_of("created_at > '2024-13-01'"),
        "a.toml:3:25: date/time field value out of range: `2024-13-01`"
    );
    assert_eq!(
        error_of("assignee::int4 = 1"),
        "a.toml:3:12: cannot cast type uuid to integer"
    );
    assert_eq!(
        error_of("meta = '{}'"),
        "a.toml:3:12: column `meta` has type jsonb, which a shape filter cannot compare; only IS [NOT] NULL applies to it"
    );
    assert_eq!(
        error_of("list_id::money = 1"),
        "a.toml:3:12: casts to `money` are not supported; a shape filter can cast to boolean, smallint, integer, bigint, real, double precision, numeric, text, varchar, uuid, timestamptz, timestamp, date, or an enum type of the table"
    );
    assert_eq!(
        error_of("title LIKE owner"),
        "a.toml:3:23: the pattern of LIKE must be a string literal"
    );
    assert_eq!(
        error_of("title LIKE 'a\\'"),
        "a.toml:3:23: LIKE pattern must not end with escape character"
    );
    assert_eq!(
        error_of("list_id LIKE '1%'"),
        "a.toml:3:12: operator does not exist: bigint LIKE text (cast to text first: `x::text LIKE …`)"
    );
    assert_eq!(
        error_of("ownr = 'x'"),
        "a.toml:3:12: unknown column `ownr` in table `todos`; did you mean `owner`?"
    );
    assert_eq!(
        error_of("lists.id = 1"),
        "a.toml:3:12: `lists.id` does not name a column of `todos`: a shape filter can only use columns of its own table"
    );
    // What is fine: qualified names, IS NULL on any type, untyped literals.
    for ok in [
        "todos.title = 'x' AND public.todos.done",
        "meta IS NULL AND search IS NOT NULL",
        "'1' = '1' AND list_id IN ('1', 2, 3.5) AND score > 1",
        "created_at BETWEEN '2024-01-01' AND '2024-01-01 10:00+02'",
    ] {
        compile_where(ok).unwrap_or_else(|e| panic!("`{ok}`: {e:?}"));
    }
}

#[test]
fn claims_only_in_parameter_equalities() {
    let rule = "a token claim may only appear as";
    for (clause, at, reason) in [
        ("NOT (owner = auth.sub)", "3:25", "`auth.sub` is under NOT"),
        (
            "list_id < auth.list",
            "3:22",
            "`auth.list` is compared with `<`",
        ),
        (
            "auth.sub = 'x'",
            "3:12",
            "`auth.sub` is compared with a constant, not with a plain column",
        ),
        (
            "auth.a = auth.b",
            "3:12",
            "`auth.a` is compared with another token claim",
        ),
        (
            "owner::text = auth.sub",
            "3:26",
            "`auth.sub` is compared with an expression",
        ),
        ("auth.admin", "3:12", "`auth.admin` is used as a condition"),
        ("auth.x IS NULL", "3:12", "`auth.x` is tested with IS"),
    ] {
        let e = compile_where(clause).expect_err(clause).remove(0);
        assert!(
            e.starts_with(&format!("a.toml:{at}: {reason}")),
            "{clause}: {e}"
        );
        assert!(e.contains(rule), "{e}");
    }
    let e = compile_where("owner IN (auth.sub, auth.email)")
        .expect_err("refused")
        .remove(0);
    assert!(
        e.ends_with("write `(owner = auth.sub OR owner = auth.email)` instead"),
        "{e}"
    );
    let e = error_of("score = auth.s");
    assert_eq!(
        e,
        "a.toml:3:12: column `score` has type float8, which cannot be matched against a token claim (parameters must be of a type with exact equality: integer, text, uuid, boolean, numeric, date, timestamp or enum)"
    );
}

#[test]
fn too_many_branches() {
    let clause = (0..5)
        .map(|i| format!("(owner = auth.a{i} OR list_id = auth.b{i})"))
        .collect::<Vec<_>>()
        .join(" AND ");
    assert_eq!(
        error_of(&clause),
        "a.toml:3:13: shape `s` needs 32 bucket definitions (one per alternative of its OR-ed token claims); at most 16 are allowed: split the shape"
    );
}

#[test]
fn text_ordering_needs_a_byte_order_collation() {
    let mut catalog = todo_catalog();
    let en = std::sync::Arc::new(crate::schema::types::Collation {
        name: "en_US.UTF-8".into(),
        byte_order: false,
        deterministic: true,
        fold: crate::schema::types::CaseFold::Simple,
    });
    for c in &mut catalog.tables[0].columns {
        if c.name == "title" {
            c.collation = Some(en.clone());
        }
    }
    catalog.default_collation = Some(en);
    let text = |clause: &str| format!("[shapes.s]\ntable = \"todos\"\nwhere = '''{clause}'''\n");
    let errors = compile_files(&[("a.toml", &text("title >= 'a' OR 'a' < 'b'"))], &catalog)
        .expect_err("refused");
    assert_eq!(
        errors,
        [
            "a.toml:3:12: `>=` on text is not supported here: the collation `en_US.UTF-8` does not sort by byte value, and Outpost orders text only as the C collation does. Use `=`, `<>`, IN or LIKE, or give the column `COLLATE \"C\"`",
            "a.toml:3:28: `<` on text is not supported here: the collation `en_US.UTF-8` does not sort by byte value, and Outpost orders text only as the C collation does. Use `=`, `<>`, IN or LIKE, or give the column `COLLATE \"C\"`",
        ]
    );
    // Equality and LIKE are fine; a `C` column orders fine.
    compile_files(
        &[(
            "a.toml",
            &text("title = 'a' AND title LIKE 'a%' AND owner > 'm'"),
        )],
        &catalog,
    )
    .expect("compiles");
}

#[test]
fn all_errors_are_collected() {
    let errors = compile_files(
        &[
            (
                "a.toml",
                "[shapes.a]\ntable = \"todos\"\nwhere = \"ownr = 1 AND title = 2\"\n",
            ),
            (
                "b.toml",
                "[shapes.b]\ntable = \"lists\"\nwhere = \"nam = 'x'\"\n",
            ),
        ],
        &todo_catalog(),
    )
    .expect_err("errors");
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(errors[0].starts_with("a.toml:3:10: unknown column `ownr`"));
    assert!(errors[1].starts_with("a.toml:3:23: operator does not exist: text = integer"));
    assert!(errors[2].starts_with("b.toml:3:10: unknown column `nam`"));
}
