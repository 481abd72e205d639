//! Rejected groups: the reason codes, nothing of the group applied, the
//! groups after it applied; stale values and the table function.

use outpost_proto::v1::group_result::Status;

use super::*;

const SQL: &str = r#"
CREATE TABLE lists (
    id bigint PRIMARY KEY,
    owner text NOT NULL,
    name text NOT NULL UNIQUE
);
CREATE TABLE todos (
    id bigint PRIMARY KEY,
    list_id bigint NOT NULL REFERENCES lists (id),
    owner text NOT NULL,
    title text NOT NULL CHECK (title <> ''),
    version int NOT NULL DEFAULT 1,
    priority smallint
);
CREATE SCHEMA app;
CREATE TABLE app.calls (n serial PRIMARY KEY, op jsonb);
CREATE FUNCTION app.check_todo(op jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO app.calls (op) VALUES (op);
    IF op->>'kind' = 'delete' THEN
        RETURN op->'old';
    END IF;
    IF op->'new'->>'title' = 'forbidden' THEN
        RAISE EXCEPTION 'titles may not be forbidden';
    END IF;
    IF op->'new'->>'title' = 'skip me' THEN
        RETURN NULL;
    END IF;
    IF op->'new' ? 'title' THEN
        RETURN jsonb_set(op->'new', '{title}', to_jsonb(upper(op->'new'->>'title')));
    END IF;
    RETURN op->'new';
END $$;
"#;

const RULES: &str = r#"
[shapes.lists]
table = "lists"
where = "owner = auth.sub"

[shapes.todos]
table = "todos"
where = "owner = auth.sub"

[tables.lists]
insert = "new.owner = auth.sub"
update = "old.owner = auth.sub AND new.owner = auth.sub"

[tables.todos]
insert = "new.owner = auth.sub"
update = "old.owner = auth.sub AND new.owner = auth.sub"
delete = "old.owner = auth.sub"
function = "app.check_todo"

[tables.todos.merge]
version = "reject_if_stale"
"#;

fn list(id: i64, owner: &str, name: &str) -> WriteOp {
    insert(
        "lists",
        id,
        vec![col("owner", text(owner)), col("name", text(name))],
        hlc(1_000),
    )
}

fn todo(id: i64, list_id: i64, owner: &str, title: &str) -> WriteOp {
    insert(
        "todos",
        id,
        vec![
            col("list_id", int(list_id)),
            col("owner", text(owner)),
            col("title", text(title)),
        ],
        hlc(1_000),
    )
}

#[test]
fn rejections_have_reasons_and_stop_only_their_group() {
    let pg = cluster(SQL, false);
    runtime().block_on(async {
        let applier = applier(&pg, RULES).await;
        let alice = claims("alice");
        let setup = applier
            .apply(
                "c",
                &alice,
                &[group(
                    1,
                    vec![list(1, "alice", "groceries"), todo(1, 1, "alice", "eggs")],
                )],
            )
            .await
            .expect("apply");
        assert_eq!(outcomes(&setup), [applied()]);

        let bad_list = insert("lists", 3, vec![col("owner", text("alice"))], hlc(1_000));
        let results = applier
            .apply(
                "c",
                &alice,
                &[
                    group(
                        2,
                        vec![todo(2, 1, "alice", "milk"), todo(3, 1, "bob", "bread")],
                    ),
                    group(3, vec![todo(4, 1, "alice", "")]),
                    group(4, vec![list(2, "alice", "groceries")]),
                    group(5, vec![todo(5, 99, "alice", "ghost")]),
                    group(6, vec![bad_list]),
                    group(
                        7,
                        vec![update(
                            "todos",
                            1,
                            vec![col("priority", text("high"))],
                            hlc(2_000),
                        )],
                    ),
                    group(8, vec![todo(6, 1, "alice", "tea")]),
                    group(9, vec![update("nope", 1, vec![], hlc(2_000))]),
                    group(
                        10,
                        vec![update("todos", 1, vec![col("nope", int(1))], hlc(2_000))],
                    ),
                    group(
                        11,
                        vec![update(
                            "todos",
                            999,
                            vec![col("title", text("x"))],
                            hlc(2_000),
                        )],
                    ),
                    group(12, vec![delete("todos", 999, hlc(2_000))]),
                    group(
                        13,
                        vec![update(
                            "todos",
                            1,
                            vec![col("owner", text("bob"))],
                            hlc(2_000),
                        )],
                    ),
                    group(14, vec![delete("lists", 1, hlc(2_000))]),
                    group(
                        15,
                        vec![update(
                            "todos",
                            1,
                            vec![col("priority", int(70_000))],
                            hlc(2_000),
                        )],
                    ),
                    group(
                        16,
                        vec![update(
                            "todos",
                            6,
                            vec![col("title", text("green tea"))],
                            hlc(2_000),
                        )],
                    ),
                ],
            )
            .await
            .expect("apply");
        assert_eq!(
            outcomes(&results),
            [
                rejected("permission_denied"),
                rejected("check_violation"),
                rejected("unique_violation"),
                rejected("foreign_key_violation"),
                rejected("not_null_violation"),
                rejected("invalid_value"),
                applied(),
                rejected("unknown_table"),
                rejected("unknown_column"),
                rejected("not_found"),
                applied(),
                rejected("permission_denied"),
                rejected("permission_denied"),
                rejected("invalid_value"),
                applied(),
            ]
        );
        assert_eq!(results[0].op_index, 1, "the second op was refused");
        assert_eq!(
            results[0].message,
            "the insert rule of `todos` (`new.owner = auth.sub`) is false for this row"
        );
        assert!(
            results[1].message.contains("todos_title_check"),
            "{}",
            results[1].message
        );
        assert_eq!(
            results[12].message,
            "table `lists` accepts no deletes (its write rules declare no `delete` rule)"
        );
        for r in results
            .iter()
            .filter(|r| r.status == Status::Rejected as i32)
        {
            assert_eq!(r.commit_lsn, 0);
        }
    });
    assert_eq!(
        query(
            &pg,
            "SELECT id, owner, title, coalesce(priority, 0) FROM todos ORDER BY id"
        ),
        "1|alice|EGGS|0\n6|alice|GREEN TEA|0"
    );
    assert_eq!(
        query(&pg, "SELECT id, name FROM lists ORDER BY id"),
        "1|groceries"
    );
}

#[test]
fn stale_values_and_the_table_function() {
    let pg = cluster(SQL, false);
    runtime().block_on(async {
        let applier = applier(&pg, RULES).await;
        let alice = claims("alice");
        let setup = applier
            .apply(
                "c",
                &alice,
                &[group(
                    1,
                    vec![list(1, "alice", "groceries"), todo(1, 1, "alice", "eggs")],
                )],
            )
            .await
            .expect("apply");
        assert_eq!(outcomes(&setup), [applied()]);
        let versioned = |title: &str, version: i64, before: Option<i64>| {
            let mut op = update(
                "todos",
                1,
                vec![col("title", text(title)), col("version", int(version))],
                hlc(2_000),
            );
            op.before = before
                .map(|v| vec![col("version", int(v)), col("title", text("EGGS"))])
                .unwrap_or_default();
            op
        };
        let results = applier
            .apply(
                "c",
                &alice,
                &[
                    group(2, vec![versioned("fresh eggs", 2, Some(1))]),
                    group(3, vec![versioned("stale", 3, Some(1))]),
                    group(4, vec![versioned("blind", 3, None)]),
                    group(
                        5,
                        vec![update(
                            "todos",
                            1,
                            vec![col("title", text("forbidden"))],
                            hlc(3_000),
                        )],
                    ),
                    group(
                        6,
                        vec![update(
                            "todos",
                            1,
                            vec![col("title", text("skip me"))],
                            hlc(3_000),
                        )],
                    ),
                ],
            )
            .await
            .expect("apply");
        assert_eq!(
            outcomes(&results),
            [
                applied(),
                rejected("stale"),
                rejected("stale"),
                rejected("rejected_by_function"),
                applied(),
            ]
        );
        assert_eq!(
            results[1].message,
            "`version` changed on the server since this client read it"
        );
        assert_eq!(results[3].message, "titles may not be forbidden");
    });
    assert_eq!(
        query(&pg, "SELECT title, version FROM todos WHERE id = 1"),
        "FRESH EGGS|2",
        "the function's change is written; the skipped op changed nothing"
    );
    // What the function saw for the first update (the rejected groups' calls
    // were rolled back with them).
    assert_eq!(
        query(
            &pg,
            "SELECT op->>'kind', op->>'table', op->'key', op->'old'->>'title', op->'new', \
                    op->'auth'->>'sub', op->>'client_id' \
             FROM app.calls ORDER BY n LIMIT 1 OFFSET 1"
        ),
        r#"update|todos|{"id": 1}|EGGS|{"title": "fresh eggs", "version": 2}|alice|c"#
    );
    assert_eq!(query(&pg, "SELECT count(*) FROM app.calls"), "3");
}
